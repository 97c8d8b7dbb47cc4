/* SPDX-License-Identifier: MIT
 * luasip.proxy: stateful forwarding of a request (RFC 3261 16) on nta_outgoing_mcreate,
 * the pattern of sofia's own test_proxy.c.  One server transaction upstream (the
 * luasip.request's), one client transaction per branch; parallel or sequential forking,
 * Timer C per branch, best-response selection, 2xx forwarded as they come (late ones
 * statelessly), CANCEL propagated, Record-Route, loose routing, Max-Forwards and loop
 * detection by branch hash (16.3 step 4).  The userdata is anchored while branches are
 * pending; Lua hears ("proxy_response", p, res) per response when it asked to, and
 * ("proxy_final", p, res|nil) once the final response went upstream.  With a rewrite
 * hook, responses with a body (and any that come after one, to keep their order) are
 * held: Lua hears ("proxy_hold", p, res) for each, and p:_release([{ body = }]) lets the
 * oldest go on (its body replaced), as if it had just arrived.
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/msg_header.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/sip_util.h>
#include <sofia-sip/su_md5.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/nta_tport.h>
#include <sofia-sip/url.h>

#include "luasip.h"

#define MAX_BRANCHES 32
#define MAX_HELD 16

struct lsip_proxy;

typedef struct target {
  char *uri;
  char *route;                /* Path / extra Route, comma-separated */
  char *flow;                 /* the next hop: where it registered from */
  char *hop;                  /* the next hop of a DNS failover target */
  unsigned char obs;          /* its flow is an RFC 5626 one: no flow, no branch */
} target_t;

typedef struct branch {
  struct lsip_proxy *p;
  nta_outgoing_t *orq;
  su_timer_t *timer;          /* Timer C */
  int status;
  unsigned done:1;
} branch_t;

/* A proxy's life (STYLE rule 9), changed only by proxy_enter():
 *   FORKING  -> ACCEPTED (a 2xx went upstream) | ANSWERED (the best final went upstream,
 *               or none could be had) | CANCELLED (the caller's CANCEL) | FINISHED
 *   ACCEPTED, ANSWERED, CANCELLED -> FINISHED (every branch ended);  FINISHED: final.
 * Lua hears ("proxy_final", p, res|nil) exactly once, as the proxy leaves FORKING (or
 * when the agent closes under it).  Branches may still answer after FORKING: a late 2xx
 * is forwarded statelessly.  FINISHED lets go of the request, the agent list and the
 * anchor. */
typedef enum proxy_state {
  PROXY_FORKING, PROXY_ACCEPTED, PROXY_ANSWERED, PROXY_CANCELLED, PROXY_FINISHED,
  PROXY_NSTATES
} proxy_state_t;

typedef struct lsip_proxy {
  lsip_obj_t obj;
  lsip_link_t link;           /* in agent->proxies while branches may exist */
  lsip_agent_t *agent;
  lsip_obj_t *req;            /* kept alive by the userdata's uservalue (Lua side) */
  msg_t *base;                /* the request as forwarded, before the target is set */
  /* The arrays below are allocated to size (most proxies have one target): a 3 KB
   * object of fixed arrays cost glibc's malloc a large-chunk search per proxied request
   * (the largest single caller of _int_malloc in the soak's profile). */
  target_t *t;                /* ntargets of them, room for tcap; recurse() adds more */
  int ntargets, tcap, next;
  unsigned timer_c_ms;
  int sequential, observe, follow, hold;
  struct held {                 /* responses waiting for Lua's rewrite, oldest first */
    branch_t *b;
    nta_outgoing_t *orq;
    msg_t *msg;
    int status;
  } *held;
  int nheld, hcap;
  msg_t **challenges;         /* 401/407 answers, merged into the one forwarded */
  int nchallenges, ccap;
  branch_t **br;              /* each its own allocation: nta and Timer C hold it */
  int nbr, bcap, pending;
  msg_t *best;
  int best_status;
  char key[24];               /* branch prefix: loop detection hash */
  proxy_state_t state;        /* change only through proxy_enter() */
  unsigned is_invite:1;
  /* DNS failover (RFC 3263 4.3, lua/luasip/proxy.lua): the targets are one URI's SRV
   * targets, each with its next hop; only a 503 or a 408 moves on to the next */
  int failover;
  /* sips: (RFC 3261 26.2, RFC 5630): the request came to a sips: URI, so every branch
   * goes over TLS; a branch that cannot is not started, and why is kept for Lua */
  unsigned sips:1;
  char *sips_refused;         /* why the last branch was refused, or NULL */
  /* Record-Route (RFC 3261 16.6 step 4), added to each branch as it starts: the URI of
   * the transport the branch leaves on, and under it, when the request came in on
   * another one (UDP and TCP, IPv4 and IPv6, TLS and not), the URI of that one (RFC 5658
   * double Record-Route): each side of the dialog then reaches us the way it can */
  unsigned record_route:1;
  char *rr_user;              /* a flow token (RFC 5626 5.3) as the user part, or NULL */
  tport_t *rr_in;             /* the primary transport the request came in on, or NULL */
} lsip_proxy_t;

/* Makes room for need items in *arr (of *cap, each size bytes; new room zeroed).
 * 0: done; -1: out of memory (nothing changed). */
static int grow(void *arr, int *cap, int need, size_t size)
{
  void **a = (void **)arr;
  int n = *cap ? *cap : 1;
  void *bigger;
  if (need <= *cap)
    return 0;
  while (n < need)
    n *= 2;
  bigger = realloc(*a, (size_t)n * size);
  if (!bigger)
    return -1;
  memset((char *)bigger + (size_t)*cap * size, 0, (size_t)(n - *cap) * size);
  *a = bigger;
  *cap = n;
  return 0;
}

#define TO(s) (1u << PROXY_##s)
static const unsigned proxy_transitions[PROXY_NSTATES] = {
  [PROXY_FORKING] = TO(ACCEPTED) | TO(ANSWERED) | TO(CANCELLED) | TO(FINISHED),
  [PROXY_ACCEPTED] = TO(FINISHED),
  [PROXY_ANSWERED] = TO(FINISHED),
  [PROXY_CANCELLED] = TO(FINISHED),
};
#undef TO

/* The one transition function.  Never calls Lua; a refused move is a no-op. */
static void proxy_enter(lsip_proxy_t *p, proxy_state_t to)
{
  if (!(proxy_transitions[p->state] & (1u << to)))
    return;
  p->state = to;
  if (to == PROXY_FINISHED) {
    if (p->req) {
      luasip_request_set_proxy(p->req, NULL);
      p->req = NULL;
    }
    luasip_link_del(&p->link);
    luasip_unanchor(luasip_L(), &p->obj);
  }
}

/* ---------------------------------------------------------------- helpers */

/* Is url one of our transports' addresses? (a Route for us) */
static int url_is_us(lsip_agent_t *a, url_t const *u)
{
  tport_t *tp;
  const char *port = u->url_port ? u->url_port : "5060";
  char host[64];
  if (!u->url_host)
    return 0;
  snprintf(host, sizeof host, "%s", u->url_host);
  if (host[0] == '[') {
    size_t n = strlen(host);
    memmove(host, host + 1, n);
    if (n >= 2)
      host[n - 2] = '\0';
  }
  for (tp = tport_primaries(nta_agent_tports(a->nta)); tp; tp = tport_next(tp)) {
    tp_name_t const *tpn = tport_name(tp);
    const char *h = tpn->tpn_host;
    size_t hl = strlen(h);
    if (h[0] == '[' && hl > 2 && strlen(host) == hl - 2 && !strncmp(h + 1, host, hl - 2) &&
        su_strmatch(tpn->tpn_port, port))
      return 1;
    if (su_casematch(h, host) && su_strmatch(tpn->tpn_port, port))
      return 1;
  }
  return 0;
}

/* RFC 3261 16.6 step 8 / 16.3 step 4: a hash of what identifies the request at this hop */
static void loop_key(sip_t const *sip, char out[17])
{
  su_md5_t md5;
  char hex[33];
  char ruri[512];
  su_md5_init(&md5);
  if (url_e(ruri, sizeof ruri, sip->sip_request->rq_url) > 0)
    su_md5_strupdate(&md5, ruri);
  su_md5_str0update(&md5, sip->sip_from ? sip->sip_from->a_tag : "");
  su_md5_str0update(&md5, sip->sip_to ? sip->sip_to->a_tag : "");
  su_md5_str0update(&md5, sip->sip_call_id ? sip->sip_call_id->i_id : "");
  su_md5_update(&md5, &sip->sip_cseq->cs_seq, sizeof sip->sip_cseq->cs_seq);
  su_md5_hexdigest(&md5, hex);
  su_md5_deinit(&md5);
  memcpy(out, hex, 16);
  out[16] = '\0';
}

static int looped(sip_t const *sip, const char *key)
{
  sip_via_t const *v;
  for (v = sip->sip_via; v; v = v->v_next)
    if (v->v_branch && !strncmp(v->v_branch, "z9hG4bK", 7) &&
        !strncmp(v->v_branch + 7, key, 16))
      return 1;
  return 0;
}

static void branch_stop_timer(branch_t *b)
{
  if (b->timer) {
    su_timer_destroy(b->timer);
    b->timer = NULL;
  }
}

static void proxy_release(lsip_proxy_t *p)
{
  int i;
  for (i = 0; i < p->nbr; i++) {
    branch_stop_timer(p->br[i]);
    if (p->br[i]->orq) {
      nta_outgoing_destroy(p->br[i]->orq);
      p->br[i]->orq = NULL;
    }
  }
  p->pending = 0;
  if (p->req) {
    luasip_request_set_proxy(p->req, NULL);
    p->req = NULL;
  }
  luasip_link_del(&p->link);
}

/* The request is being freed (at lua_close both may go in any order). */
void luasip_proxy_forget(lsip_obj_t *obj)
{
  ((lsip_proxy_t *)obj)->req = NULL;
}

/* The agent closes: nta frees the branches' transactions with it. */
void luasip_proxies_detach(lsip_agent_t *a)
{
  while (a->proxies.next != &a->proxies) {
    lsip_proxy_t *p = (lsip_proxy_t *)((char *)a->proxies.next -
                                       offsetof(lsip_proxy_t, link));
    int forking = p->state == PROXY_FORKING;
    proxy_release(p);
    p->agent = NULL;
    if (forking)
      luasip_bridge("proxy_final", &p->obj, NULL);  /* a notification */
    proxy_enter(p, PROXY_FINISHED);
  }
}

static void proxy_destroy(lsip_obj_t *obj)
{
  lsip_proxy_t *p = (lsip_proxy_t *)obj;
  int i;
  proxy_release(p);
  if (p->base)
    msg_destroy(p->base);
  if (p->best)
    msg_destroy(p->best);
  for (i = 0; i < p->nchallenges; i++)
    msg_destroy(p->challenges[i]);
  free(p->challenges);
  for (i = 0; i < p->ntargets; i++) {
    free(p->t[i].uri);
    free(p->t[i].route);
    free(p->t[i].flow);
    free(p->t[i].hop);
  }
  free(p->t);
  for (i = 0; i < p->nheld; i++)
    msg_destroy(p->held[i].msg);
  free(p->held);
  for (i = 0; i < p->bcap; i++)
    free(p->br[i]);
  free(p->br);
  free(p->sips_refused);
  free(p->rr_user);
  luasip_freeobj(obj);
}

/* Sets uri as m's Request-URI (RFC 3261 16.6 step 2) with a new request line, except
 * when it is the one the line already has: the line is then sent as it came (its
 * received text is kept), not encoded again (~5k instructions a request). */
static void set_request_uri(msg_t *m, sip_t *sip, const char *uri)
{
  sip_request_t *rq = sip->sip_request;
  const char *t = rq->rq_common->h_data, *name = rq->rq_method_name;
  size_t len = strlen(uri), nlen = name ? strlen(name) : 0;
  static const char tail[] = " SIP/2.0\r\n";
  if (t && name && rq->rq_common->h_len == nlen + 1 + len + sizeof tail - 1 &&
      !memcmp(t, name, nlen) && t[nlen] == ' ' && !memcmp(t + nlen + 1, uri, len) &&
      !memcmp(t + nlen + 1 + len, tail, sizeof tail - 1))
    return;
  msg_header_replace(m, (msg_pub_t *)sip, (msg_header_t *)rq,
                     (msg_header_t *)sip_request_create(msg_home(m), rq->rq_method, name,
                                                        URL_STRING_MAKE(uri), NULL));
}

/* Where nta sends m: hop when given; else, when m has no Route, its Request-URI given
 * explicitly, which nta resolves the same way but without clearing the request line's
 * received text (its Request-URI branch does: the line would be encoded again) */
static url_string_t const *next_hop(sip_t const *sip, url_string_t const *hop)
{
  if (hop)
    return hop;
  return sip->sip_route ? NULL : (url_string_t const *)sip->sip_request->rq_url;
}

/* Takes our Route off the top of m (RFC 3261 16.4), and the one under it too when both
 * are the two halves of a double Record-Route of ours (RFC 5658: "r2=on" on both, as
 * Kamailio marks them) */
static void remove_our_routes(lsip_agent_t *a, msg_t *m, sip_t *sip)
{
  int doubled;
  if (!sip->sip_route || !url_is_us(a, sip->sip_route->r_url))
    return;
  doubled = url_has_param(sip->sip_route->r_url, "r2");
  msg_header_remove(m, (msg_pub_t *)sip, (msg_header_t *)sip->sip_route);
  if (doubled && sip->sip_route && url_is_us(a, sip->sip_route->r_url) &&
      url_has_param(sip->sip_route->r_url, "r2"))
    msg_header_remove(m, (msg_pub_t *)sip, (msg_header_t *)sip->sip_route);
}

/* One Record-Route URI of ours: u (copied) with the flow token as its user, lr, and r2=on
 * when it is half of a double one */
static sip_record_route_t *our_record_route(su_home_t *home, url_t const *u,
                                            const char *user, int doubled)
{
  url_t *c = url_hdup(home, u);
  if (!c)
    return NULL;
  if (user)
    c->url_user = su_strdup(home, user);
  url_param_add(home, c, "lr");
  if (doubled)
    url_param_add(home, c, "r2=on");
  return sip_record_route_create(home, c, NULL);
}

/* The branch's Record-Route (see lsip_proxy_t): next is where nta sends m (a flow or a
 * DNS failover hop), else its top Route, else its Request-URI */
static void add_record_route(lsip_proxy_t *p, msg_t *m, sip_t *sip, url_t const *next)
{
  su_home_t *home = msg_home(m);
  url_t const *dest = next ? next : sip->sip_route ? sip->sip_route->r_url
                      : sip->sip_request->rq_url;
  tport_t *out_tp = luasip_agent_primary(p->agent, NULL, dest);
  sip_contact_t const *out = luasip_agent_contact_for(p->agent, out_tp, NULL);
  sip_contact_t const *in = p->rr_in && out_tp && p->rr_in != out_tp
                            ? luasip_agent_contact_for(p->agent, p->rr_in, NULL) : NULL;
  sip_record_route_t *rr;
  if (!out)
    return;
  if (in && (rr = our_record_route(home, in->m_url, p->rr_user, 1)))
    msg_header_prepend(m, (msg_pub_t *)sip, (msg_header_t **)&sip->sip_record_route,
                       (msg_header_t *)rr);
  if ((rr = our_record_route(home, out->m_url, p->rr_user, in != NULL)))
    msg_header_prepend(m, (msg_pub_t *)sip, (msg_header_t **)&sip->sip_record_route,
                       (msg_header_t *)rr);
}

/* ---------------------------------------------------------------- branches */

static int branch_response(nta_outgoing_magic_t *magic, nta_outgoing_t *orq,
                           sip_t const *sip);
static int start_next(lsip_proxy_t *p);
static int start_branch(lsip_proxy_t *p, int t);

static void timer_c(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  branch_t *b = (branch_t *)arg;
  (void)m; (void)t;
  branch_stop_timer(b);
  /* RFC 3261 16.8: a ringing INVITE branch is cancelled, others just time out */
  if (b->orq && !b->done) {
    if (b->p->is_invite && nta_outgoing_status(b->orq) >= 100) {
      LUASIP_COUNT_OUT(sip_method_cancel);
      nta_outgoing_cancel(b->orq);
    }
    else
      branch_response((nta_outgoing_magic_t *)b, b->orq, NULL);
  }
}

/* CANCEL every pending INVITE branch but except; elsewhere: a 2xx was seen */
static void cancel_others(lsip_proxy_t *p, branch_t *except, int elsewhere)
{
  int i;
  for (i = 0; i < p->nbr; i++) {
    branch_t *b = p->br[i];
    if (b != except && !b->done && b->orq && p->is_invite) {
      /* RFC 3326: a phone that lost to another tells "answered elsewhere", not missed */
      LUASIP_COUNT_OUT(sip_method_cancel);
      if (elsewhere)
        nta_outgoing_tcancel(b->orq, NULL, NULL,
                             SIPTAG_REASON_STR("SIP;cause=200;text=\"Call completed elsewhere\""),
                             TAG_END());
      else
        nta_outgoing_cancel(b->orq);
    }
  }
}

static lsip_obj_t *response_for_lua(msg_t *msg)
{
  lsip_obj_t *o = luasip_response_alloc(msg_ref_create(msg));
  return o;
}

static void proxy_final(lsip_proxy_t *p, msg_t *resp)
{
  lsip_obj_t *o = resp ? response_for_lua(resp) : NULL;
  luasip_bridge("proxy_final", &p->obj, o);
  if (o && !o->born)
    o->destroy(o);
}

/* RFC 3261 16.7 step 7: a 401/407 forwarded upstream carries the challenges of every
 * branch that asked for credentials. */
static void merge_challenges(lsip_proxy_t *p)
{
  sip_t *bs = sip_object(p->best);
  int i;
  if (p->best_status != 401 && p->best_status != 407)
    return;
  for (i = 0; i < p->nchallenges; i++) {
    sip_t const *cs = sip_object(p->challenges[i]);
    if (p->challenges[i] == p->best || !cs)
      continue;
    if (cs->sip_www_authenticate)
      msg_header_add_dup(p->best, (msg_pub_t *)bs,
                         (msg_header_t const *)cs->sip_www_authenticate);
    if (cs->sip_proxy_authenticate)
      msg_header_add_dup(p->best, (msg_pub_t *)bs,
                         (msg_header_t const *)cs->sip_proxy_authenticate);
  }
  /* the merged answer takes the status that asks for the most (407 if any) */
}

/* A 3xx with Contacts, when asked to recurse (RFC 3261 16.5): its targets become new
 * branches.  Returns how many were added. */
static int recurse(lsip_proxy_t *p, sip_t const *sip)
{
  sip_contact_t const *m;
  int added = 0;
  for (m = sip->sip_contact; m && p->ntargets < MAX_BRANCHES; m = m->m_next) {
    char buf[512];
    int i, dup = 0;
    if (m->m_url->url_type != url_sip && m->m_url->url_type != url_sips)
      continue;
    if (url_e(buf, sizeof buf, m->m_url) <= 0 || strlen(buf) >= sizeof buf - 1)
      continue;
    for (i = 0; i < p->ntargets; i++)
      if (!strcmp(p->t[i].uri, buf))
        dup = 1;                    /* a target already tried is not tried again */
    if (dup || grow(&p->t, &p->tcap, p->ntargets + 1, sizeof *p->t) < 0 ||
        !(p->t[p->ntargets].uri = strdup(buf)))
      continue;
    p->ntargets++;
    added++;
  }
  return added;
}

/* What goes upstream for the best final response (a reference for
 * luasip_request_forward): the response itself, except that a 503 becomes a 500 (RFC
 * 3261 16.7 step 6: the 503 said the next hop is unavailable, not this proxy; the rest
 * of the response, Retry-After included, as it came). Lua still gets the 503 as the
 * best response (proxy_final). */
static msg_t *upstream_final(lsip_proxy_t *p)
{
  msg_t *up;
  sip_t *us;
  sip_status_t *st;
  if (p->best_status != 503)
    return msg_ref_create(p->best);
  up = luasip_msg_copy(p->best);
  us = up ? sip_object(up) : NULL;
  st = us ? sip_status_create(msg_home(up), 500, "Server Internal Error", NULL) : NULL;
  if (!st || msg_header_replace(up, (msg_pub_t *)us, (msg_header_t *)us->sip_status,
                                (msg_header_t *)st) < 0) {
    if (up)
      msg_destroy(up);
    return msg_ref_create(p->best);   /* out of memory: the 503 as it came */
  }
  return up;
}

/* All branches ended: the best final response goes upstream if nothing did yet. */
static void proxy_finished(lsip_proxy_t *p)
{
  if (p->state == PROXY_FORKING) {
    proxy_enter(p, PROXY_ANSWERED);
    if (p->best && p->req) {
      merge_challenges(p);
      luasip_request_forward(p->req, upstream_final(p));
      proxy_final(p, p->best);
    } else {
      proxy_final(p, NULL);         /* every branch failed without a response: Lua answers */
    }
  }
  proxy_enter(p, PROXY_FINISHED);
}

static int rank(int status)
{
  /* RFC 3261 16.7 step 6: any 6xx first, then the lowest class */
  return status >= 600 ? 0 : status;
}

static void branch_process(branch_t *b, nta_outgoing_t *orq, msg_t *msg, int status);
static void branch_take(branch_t *b, nta_outgoing_t *orq, msg_t *msg, int status);

static int branch_response(nta_outgoing_magic_t *magic, nta_outgoing_t *orq,
                           sip_t const *sip)
{
  branch_t *b = (branch_t *)magic;
  int status = sip && sip->sip_status ? sip->sip_status->st_status : 408;
  if (b->done)
    return 0;
  branch_take(b, orq, sip ? nta_outgoing_getresponse(orq) : NULL, status);
  return 0;
}

/* A response of a branch (msg, taken; NULL: none came): held for the rewrite hook, or
 * processed now */
static void branch_take(branch_t *b, nta_outgoing_t *orq, msg_t *msg, int status)
{
  lsip_proxy_t *p = b->p;
  sip_t const *sip = msg ? sip_object(msg) : NULL;
  if (msg && p->hold && status > 100 && p->nheld < MAX_HELD &&
      (p->nheld > 0 || (sip->sip_payload && sip->sip_payload->pl_len > 0)) &&
      grow(&p->held, &p->hcap, p->nheld + 1, sizeof *p->held) == 0) {
    /* held for the rewrite hook: Lua releases it (p:_release) when its body is ready */
    lsip_obj_t *o = response_for_lua(msg);
    struct held *h = &p->held[p->nheld++];
    h->b = b;
    h->orq = orq;
    h->msg = msg;
    h->status = status;
    luasip_bridge("proxy_hold", &p->obj, o);
    if (o && !o->born)
      o->destroy(o);
    return;
  }
  branch_process(b, orq, msg, status);
}

/* A response of a branch (msg NULL: none came, Timer C), now or once released. */
static void branch_process(branch_t *b, nta_outgoing_t *orq, msg_t *msg, int status)
{
  lsip_proxy_t *p = b->p;
  sip_t const *sip = msg ? sip_object(msg) : NULL;

  if (msg && p->observe && status > 100) {
    lsip_obj_t *o = response_for_lua(msg);
    luasip_bridge("proxy_response", &p->obj, o);
    if (o && !o->born)
      o->destroy(o);
    /* re-read (STYLE rule 8): Lua may have closed the agent, which destroyed every
     * branch's orq, this one included */
    if (b->orq != orq || b->done || !p->agent) {
      msg_destroy(msg);
      return;
    }
  }
  if (status < 200) {
    if (status > 100 && msg && p->state == PROXY_FORKING && p->req)
      luasip_request_forward(p->req, msg);       /* takes msg */
    else if (msg)
      msg_destroy(msg);
    return;
  }

  b->done = 1;
  b->status = status;
  branch_stop_timer(b);
  nta_outgoing_destroy(orq);
  b->orq = NULL;
  p->pending--;

  if (status < 300) {
    int first = p->state == PROXY_FORKING;
    lsip_obj_t *o = first && msg ? response_for_lua(msg) : NULL;
    cancel_others(p, b, 1);
    if (first)
      proxy_enter(p, PROXY_ACCEPTED);
    if (msg && p->req)
      luasip_request_forward(p->req, msg);       /* late 2xx go statelessly */
    else if (msg)
      msg_destroy(msg);
    if (first) {
      /* Lua hears of the 2xx only once it went upstream */
      luasip_bridge("proxy_final", &p->obj, o);
      if (o && !o->born)
        o->destroy(o);
    }
  } else {
    if (status >= 600)
      cancel_others(p, b, p->state == PROXY_ACCEPTED);
    if (status >= 300 && status < 400 && p->follow && sip && p->state == PROXY_FORKING) {
      int first = p->ntargets, added = recurse(p, sip);
      if (added) {
        if (msg)
          msg_destroy(msg);
        if (!p->sequential) {
          int i;
          for (i = first; i < p->ntargets; i++)
            start_branch(p, i);
          p->next = p->ntargets;
          return;
        }
        if (start_next(p) == 0)
          return;
        msg = NULL;
      }
    }
    if ((status == 401 || status == 407) && msg && p->nchallenges < MAX_BRANCHES &&
        grow(&p->challenges, &p->ccap, p->nchallenges + 1, sizeof *p->challenges) == 0)
      p->challenges[p->nchallenges++] = msg_ref_create(msg);
    if (!p->best || rank(status) < rank(p->best_status) ||
        (status == 407 && p->best_status == 401)) {
      if (p->best)
        msg_destroy(p->best);
      p->best = msg;
      p->best_status = status;
      msg = NULL;
      if (!p->best) {
        /* no message (timeout): a 408 of our own */
        p->best_status = status;
      }
    }
    if (msg)
      msg_destroy(msg);
    if (p->sequential && p->state == PROXY_FORKING && status < 600 &&
        (!p->failover || status == 503 || status == 408) &&
        p->next < p->ntargets && start_next(p) == 0)
      return;
  }
  /* re-read after the bridges above: Lua may have cancelled or ended branches */
  if (p->pending == 0)
    proxy_finished(p);
  return;
}

static int start_branch(lsip_proxy_t *p, int t)
{
  branch_t *b;
  msg_t *m;
  sip_t *sip;
  su_home_t *home;
  char key[64];
  nta_agent_t *nta = p->agent ? luasip_agent_nta(p->agent) : NULL;
  url_t *next = NULL;
  int via_flow = 0;
  target_t *tg = &p->t[t];
  char refused[300];
  if (!nta || p->nbr >= MAX_BRANCHES)
    return -1;
  if (tg->flow && !tg->route) {
    /* NAT: the request goes to the address (the connection) the target registered
     * from; without it, an outbound binding is unreachable (RFC 5626 5.3), another
     * falls back to its Contact */
    url_t *f = url_make(NULL, tg->flow);
    via_flow = f && luasip_agent_flow_alive(p->agent, f);
    su_free(NULL, f);
    if (!via_flow && tg->obs)
      return -1;
  }
  /* counted in nbr below, once it is started; one left from a start that failed
   * before that is used again */
  if (grow(&p->br, &p->bcap, p->nbr + 1, sizeof *p->br) < 0)
    return -1;
  if (!p->br[p->nbr] && !(p->br[p->nbr] = calloc(1, sizeof *b)))
    return -1;
  b = p->br[p->nbr];
  memset(b, 0, sizeof *b);
  b->p = p;
  /* the only branch there can ever be (one target, no redirects followed) takes base
   * itself: one copy of the request per call fewer */
  if (p->ntargets == 1 && !p->follow && p->nbr == 0) {
    m = p->base;
    p->base = NULL;
  } else {
    m = luasip_msg_copy(p->base);
  }
  if (!m)
    return -1;
  sip = sip_object(m);
  home = msg_home(m);
  if (via_flow)
    next = url_make(home, tg->flow);
  else if (tg->hop)
    next = url_make(home, tg->hop);
  set_request_uri(m, sip, tg->uri);
  if (tg->route) {
    /* the target's Path (RFC 3327) goes in front of any Route left */
    sip_route_t *r = sip_route_make(home, tg->route);
    if (r) {
      sip_route_t *last = r;
      while (last->r_next)
        last = last->r_next;
      last->r_next = sip->sip_route;
      sip->sip_route = NULL;
      msg_header_insert(m, (msg_pub_t *)sip, (msg_header_t *)r);
    }
  }
  if (p->record_route)
    add_record_route(p, m, sip, next);
  snprintf(key, sizeof key, "z9hG4bK%s.%d%s", p->key, p->nbr, sip->sip_request->rq_method ==
           sip_method_cancel ? "c" : "");
  p->nbr++;
  p->pending++;
  if (luasip_sips_refusal(p->agent, sip, next, p->sips, refused, sizeof refused)) {
    b->orq = NULL;                /* a sips: request never leaves over UDP or TCP */
    free(p->sips_refused);
    p->sips_refused = strdup(refused);
  }
  else
    b->orq = nta_outgoing_mcreate(nta, branch_response, (nta_outgoing_magic_t *)b,
                                  next_hop(sip, (url_string_t const *)next), m,
                                  NTATAG_BRANCH_KEY(key), TAG_END());
  if (!b->orq) {
    msg_destroy(m);               /* nta took m only if it made the transaction */
    p->pending--;
    b->done = 1;
    b->status = 503;
    return -1;
  }
  LUASIP_COUNT_OUT(sip->sip_request->rq_method);
  if (p->timer_c_ms) {
    b->timer = su_timer_create(su_root_task(luasip_S->root), 0);
    if (b->timer)
      su_timer_set_interval(b->timer, timer_c, b, p->timer_c_ms);
  }
  return 0;
}

/* sequential forking: the next target that can be started */
static int start_next(lsip_proxy_t *p)
{
  while (p->next < p->ntargets) {
    if (start_branch(p, p->next++) == 0)
      return 0;
  }
  return -1;
}

/* ---------------------------------------------------------------- Lua API */

/* A body of the script's instead of the message's (the luasip_set_body options table at
 * idx): the forwarded Content-Length is then recomputed by sofia. */
static void replace_body(lua_State *L, int idx, msg_t *m, const char *fname)
{
  sip_t *sip = sip_object(m);
  if (!lua_istable(L, idx))
    return;
  if (luasip_set_body(L, idx, m, sip, fname) && sip->sip_content_length)
    msg_header_remove(m, (msg_pub_t *)sip, (msg_header_t *)sip->sip_content_length);
}

/* p:_release([{ body =, content_type = }]) -> true: the oldest held response goes on,
 * with the given body (the hook's rewrite), as if it had just arrived */
static int proxy_release_m(lua_State *L)
{
  lsip_proxy_t *p = (lsip_proxy_t *)luasip_checkobj(L, 1, LUASIP_PROXY);
  struct held h;
  msg_t *m;
  if (p->nheld == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  h = p->held[0];
  memmove(p->held, p->held + 1, (size_t)(p->nheld - 1) * sizeof p->held[0]);
  p->nheld--;
  /* the branch may have ended meanwhile (the agent closed, Timer C without response) */
  if (h.b->done || h.b->orq != h.orq || !p->agent) {
    msg_destroy(h.msg);
    lua_pushboolean(L, 1);
    return 1;
  }
  m = h.msg;
  if (lua_istable(L, 2)) {
    /* a copy of our own: nta keeps the one it received for its transaction */
    m = luasip_msg_copy(h.msg);
    msg_destroy(h.msg);
    if (!m)
      return luasip_fail(L, "out of memory", "memory");
    replace_body(L, 2, m, "luasip.request:proxy");
  }
  branch_process(h.b, h.orq, m, h.status);
  /* a response with no body that came behind the released one needs no rewrite, but
   * Lua releases each in turn: their order upstream is kept */
  lua_pushboolean(L, 1);
  return 1;
}

/* No branch could start: the fail tuple, code "tls" when a sips: request had no TLS
 * route to any target (RFC 5630; proxy.lua answers 480), else "send". */
static int proxy_not_started(lua_State *L, lsip_proxy_t *p)
{
  char why[300] = "";
  if (p->sips_refused)            /* p may go with proxy_finished */
    snprintf(why, sizeof why, "%s", p->sips_refused);
  proxy_finished(p);
  return why[0] ? luasip_fail(L, why, "tls") : luasip_fail(L, "cannot forward", "send");
}

/* req:_proxy(uri | { {uri=, route=, flow=, ob=, hop=}... }, record_route, sequential,
 *            timeout, observe, add, remove, follow_redirects, body_opts, hold, failover)
 *   -> proxy | nil, err, code
 * (positional: no options table to build per proxied request) */
static int req_proxy(lua_State *L)
{
  static const char *const fname = "luasip.request:proxy";
  lsip_obj_t *r = luasip_checkobj(L, 1, LUASIP_REQUEST);
  lsip_agent_t *a = luasip_request_agent(r);
  nta_agent_t *nta = a ? luasip_agent_nta(a) : NULL;
  sip_t const *sip = luasip_request_sip(r);
  lsip_proxy_t *p;
  sip_t *bs;
  su_home_t *home;
  int i, n, record_route;
  char key[17];

  lua_settop(L, 12);
  if (lua_type(L, 2) != LUA_TSTRING)
    luaL_checktype(L, 2, LUA_TTABLE);
  n = lua_type(L, 2) == LUA_TSTRING ? 1 : (int)luasip_rawlen(L, 2);
  if (n < 1 || n > MAX_BRANCHES)
    return luaL_error(L, "%s: 1-%d targets expected", fname, MAX_BRANCHES);
  if (!nta)
    return luasip_fail(L, "agent closed", "closed");
  if (luasip_request_status(r) >= 200)
    return luasip_fail(L, "request already answered", "answered");
  if (sip->sip_request->rq_method == sip_method_ack ||
      sip->sip_request->rq_method == sip_method_cancel)
    return luaL_error(L, "%s: %s is forwarded with req:forward()", fname,
                      sip->sip_request->rq_method_name);
  loop_key(sip, key);
  if (looped(sip, key))
    return luasip_fail(L, "loop detected", "loop");
  if (!luasip_request_ensure_irq(r))
    return luasip_fail(L, "no transaction for this request", "transaction");

  p = luasip_newobj(L, sizeof *p, LUASIP_PROXY, proxy_destroy);
  p->agent = a;
  p->req = r;
  p->is_invite = sip->sip_request->rq_method == sip_method_invite;
  p->sips = sip->sip_request->rq_url->url_type == url_sips;
  memcpy(p->key, key, sizeof key);
  if (grow(&p->t, &p->tcap, n, sizeof *p->t) < 0)
    return luaL_error(L, "%s: out of memory", fname);
  if (lua_type(L, 2) == LUA_TSTRING) {   /* one target, no route of its own */
    p->t[0].uri = strdup(luasip_uri_arg(L, 2, fname));
    p->ntargets = 1;
    if (!p->t[0].uri)
      return luaL_error(L, "%s: out of memory", fname);
  }
  for (i = 1; lua_type(L, 2) == LUA_TTABLE && i <= n; i++) {
    const char *uri, *route, *flow, *hop;
    lua_rawgeti(L, 2, i);
    if (!lua_istable(L, -1))
      return luaL_error(L, "%s: target %d must be a table", fname, i);
    lua_getfield(L, -1, "uri");
    uri = luasip_uri_arg(L, -1, fname);
    lua_getfield(L, -2, "route");
    route = lua_tostring(L, -1);
    p->t[i - 1].uri = strdup(uri);
    p->t[i - 1].route = route ? strdup(route) : NULL;
    lua_getfield(L, -3, "flow");
    flow = lua_tostring(L, -1);
    p->t[i - 1].flow = flow ? strdup(flow) : NULL;
    lua_getfield(L, -4, "ob");
    p->t[i - 1].obs = (unsigned char)lua_toboolean(L, -1);
    lua_getfield(L, -5, "hop");
    hop = lua_tostring(L, -1);
    p->t[i - 1].hop = hop ? strdup(hop) : NULL;
    p->ntargets = i;
    lua_pop(L, 6);
    if (!p->t[i - 1].uri || (hop && !p->t[i - 1].hop))
      return luaL_error(L, "%s: out of memory", fname);
  }
  record_route = lua_toboolean(L, 3);
  p->sequential = lua_toboolean(L, 4);
  p->timer_c_ms = lua_isnumber(L, 5) ? (unsigned)(lua_tonumber(L, 5) * 1000) : 180000;
  p->observe = lua_toboolean(L, 6);
  p->follow = lua_toboolean(L, 9);
  p->hold = lua_toboolean(L, 11);
  p->failover = lua_toboolean(L, 12);

  /* the request as forwarded (RFC 3261 16.6): our Route off the top, Max-Forwards - 1,
   * Record-Route of ours; each branch then sets its target */
  p->base = luasip_msg_copy(luasip_request_msg(r));
  if (!p->base)
    return luasip_fail(L, "out of memory", "memory");
  bs = sip_object(p->base);
  home = msg_home(p->base);
  remove_our_routes(a, p->base, bs);
  if (bs->sip_max_forwards) {
    char buf[16];
    unsigned long mf = bs->sip_max_forwards->mf_count;
    snprintf(buf, sizeof buf, "%lu", mf > 70 ? 69UL : mf > 0 ? mf - 1 : 0UL);
    msg_header_replace(p->base, (msg_pub_t *)bs, (msg_header_t *)bs->sip_max_forwards,
                       (msg_header_t *)sip_max_forwards_make(home, buf));
  } else {
    sip_add_tl(p->base, bs, SIPTAG_MAX_FORWARDS_STR("70"), TAG_END());
  }
  /* opts.remove = {names}, opts.add = {headers}: the script's edits (16.6 is ours) */
  if (lua_istable(L, 8)) {
    int k, nr = (int)luasip_rawlen(L, 8);
    for (k = 1; k <= nr; k++) {
      lua_rawgeti(L, 8, k);
      if (lua_isstring(L, -1))
        luasip_remove_header(p->base, bs, lua_tostring(L, -1));
      lua_pop(L, 1);
    }
  }
  luasip_add_headers(L, 7, p->base, bs, fname);
  replace_body(L, 10, p->base, fname);
  if (record_route) {
    /* each branch adds it as it starts (add_record_route): here what they share */
    tport_t *in_tp = luasip_request_tport(r);
    p->record_route = 1;
    p->rr_in = in_tp ? luasip_agent_primary(a, in_tp, NULL) : NULL;
    if (lua_type(L, 3) == LUA_TSTRING &&   /* a flow token (RFC 5626 5.3) as the user */
        !(p->rr_user = strdup(lua_tostring(L, 3))))
      return luaL_error(L, "%s: out of memory", fname);
  }
  luasip_request_set_proxy(r, &p->obj);
  luasip_anchor(L, &p->obj, -1);
  luasip_link_add(&a->proxies, &p->link);
  if (p->sequential ? start_next(p) < 0 : 0)
    return proxy_not_started(L, p);
  if (!p->sequential) {
    for (i = 0; i < p->ntargets; i++)
      start_branch(p, i);
    p->next = p->ntargets;
    if (p->pending == 0)
      return proxy_not_started(L, p);
  }
  return 1;
}

void luasip_proxy_cancel(lsip_obj_t *obj)
{
  lsip_proxy_t *p = (lsip_proxy_t *)obj;
  if (p->state != PROXY_FORKING)
    return;
  proxy_enter(p, PROXY_CANCELLED);  /* the request answers 487 upstream itself */
  cancel_others(p, NULL, 0);
  luasip_bridge("proxy_final", &p->obj, NULL);
}

/* proxy:cancel() -> true: CANCEL every pending branch */
static int proxy_cancel_m(lua_State *L)
{
  lsip_proxy_t *p = (lsip_proxy_t *)luasip_checkobj(L, 1, LUASIP_PROXY);
  if (p->state == PROXY_FORKING || p->pending)
    cancel_others(p, NULL, p->state == PROXY_ACCEPTED);
  lua_pushboolean(L, 1);
  return 1;
}

/* Stateless forwarding (RFC 3261 16.11) of m, which it takes in every case: our Route
 * off, Max-Forwards - 1, a Via of ours (nta's); uri: a new Request-URI (NULL: as it is);
 * hop: where to send it instead of its Route or Request-URI (NULL: there).  0: sent;
 * 483: Max-Forwards was 0 (not sent); -1: not sent, *why says why and *code names it. */
int luasip_forward(lsip_agent_t *a, msg_t *m, const char *uri, const char *hop,
                   const char **why, const char **code)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  sip_t *sip = sip_object(m);
  sip_method_t method;
  static char buf[300];
  int secure;
  if (!nta || !sip || !sip->sip_request) {
    msg_destroy(m);
    *why = *code = nta ? "not a request" : "closed";
    return -1;
  }
  if (sip->sip_max_forwards && sip->sip_max_forwards->mf_count == 0) {
    msg_destroy(m);
    return 483;
  }
  secure = sip->sip_request->rq_url->url_type == url_sips;
  if (sip->sip_max_forwards)
    sip->sip_max_forwards->mf_count--, msg_fragment_clear(sip->sip_max_forwards->mf_common);
  remove_our_routes(a, m, sip);
  if (uri)
    set_request_uri(m, sip, uri);
  {                               /* a sips: request never leaves over UDP or TCP */
    url_t *h = hop ? url_make(NULL, hop) : NULL;
    const char *w = luasip_sips_refusal(a, sip, h, secure, buf, sizeof buf);
    su_free(NULL, h);
    if (w) {
      msg_destroy(m);
      *why = w, *code = "tls";
      return -1;
    }
  }
  method = sip->sip_request->rq_method;
  /* nta_msg_tsend takes m: once sent (at once to an address) it may be freed already */
  if (nta_msg_tsend(nta, m, next_hop(sip, hop ? URL_STRING_MAKE(hop) : NULL), TAG_END()) < 0) {
    *why = "cannot forward", *code = "send";
    return -1;
  }
  LUASIP_COUNT_OUT(method);
  return 0;
}

/* req:forward([uri] [, next_hop | { next_hop = uri }]) -> true | nil, err, code:
 * stateless forwarding (ACK for 2xx, RFC 3261 16.11, luasip_forward); next_hop: where to
 * send it instead of its Route or Request-URI, which is left alone (a flow a target
 * registered from, behind NAT; a worker behind a front) */
static int req_forward(lua_State *L)
{
  lsip_obj_t *r = luasip_checkobj(L, 1, LUASIP_REQUEST);
  lsip_agent_t *a = luasip_request_agent(r);
  nta_agent_t *nta = a ? luasip_agent_nta(a) : NULL;
  const char *uri = lua_isnoneornil(L, 2) ? NULL
                    : luasip_uri_arg(L, 2, "luasip.request:forward");
  const char *hop = NULL, *why = NULL, *code = NULL;
  msg_t *m;
  int rc;
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "next_hop");
    hop = lua_isnil(L, -1) ? NULL : luasip_uri_arg(L, -1, "luasip.request:forward");
  } else if (!lua_isnoneornil(L, 3)) {
    hop = luasip_uri_arg(L, 3, "luasip.request:forward");
  }
  if (!nta)
    return luasip_fail(L, "agent closed", "closed");
  if (luasip_request_irq(r) && luasip_request_sip(r)->sip_request->rq_method != sip_method_ack)
    return luasip_fail(L, "the request has a transaction: use req:proxy", "stateful");
  m = luasip_msg_copy(luasip_request_msg(r));
  if (!m)
    return luasip_fail(L, "out of memory", "memory");
  rc = luasip_forward(a, m, uri, hop, &why, &code);
  if (rc == 483) {
    lua_pushnil(L);
    lua_pushliteral(L, "483 Too Many Hops");
    lua_pushinteger(L, 483);
    return 3;
  }
  if (rc < 0)
    return luasip_fail(L, why, code);
  luasip_request_forwarded(r);
  lua_pushboolean(L, 1);
  return 1;
}

/* The pending INVITE branch of a proxy of ours sent with the Via branch of a non-2xx
 * final response nta did not match */
static branch_t *stray_branch(lsip_agent_t *a, sip_t const *sip)
{
  char const *v = sip->sip_via ? sip->sip_via->v_branch : NULL;
  lsip_link_t *l;
  int i;
  if (!v || !sip->sip_cseq || sip->sip_cseq->cs_method != sip_method_invite ||
      sip->sip_status->st_status < 300)
    return NULL;
  for (l = a->proxies.next; l != &a->proxies; l = l->next) {
    lsip_proxy_t *p = (lsip_proxy_t *)((char *)l - offsetof(lsip_proxy_t, link));
    for (i = 0; i < p->nbr; i++) {
      branch_t *b = p->br[i];
      char const *k = b->orq && !b->done ? luasip_orq_branch(b->orq) : NULL;
      if (k && su_casematch(k, v))
        return nta_outgoing_method(b->orq) == sip_method_invite ? b : NULL;
    }
  }
  return NULL;
}

/* A response matching no transaction of ours whose top Via is ours and that has
 * another Via under it: the answer to a request we forwarded statelessly (RFC 3261
 * 16.11): nta_msg_tsend pops our Via and sends it on. */
int luasip_proxy_stray(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  url_t u[1];
  branch_t *b = stray_branch(a, sip);
  if (b) {
    /* sofia 1.12 over TCP/TLS: the 487 that follows our CANCEL matches no transaction;
     * it is the branch's final answer all the same, and its ACK is ours to send */
    nta_outgoing_t *orq = b->orq;
    luasip_ack_non2xx(a, orq, sip);
    branch_take(b, orq, msg, sip->sip_status->st_status);
    return 1;
  }
  if (!nta || !sip->sip_via || !sip->sip_via->v_next || !sip->sip_via->v_host)
    return 0;
  url_init(u, url_sip);
  u->url_host = sip->sip_via->v_host;
  u->url_port = sip->sip_via->v_port;
  if (!url_is_us(a, u))
    return 0;
  if (sip->sip_cseq)
    luasip_count_reply(sip->sip_cseq->cs_method, sip->sip_status->st_status);
  nta_msg_tsend(nta, msg, NULL, TAG_END());
  return 1;
}

/* req:loose_route() -> boolean: whether the top Route names this agent, i.e. the request
 * follows a Record-Route we put in (RFC 3261 16.4).  Read from sofia's parse: a sip: or
 * sips: URI whose host (brackets off, any case) and port (as written; 5060, or 5061 for
 * sips:, when absent) are those of one of the agent's transports. */
static int req_loose_route(lua_State *L)
{
  lsip_obj_t *r = luasip_checkobj(L, 1, LUASIP_REQUEST);
  lsip_agent_t *a = luasip_request_agent(r);
  nta_agent_t *nta = a ? luasip_agent_nta(a) : NULL;
  sip_route_t const *rt = luasip_request_sip(r)->sip_route;
  url_t const *u = rt ? rt->r_url : NULL;
  const char *port, *p;
  char host[128];
  size_t hl;
  tport_t *tp;
  lua_pushboolean(L, 0);
  if (!nta || !u || !u->url_scheme || !u->url_host ||
      (strcmp(u->url_scheme, "sip") && strcmp(u->url_scheme, "sips")))
    return 1;
  port = u->url_port && u->url_port[0] ? u->url_port
         : !strcmp(u->url_scheme, "sips") ? "5061" : "5060";
  for (p = port; *p; p++)
    if (*p < '0' || *p > '9')
      return 1;
  hl = strlen(u->url_host);
  if (hl >= sizeof host)
    return 1;
  if (u->url_host[0] == '[' && hl >= 2 && u->url_host[hl - 1] == ']') {
    memcpy(host, u->url_host + 1, hl - 2);
    host[hl - 2] = '\0';
  } else {
    memcpy(host, u->url_host, hl + 1);
  }
  for (tp = tport_primaries(nta_agent_tports(nta)); tp; tp = tport_next(tp)) {
    tp_name_t const *tpn = tport_name(tp);
    const char *h = tpn->tpn_host;
    size_t n = h ? strlen(h) : 0;
    char tport_port[16];
    if (!h)
      continue;
    snprintf(tport_port, sizeof tport_port, "%d", tpn->tpn_port ? atoi(tpn->tpn_port) : 5060);
    if (strcmp(tport_port, port))
      continue;
    if (h[0] == '[' && n >= 2 && h[n - 1] == ']' ? strlen(host) == n - 2 &&
        su_casenmatch(h + 1, host, n - 2) : su_casematch(h, host)) {
      lua_pushboolean(L, 1);
      return 1;
    }
  }
  return 1;
}

static const luaL_Reg proxy_methods[] = {
  {"cancel", proxy_cancel_m},
  {"_release", proxy_release_m},
  {NULL, NULL}
};

static const luaL_Reg request_proxy_methods[] = {
  {"_proxy", req_proxy},
  {"forward", req_forward},
  {"loose_route", req_loose_route},
  {NULL, NULL}
};

void luasip_proxy_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_PROXY, proxy_methods, NULL);
  luasip_add_methods(L, LUASIP_REQUEST, request_proxy_methods);
}
