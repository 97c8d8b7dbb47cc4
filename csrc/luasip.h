/* SPDX-License-Identifier: MIT
 * luasip.core shared declarations: the object header every sofia-facing struct starts
 * with, the module state, class names, and the helpers the C files share.
 * The only file allowed to probe sofia-sip versions.
 */
#ifndef LUASIP_H
#define LUASIP_H

#include <stdint.h>

#include <sofia-sip/su.h>
#include <sofia-sip/su_wait.h>
#include <sofia-sip/nta.h>
#include <sofia-sip/nta_stateless.h>
#include <sofia-sip/su_uniqueid.h>
#include <sofia-sip/sip.h>
#include <sofia-sip/tport.h>

#include "compat.h"

#define LUASIP_VERSION "0.1.0"
#define LUASIP_TIMER "luasip.timer"
#define LUASIP_AGENT "luasip.agent"
#define LUASIP_REQUEST "luasip.request"
#define LUASIP_RESPONSE "luasip.response"
#define LUASIP_CLIENT_TX "luasip.client_tx"

/* Every object sofia may point at is a malloc'd struct starting with lsip_obj_t; the Lua
 * userdata holds only a pointer to it ("box").  The struct outlives the userdata when
 * needed: __gc clears `alive` and queues the struct; lsip_drain() destroys it outside any
 * sofia frame.  While sofia holds the struct as magic and Lua must hear about it, the
 * userdata is anchored in the registry (`anchor`). */
typedef struct lsip_obj lsip_obj_t;
typedef void lsip_destroy_f(lsip_obj_t *obj);

struct lsip_obj {
  lsip_destroy_f *destroy;  /* frees sofia resources and the struct itself */
  const char *tname;        /* metatable name */
  int alive;                /* the userdata exists */
  int born;                 /* a userdata was ever made for it */
  int anchor;               /* registry ref keeping the userdata alive, or LUA_NOREF */
  int queued;               /* on the deferred list */
  lsip_obj_t *next;         /* deferred list link */
};

typedef struct lsip_state {
  su_home_t home[1];
  su_root_t *root;
  lua_State *T;             /* thread the bridge calls Lua on */
#define LUASIP_BRIDGE_DEPTH 16
  lua_State *nested[LUASIP_BRIDGE_DEPTH]; /* bridge.c: thread of nesting level i + 1 */
  int depth;                /* > 0 while Lua runs from a sofia callback */
  int stopping;             /* sip.stop() seen by run() */
  int running;              /* inside run() */
  int closing;              /* lua_close in progress: Lua must not be entered */
  unsigned long entries;    /* bridge entries so far: "did this loop step do work?" */
  lsip_obj_t *deferred;     /* objects to destroy at the next safe point */
  /* core.c: each class's metatable by the address of its name, so that checking an
   * object's class is a pointer compare (luaL_testudata looks the name up each time) */
#define LUASIP_CLASSES 24
  struct { const char *tname; const void *mt; } classes[LUASIP_CLASSES];
  int nclasses;
} lsip_state_t;

extern lsip_state_t *luasip_S;

/* dnsconf.c: the resolv.conf path handed to sofia's resolver (NULL: the system's), and
 * its re-check (only reachable name servers: sres spins on an unreachable one); an
 * agent's dns option makes its own (NULL below: the system's configuration) */
typedef struct lsip_dnsconf lsip_dnsconf_t;
lsip_dnsconf_t *luasip_dnsconf_new(lua_State *L, int idx, const char *who);
const char *luasip_dnsconf_path(lsip_dnsconf_t *c);
void luasip_dnsconf_refresh(lsip_dnsconf_t *c);
void luasip_dnsconf_free(lsip_dnsconf_t *c);
struct sres_cache *luasip_dnsconf_hosts(lua_State *L, int idx);
#define LUASIP_DNSCONF_MS 2000

/* watchdog.c: runaway Lua interrupted after a CPU-time limit (sip.cpu_limit) */
void luasip_watchdog_arm(void);
void luasip_watchdog_disarm(void);
int luasip_cpu_limit(lua_State *L);
int luasip_resume_begin(lua_State *L);
int luasip_resume_end(lua_State *L);
int luasip_memory_limit(lua_State *L);      /* sip.memory_limit (the same file) */
void luasip_memcap_close(void);

/* embed.c: the loop as one pollable descriptor for host event loops (sip.pollfd).
 * LUASIP_EMBED_TOUCH() goes where Lua reaches luasip's C (object checks, new objects,
 * deferred destroys): used from outside the loop, it makes the descriptor readable so
 * the host steps and sees new timers.  Costs one load and branch when not embedding. */
extern int luasip_embed_armed;
void luasip_embed_kick(void);
void luasip_embed_stepped(void);
void luasip_embed_close(void);
int luasip_embed_pollfd(lua_State *L);
int luasip_embed_timeout(lua_State *L);
#define LUASIP_EMBED_TOUCH() \
  do { if (luasip_embed_armed && luasip_S->depth == 0) luasip_embed_kick(); } while (0)

/* signals.c: SIGHUP/SIGUSR1/SIGUSR2 delivered on the loop as events (sip.on_signal) */
int luasip_catch_signal(lua_State *L);
void luasip_signals_close(void);

/* process.c: worker processes of luasip.cluster (spawn, poll for exit, signal) */
int luasip_process_spawn(lua_State *L);
int luasip_process_wait(lua_State *L);
int luasip_process_kill(lua_State *L);
int luasip_process_getpid(lua_State *L);

/* agent.c: RFC 3261 checks sofia's parser leaves to us (400 reason phrase or NULL) */
const char *luasip_request_malformed(sip_t const *sip);

/* core.c: objects */
void luasip_initobj(lsip_obj_t *obj, const char *tname, lsip_destroy_f *destroy);
void luasip_wrapobj(lua_State *L, lsip_obj_t *obj);
void luasip_freeobj(lsip_obj_t *obj);
void *luasip_newobj(lua_State *L, size_t size, const char *tname, lsip_destroy_f *destroy);
lsip_obj_t *luasip_checkobj(lua_State *L, int idx, const char *tname);
lsip_obj_t *luasip_testobj(lua_State *L, int idx, const char *tname);
int luasip_pushobj(lua_State *L, lsip_obj_t *obj);
void luasip_anchor(lua_State *L, lsip_obj_t *obj, int idx);
void luasip_unanchor(lua_State *L, lsip_obj_t *obj);
void luasip_defer(lsip_obj_t *obj);
void luasip_drain(void);
/* fields(L): the computed fields of a class, called by its __index with the object at 1
 * and the key (a string) at 2; pushes the value and returns 1, or returns 0.  Called
 * directly, not through lua_call: it must not rely on the stack above index 2. */
void luasip_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
                     lua_CFunction fields);
int luasip_obj__gc(lua_State *L);
int luasip_fail(lua_State *L, const char *msg, const char *code);
void luasip_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 2, 3)))
#endif
  ;
/* a line about the call of sip (its Call-ID goes with it) */
void luasip_log_call(int level, sip_t const *sip, const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 3, 4)))
#endif
  ;
/* core.c: hands queued C log lines to the Lua handler (core.set_log_handler); call only
 * where Lua may be entered (after a loop step, or inside the bridge's protection) */
void luasip_log_flush(lua_State *L);
int luasip_in_callback(void);
lua_State *luasip_L(void);

/* bridge.c: the only way into Lua from sofia callbacks.  Calls the Lua dispatcher as
 * dispatcher(event, a, b) where a and b are objects (or nil); objects never seen by Lua
 * get their userdata inside the protected call.  Returns 0 when the dispatcher ran and
 * returned normally, -1 when Lua could not be entered or the dispatcher raised (logged).
 * Either way the caller re-reads its objects afterwards (STYLE rule 8): Lua may have
 * answered, closed or dropped anything. */
int luasip_bridge(const char *event, lsip_obj_t *a, lsip_obj_t *b);
void luasip_bridge_open(lua_State *L);
int luasip_set_dispatcher(lua_State *L);

/* message.c: read-only views of sofia messages.  Requests and responses both start
 * with this header; msg is our own reference (msg_ref_create), freed with the object. */
typedef struct lsip_msgobj {
  lsip_obj_t obj;
  msg_t *msg;
  sip_t *sip;
} lsip_msgobj_t;
lsip_msgobj_t *luasip_msgobj_check(lua_State *L, int idx);
int luasip_msg_method_header(lua_State *L);
int luasip_msg_method_headers(lua_State *L);
int luasip_msg_method_raw(lua_State *L);
void luasip_message_open(lua_State *L);
int luasip_msg_field(lua_State *L, msg_t *msg, sip_t const *sip, const char *key);
int luasip_msg_header(lua_State *L, msg_t *msg, sip_t const *sip, const char *name,
                      int all);
lsip_obj_t *luasip_response_new(lua_State *L, msg_t *msg);
lsip_obj_t *luasip_response_alloc(msg_t *msg);
int luasip_add_headers(lua_State *L, int idx, msg_t *msg, sip_t *sip,
                       const char *fname);
void luasip_remove_header(msg_t *msg, sip_t *sip, const char *name);
/* bytes preloaded into a message's memory home (nta's messages: beyond their size) */
#define LUASIP_PRELOAD 1024
msg_t *luasip_msg_copy(msg_t *orig);
int luasip_set_body(lua_State *L, int idx, msg_t *msg, sip_t *sip, const char *fname);
const char *luasip_uri_arg(lua_State *L, int idx, const char *fname);

/* digest.c: RFC 2617 / RFC 7616 digests; its functions are the methods of a class
 * without instances (core.methods("luasip.digest")), opened by luasip_agent_open */
#define LUASIP_DIGEST "luasip.digest"
void luasip_digest_open(lua_State *L);

/* stun.c: the STUN Binding answers on SIP UDP ports (RFC 5389, RFC 5626 keep-alives),
 * plugged into tport once per process before the first agent; 1 when it is in place */
int luasip_stun_plug_in(void);

/* uri.c: the location service's SIP URI parse, AOR and equality (core.uri_*) */
int luasip_uri_parse(lua_State *L);
int luasip_uri_aor(lua_State *L);
int luasip_uri_user(lua_State *L);
int luasip_uri_equal(lua_State *L);

/* sdp.c: SDP parse and build (core.sdp_*, behind luasip.sdp.parse and build) */
int luasip_sdp_parse(lua_State *L);
int luasip_sdp_build(lua_State *L);

/* agent.c */
typedef struct lsip_agent lsip_agent_t;
void luasip_agent_open(lua_State *L);
int luasip_agent_new(lua_State *L);
nta_agent_t *luasip_agent_nta(lsip_agent_t *a);
int luasip_agent_flow_alive(lsip_agent_t *a, url_t const *u);
lsip_agent_t *luasip_agent_check(lua_State *L, int idx);
tport_t *luasip_agent_primary(lsip_agent_t *a, tport_t *hint, url_t const *dest);
sip_contact_t const *luasip_agent_contact_for(lsip_agent_t *a, tport_t *hint,
                                              url_t const *dest);

/* flood.c: the per-source policy at the entry point (agent option flood) */
int luasip_flood_check(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip);
void luasip_flood_config(lua_State *L, int idx, lsip_agent_t *a, const char *fname);
int luasip_flood_stats(lua_State *L, lsip_agent_t *a);

/* tls.c: the certificate directory sofia's tport TLS reads, built from the agent's tls
 * option and removed once the transports are bound */
#define LUASIP_TLS_DIR_MAX 256
int luasip_tls_dir(lua_State *L, int idx, char *dir, unsigned *policy);
void luasip_tls_dir_remove(const char *dir);
/* RFC 3261 26.2 / RFC 5630: why a sips: request may not go to hop (NULL: it may) */
const char *luasip_sips_refusal(lsip_agent_t *a, sip_t const *sip, url_t const *hop,
                                int secure, char *buf, size_t size);

/* server_tx.c: incoming requests */
void luasip_request_open(lua_State *L);
void luasip_request_incoming(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip);
int luasip_request_ack(lsip_agent_t *a, msg_t *msg, sip_t *sip);
void luasip_requests_detach(lsip_agent_t *a);

/* client_tx.c: outgoing requests */
void luasip_client_open(lua_State *L);
void luasip_add_methods(lua_State *L, const char *tname, const luaL_Reg *l);
int luasip_client_stray(lsip_agent_t *a, msg_t *msg, sip_t *sip);
/* the ACK of a non-2xx final response (resp) to the INVITE orq, for one nta did not match */
int luasip_ack_non2xx(lsip_agent_t *a, nta_outgoing_t *orq, sip_t const *resp);
const char *luasip_orq_branch(nta_outgoing_t *orq);
int luasip_client_start(lua_State *L, lsip_agent_t *a, msg_t *msg, const char *proxy,
                        int want_dialog);

/* dialog.c: dialogs on nta legs */
void luasip_dialog_open(lua_State *L);
lsip_obj_t *luasip_dialog_uac(lsip_agent_t *a, sip_t const *resp, int early);
nta_leg_t *luasip_dialog_leg(lsip_obj_t *d);
int luasip_dialog_matches(lsip_obj_t *d, const char *remote_tag);
void luasip_dialog_drop(lsip_obj_t *d);
void luasip_dialog_confirm(lsip_obj_t *d, sip_t const *resp);
void luasip_dialog_backref(lsip_obj_t *d, lsip_obj_t **ref);
void luasip_dialogs_detach(lsip_agent_t *a);
/* the UAS dialog of an INVITE/SUBSCRIBE/REFER: pushed, anchored, linked to req */
lsip_obj_t *luasip_dialog_uas(lua_State *L, lsip_obj_t *req, int early);
void luasip_dialog_confirmed(lsip_obj_t *d);

/* server_tx.c, for dialog.c.  Whoever bridges a new request passes luasip_bridge's
 * result to luasip_request_dispatched(), which re-reads the request, answers it 500 when
 * the dispatch failed and left it unanswered, and frees it if Lua never saw it. */
lsip_obj_t *luasip_request_from_irq(lsip_agent_t *a, nta_incoming_t *irq);
void luasip_request_dispatched(lsip_obj_t *req, int bridge_rc);
nta_incoming_t *luasip_request_irq(lsip_obj_t *req);
lsip_agent_t *luasip_request_agent(lsip_obj_t *req);
nta_incoming_t *luasip_request_ensure_irq(lsip_obj_t *req);
void luasip_request_set_proxy(lsip_obj_t *req, lsip_obj_t *proxy);
void luasip_request_set_dialog(lsip_obj_t *req, lsip_obj_t *dialog);
int luasip_request_status(lsip_obj_t *req);
int luasip_request_forward(lsip_obj_t *req, msg_t *resp);
void luasip_request_forwarded(lsip_obj_t *req);
int luasip_proxy_stray(lsip_agent_t *a, msg_t *msg, sip_t *sip);

/* stream.c: byte streams to local services (Redis) on the loop */
void luasip_stream_open(lua_State *L);
int luasip_stream_connect(lua_State *L);
/* resolve.c: RFC 3263 queries on sofia's resolver (core.dns_resolve) */
int luasip_dns_resolve(lua_State *L);
void luasip_dns_open(lua_State *L);

/* media.c: RTP streams on the one 20 ms media clock (luasip.rtp) */
#define LUASIP_RTP "luasip.rtp"
void luasip_media_open(lua_State *L);
int luasip_rtp_open(lua_State *L);
int luasip_media_stats(lua_State *L);
void luasip_media_close(void);      /* lua_close: after the last stream is destroyed */

/* media_audio.c: the prompt cache (8 kHz mono, shared) and the WAV recorder */
typedef struct lsip_prompt lsip_prompt_t;
lsip_prompt_t *luasip_prompt_get(const char *path, char *err, size_t errlen);
void luasip_prompt_release(lsip_prompt_t *p);
const int16_t *luasip_prompt_pcm(lsip_prompt_t *p, size_t *n);
void luasip_prompts_free(void);
void *luasip_wav_open(const char *path, int append, char *err, size_t errlen);
int luasip_wav_write(void *h, const int16_t *pcm, size_t n, char *err, size_t errlen);
void luasip_wav_close(void *h);

/* metrics.c: the process's message counters (the Prometheus page of sip.metrics).  Each
 * site that receives, answers or sends a SIP message bumps one array slot: the cost per
 * message is an increment.  Methods index by sip_method_t (0: unknown or extension
 * methods, reported as "OTHER"); responses by method and status 100-699. */
#define LUASIP_M_METHODS 16
typedef struct lsip_counters {
  unsigned long long req_in[LUASIP_M_METHODS];
  unsigned long long req_out[LUASIP_M_METHODS];
  unsigned long long resp_out[LUASIP_M_METHODS][600];
  unsigned long long rtx_core;        /* 2xx and their ACKs re-sent by the core */
  unsigned long long stray_responses; /* responses that matched nothing (agent.c) */
  unsigned long long acks_dropped;    /* ACKs of our shed 503s, malformed ACKs */
  unsigned long long flood_dropped, scanners_dropped;  /* flood.c: dropped at the door */
  unsigned long long rtp_packets[2], rtp_octets[2];  /* media.c: [0] sent, [1] received */
} lsip_counters_t;
extern lsip_counters_t luasip_counters;
static inline unsigned luasip_mix(int m)
{
  return m > 0 && m < LUASIP_M_METHODS ? (unsigned)m : 0;
}
#define LUASIP_COUNT_IN(m) (luasip_counters.req_in[luasip_mix(m)]++)
#define LUASIP_COUNT_OUT(m) (luasip_counters.req_out[luasip_mix(m)]++)
static inline void luasip_count_reply(int m, int status)
{
  if (status >= 100 && status < 700)
    luasip_counters.resp_out[luasip_mix(m)][status - 100]++;
}
/* the agents whose nta statistics the page shows (a closed one's are folded in) */
void luasip_metrics_agent(lsip_agent_t *a, int open);
/* agent.c: the load-shedding counters of an agent, added to *invite and *other */
void luasip_agent_shed_counts(lsip_agent_t *a, unsigned long long *invite,
                              unsigned long long *other);
void luasip_metrics_open(lua_State *L);
int luasip_metrics_listen(lua_State *L);
int luasip_metrics_text(lua_State *L);
int luasip_metrics_extra(lua_State *L);
int luasip_metrics_handler(lua_State *L);
/* media.c: streams open, media clock ticks, late ticks, skipped ticks */
void luasip_media_counts(unsigned long out[4]);

/* proxy.c: stateful proxy (RFC 3261 16) */
#define LUASIP_PROXY "luasip.proxy"
void luasip_proxy_open(lua_State *L);
void luasip_proxy_cancel(lsip_obj_t *proxy);
void luasip_proxy_forget(lsip_obj_t *proxy);
void luasip_proxies_detach(lsip_agent_t *a);
int luasip_forward(lsip_agent_t *a, msg_t *m, const char *uri, const char *hop,
                   const char **why, const char **code);

/* front.c: agent:spread, the stateless front of luasip.cluster */
void luasip_front_open(lua_State *L);
int luasip_spread(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip);
unsigned long luasip_spread_hash(const char *s);
#define LUASIP_DIALOG "luasip.dialog"
sip_t const *luasip_request_sip(lsip_obj_t *req);
msg_t *luasip_request_msg(lsip_obj_t *req);
tport_t *luasip_request_tport(lsip_obj_t *req);   /* where it came in (or NULL) */
void luasip_clients_detach(lsip_agent_t *a);

/* links the live transactions of an agent, so closing it detaches them */
typedef struct lsip_link {
  struct lsip_link *prev, *next;
} lsip_link_t;
void luasip_link_add(lsip_link_t *head, lsip_link_t *l);
void luasip_link_del(lsip_link_t *l);

struct lsip_agent {
  lsip_obj_t obj;
  su_home_t home[1];
  nta_agent_t *nta;
  lsip_link_t requests;     /* lsip_req_t with sofia state */
  lsip_link_t clients;      /* lsip_client_t pending */
  lsip_link_t dialogs;      /* lsip_dialog_t with a leg */
  lsip_link_t proxies;      /* lsip_proxy_t with branches */
  void *acks;               /* client_tx.c: sent ACKs kept for 2xx retransmissions */
  void *await_ack;          /* server_tx.c: INVITEs whose 2xx waits for its ACK, hashed */
  const char *user_agent;   /* User-Agent / Server value */
  unsigned t1, t2;          /* RFC 3261 timers in ms (defaults 500 / 4000) */
  struct lsip_overload *overload;  /* agent.c: load shedding at the entry point */
  struct lsip_flood *flood;        /* flood.c: per-source limits, scanners (NULL: none) */
  struct lsip_spread *spread;      /* front.c: requests spread over workers (NULL: off) */
  su_timer_t *dnsconf_timer;  /* re-checks the name servers sres may use (dnsconf.c) */
  int stateless;            /* agent option stateless: no server transaction of its own
                               (no 100 Trying), a CANCEL matching no INVITE goes to Lua */
  lsip_dnsconf_t *dnsconf;    /* the dns option's configuration (NULL: the system's) */
  struct sres_cache *dns_cache;  /* the hosts file's names for nta's resolver, or NULL */
  int closed;
  /* agent.c: the Contact of each primary transport, made once (a reply to an INVITE
   * formatted and parsed one each time); grown in home, one entry per primary */
  struct lsip_contact_of { tport_t const *tp; sip_contact_t *m; } *contacts;
  int ncontacts, contacts_cap;
};

#endif
