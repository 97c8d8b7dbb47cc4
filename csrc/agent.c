/* SPDX-License-Identifier: MIT
 * luasip.agent: one nta agent (NTATAG_UA(0), proxy semantics) with its transports.
 * The stateless message callback is the single entry point for everything nta does not
 * absorb itself: new requests go to server_tx.c, ACKs for our 2xx too, stray responses
 * to client_tx.c.  The agent userdata is anchored while open; close() is idempotent and
 * destroys the nta agent outside sofia frames.  Load shedding lives here too: under
 * overload new initial requests get a stateless 503 before any Lua work.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <errno.h>
#include <time.h>
#include <dirent.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <netinet/in.h>
#include <netdb.h>
#include <linux/sockios.h>

#include <sofia-sip/nta_tport.h>
#include <sofia-sip/tport.h>
#include <sofia-sip/tport_tag.h>
#include <sofia-sip/msg_addr.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/url.h>
#include <sofia-sip/sresolv.h>
#include <sofia-resolv/sres_cache.h>

#include "luasip.h"

void luasip_link_add(lsip_link_t *head, lsip_link_t *l)
{
  l->next = head->next;
  l->prev = head;
  head->next->prev = l;
  head->next = l;
}

void luasip_link_del(lsip_link_t *l)
{
  if (l->next) {
    l->prev->next = l->next;
    l->next->prev = l->prev;
  }
  l->next = l->prev = NULL;
}

nta_agent_t *luasip_agent_nta(lsip_agent_t *a)
{
  return a->closed ? NULL : a->nta;
}

lsip_agent_t *luasip_agent_check(lua_State *L, int idx)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, idx, LUASIP_AGENT);
  if (a->closed)
    luaL_error(L, "attempt to use a closed %s", LUASIP_AGENT);
  return a;
}

/* ---------------------------------------------------------------- overload
 * The signal is the queueing delay of each new initial request: the time between the
 * kernel's receive timestamp of its datagram (SIOCGSTAMP on the UDP socket it was read
 * from: tport reads one datagram and delivers it before reading the next) and now.  A
 * proxy or UAS that falls behind sees that delay grow long before T1, whatever the cost
 * of its handlers; the UACs then retransmit, and the retransmissions of work not yet
 * started are what made throughput collapse.  When the delay stands above `delay` for
 * `interval` (overload_state), new INVITEs -- and other requests without a To tag that
 * waited `delay_other` -- are answered 503 + Retry-After statelessly, without a
 * transaction or any Lua, so the queue drains; retransmissions
 * of requests with a transaction are still absorbed by nta before they reach us.  The
 * 503 carries a To tag of our own so that its ACK is recognised and dropped here
 * (RFC 3261 17.1.1.3: that ACK is hop-by-hop and needs no answer).  TCP and TLS have
 * no per-message timestamp: they are never shed. */

#define OVL_TAG "ovl503."
#define OVL_FDS 8

typedef struct lsip_overload {
  int enabled;
  double delay;               /* s: target queueing delay (INVITE) */
  double delay_other;         /* s: other initial requests */
  double interval;            /* s: the delay must stand above target this long */
  int dropping;               /* shedding now */
  double above_since;         /* when requests started to see delay >= target; 0: no */
  double dropped_until;       /* when the last shedding period ended */
  unsigned retry_after;       /* s, 0: no Retry-After */
  char retry_str[16];
  struct { tport_t const *tp; int fd; } fds[OVL_FDS];  /* UDP sockets, found lazily */
  int nfds;
  unsigned long tag;          /* counter making each 503's To tag unique */
  unsigned long rejected_invite, rejected_other, acks_dropped, measured;
  double last_delay, max_delay;
} lsip_overload_t;

static int same_socket(int fd, struct sockaddr const *want)
{
  su_sockaddr_t got;
  socklen_t len = sizeof got;
  int type = 0;
  socklen_t tlen = sizeof type;
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &tlen) < 0 || type != SOCK_DGRAM)
    return 0;
  if (getsockname(fd, &got.su_sa, &len) < 0 || got.su_family != want->sa_family)
    return 0;
  if (got.su_family == AF_INET) {
    struct sockaddr_in const *w = (struct sockaddr_in const *)want;
    return got.su_sin.sin_port == w->sin_port &&
           got.su_sin.sin_addr.s_addr == w->sin_addr.s_addr;
  }
#if SU_HAVE_IN6
  if (got.su_family == AF_INET6) {
    struct sockaddr_in6 const *w = (struct sockaddr_in6 const *)want;
    return got.su_sin6.sin6_port == w->sin6_port &&
           !memcmp(&got.su_sin6.sin6_addr, &w->sin6_addr, sizeof w->sin6_addr);
  }
#endif
  return 0;
}

/* The socket of a UDP transport: sofia has no accessor, so it is found once by its
 * bound address among this process's descriptors.  -1 when not found. */
static int overload_fd(lsip_overload_t *o, tport_t const *tp)
{
  su_addrinfo_t const *ai;
  DIR *dir;
  struct dirent *de;
  int i, fd = -1;
  for (i = 0; i < o->nfds; i++)
    if (o->fds[i].tp == tp)
      return o->fds[i].fd;
  ai = tport_get_address(tp);
  if (ai && ai->ai_addr && (dir = opendir("/proc/self/fd")) != NULL) {
    while (fd < 0 && (de = readdir(dir)) != NULL) {
      int n = atoi(de->d_name);
      if (de->d_name[0] >= '0' && de->d_name[0] <= '9' && n != dirfd(dir) &&
          same_socket(n, ai->ai_addr))
        fd = n;
    }
    closedir(dir);
  }
  if (o->nfds < OVL_FDS) {
    o->fds[o->nfds].tp = tp;
    o->fds[o->nfds].fd = fd;
    o->nfds++;
  }
  if (fd >= 0) {
    struct timeval tv;
    ioctl(fd, SIOCGSTAMP, &tv);     /* the first call switches timestamping on */
  }
  return fd;
}

/* Seconds msg waited in the kernel before we got it; < 0 when unknown.  *now: the
 * wall clock, in seconds. */
static double overload_delay(lsip_agent_t *a, lsip_overload_t *o, msg_t *msg, double *now_s)
{
  tport_t *tp = tport_delivered_by(nta_agent_tports(a->nta), msg);
  struct timeval tv;
  struct timespec now;
  int fd;
  if (!tp || !tport_is_udp(tp))
    return -1;
  fd = overload_fd(o, tport_is_primary(tp) ? tp : tport_parent(tp));
  if (fd < 0 || ioctl(fd, SIOCGSTAMP, &tv) < 0 || clock_gettime(CLOCK_REALTIME, &now) < 0)
    return -1;
  *now_s = (double)now.tv_sec + now.tv_nsec / 1e9;
  return (double)(now.tv_sec - tv.tv_sec) + now.tv_nsec / 1e9 - tv.tv_usec / 1e6;
}

/* The shedding state after a request that waited d seconds, at now (CoDel's idea,
 * RFC 8289, on requests instead of packets): a standing queue, not a burst, is
 * overload.  Shedding starts once every request for `interval` has seen a delay of at
 * least `delay` (a loop that was descheduled or ran a long GC drains its backlog within
 * that time and sheds nothing), and stops at the first request that waited less.  Within
 * 10 intervals of a shedding period it restarts at once: the overload is still there. */
static int overload_state(lsip_overload_t *o, double d, double now)
{
  if (d < o->delay) {
    if (o->dropping)
      o->dropped_until = now;
    o->dropping = 0;
    o->above_since = 0;
    return 0;
  }
  if (!o->dropping) {
    if (o->above_since == 0)
      o->above_since = now;
    if (now - o->above_since >= o->interval ||
        (o->dropped_until > 0 && now - o->dropped_until < 10 * o->interval))
      o->dropping = 1;
  }
  return o->dropping;
}

/* 1 when the request was answered 503 (and msg consumed). */
static int overload_shed(lsip_agent_t *a, msg_t *msg, sip_t *sip)
{
  lsip_overload_t *o = a->overload;
  int invite = sip->sip_request->rq_method == sip_method_invite;
  double d, now = 0;
  char tag[48];
  sip_to_t to[1];
  if (!o || !o->enabled || !sip->sip_to || sip->sip_to->a_tag || !sip->sip_via)
    return 0;
  d = overload_delay(a, o, msg, &now);
  if (d < 0)
    return 0;
  o->measured++;
  o->last_delay = d;
  if (d > o->max_delay)
    o->max_delay = d;
  /* INVITEs go first: other requests only when they, too, waited delay_other */
  if (!overload_state(o, d, now) || (!invite && d < o->delay_other))
    return 0;
  if (invite)
    o->rejected_invite++;
  else
    o->rejected_other++;
  luasip_count_reply(sip->sip_request->rq_method, 503);
  /* the request's To with our tag: a shallow copy whose params list gains one item */
  {
    msg_param_t params[16];
    int i = 0;
    snprintf(tag, sizeof tag, "tag=" OVL_TAG "%lx", ++o->tag);
    *to = *sip->sip_to;             /* sip_add_tl below duplicates it */
    memset(to->a_common, 0, sizeof to->a_common);
    to->a_common->h_class = sip_to_class;
    to->a_next = NULL;
    for (; to->a_params && to->a_params[i] && i < 14; i++)
      params[i] = to->a_params[i];
    params[i++] = tag;
    params[i] = NULL;
    to->a_params = params;
    to->a_tag = tag + 4;
    nta_msg_treply(a->nta, msg, 503, "Service Unavailable",
                   SIPTAG_TO(to),
                   TAG_IF(o->retry_after, SIPTAG_RETRY_AFTER_STR(o->retry_str)),
                   SIPTAG_SERVER_STR(a->user_agent),
                   TAG_END());
  }
  return 1;
}

static int overload_is_our_ack(lsip_agent_t *a, sip_t const *sip)
{
  return a->overload && sip->sip_to && sip->sip_to->a_tag &&
         !strncmp(sip->sip_to->a_tag, OVL_TAG, sizeof OVL_TAG - 1);
}

/* Reads the overload option at idx (nil: defaults, false: off, or a table) into o;
 * raises naming fname. */
static void overload_config(lua_State *L, int idx, lsip_overload_t *o, const char *fname)
{
  /* defaults: at 2x its capacity a queue grows ~1 s per s, so shedding starts by
   * delay + interval = 0.45 s, before an INVITE waiting for its 100 Trying is
   * retransmitted (T1 = 0.5 s) */
  double delay = 0.15, other = -1, retry = 5, interval = 0.3;
  int enabled = 1;
  if (idx < 0)
    idx = lua_gettop(L) + idx + 1;
  if (lua_isnil(L, idx) || (lua_isboolean(L, idx) && lua_toboolean(L, idx))) {
    /* the defaults */
  } else if (lua_isboolean(L, idx)) {
    enabled = 0;
  } else if (lua_istable(L, idx)) {
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      const char *k = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      double v = lua_tonumber(L, -1);
      if (k && !strcmp(k, "enabled") && lua_isboolean(L, -1)) {
        enabled = lua_toboolean(L, -1);
      } else if (k && lua_type(L, -1) == LUA_TNUMBER && v >= 0 && v <= 3600 &&
                 (!strcmp(k, "delay") || !strcmp(k, "delay_other") ||
                  !strcmp(k, "retry_after") || !strcmp(k, "interval"))) {
        if (k[0] == 'r')
          retry = v;
        else if (k[0] == 'i')
          interval = v;
        else if (k[5] == '_')
          other = v;
        else
          delay = v;
      } else {
        luaL_error(L, "%s: overload.%s: %s", fname, k ? k : "?",
                   k && (!strcmp(k, "delay") || !strcmp(k, "delay_other") ||
                         !strcmp(k, "retry_after") || !strcmp(k, "enabled") ||
                         !strcmp(k, "interval"))
                   ? "bad value" : "unknown option");
      }
      lua_pop(L, 1);
    }
  } else {
    luaL_error(L, "%s: overload must be a table or a boolean", fname);
  }
  o->enabled = enabled;
  o->delay = delay;
  o->delay_other = other >= 0 ? other : 2 * delay;
  o->interval = interval;
  o->dropping = 0;
  o->above_since = o->dropped_until = 0;
  o->retry_after = (unsigned)retry;
  snprintf(o->retry_str, sizeof o->retry_str, "%u", o->retry_after);
}

/* What sofia's parser lets through and RFC 3261 rejects (checked before any Lua runs):
 * control or 8-bit bytes in the Request-URI (25.1: a URI is printable ASCII; a raw ESC
 * would also reach log lines), and a Content-Length larger than the body that arrived
 * (18.3: over UDP an error; over TCP a message cut short by the end of the stream).
 * Returns the reason phrase of a 400, or NULL. */
const char *luasip_request_malformed(sip_t const *sip)
{
  url_t const *u = sip->sip_request ? sip->sip_request->rq_url : NULL;
  char const *parts[8];
  msg_header_t const *h;
  size_t i;
  if (u) {
    parts[0] = u->url_user;
    parts[1] = u->url_password;
    parts[2] = u->url_host;
    parts[3] = u->url_port;
    parts[4] = u->url_path;
    parts[5] = u->url_params;
    parts[6] = u->url_headers;
    parts[7] = u->url_fragment;
    for (i = 0; i < 8; i++) {
      unsigned char const *p = (unsigned char const *)parts[i];
      for (; p && *p; p++)
        if (*p <= 0x20 || *p >= 0x7f)
          return "Bad Request-URI";
    }
  }
  if (sip->sip_content_length &&
      sip->sip_content_length->l_length > (sip->sip_payload ? sip->sip_payload->pl_len : 0))
    return "Content-Length Larger Than Body";
  /* sofia files a Max-Forwards it cannot parse (or a second one) under sip_error and
   * goes on as if there were none: a proxy would then add 70 and forward it */
  for (h = (msg_header_t const *)sip->sip_error; h; h = h->sh_next) {
    char const *name = h->sh_class == sip_error_class ? ((msg_error_t const *)h)->er_name
                       : h->sh_class->hc_name;
    if (name && su_casematch(name, "Max-Forwards"))
      return "Bad Max-Forwards";
  }
  return NULL;
}

/* RFC 3581 4: a Via asking for rport also gets received=, even when that equals its
 * sent-by (nta fills rport= but adds received only when they differ) */
static void rport_received(msg_t *msg, sip_t *sip)
{
  sip_via_t *v = sip->sip_via;
  su_sockaddr_t const *su = msg_addr(msg);
  char param[80];
  char host[64];
  if (!v || !v->v_rport || v->v_received || !su ||
      !su_inet_ntop(su->su_family, SU_ADDR(su), host, sizeof host))
    return;
  snprintf(param, sizeof param, "received=%s", host);
  /* (the param is kept by pointer: it lives in the message's home) */
  if (msg_header_add_param(msg_home(msg), v->v_common, su_strdup(msg_home(msg), param)) == 0)
    msg_fragment_clear(v->v_common);
}

static int agent_message(nta_agent_magic_t *magic, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  lsip_agent_t *a = (lsip_agent_t *)magic;
  /* this loop step did work, even when no Lua runs for it (a shed request, the ACK of
   * a 503): run() must not nap after it (see core_run) */
  luasip_S->entries++;
  if (a->closed) {
    msg_destroy(msg);
    return 0;
  }
  if (sip && sip->sip_request) {
    sip_method_t m = sip->sip_request->rq_method;
    const char *bad;
    LUASIP_COUNT_IN(m);
    rport_received(msg, sip);
    if (a->flood && luasip_flood_check(a, nta, msg, sip))
      return 0;
    bad = luasip_request_malformed(sip);
    if (bad) {
      if (m == sip_method_ack) {  /* never answered: dropped */
        luasip_counters.acks_dropped++;
        msg_destroy(msg);
      } else {
        luasip_count_reply(m, 400);
        nta_msg_treply(nta, msg, 400, bad, TAG_END());
      }
      return 0;
    }
    if (a->spread && luasip_spread(a, nta, msg, sip))
      return 0;
    if (m == sip_method_ack) {
      if (overload_is_our_ack(a, sip)) {
        a->overload->acks_dropped++;
        luasip_counters.acks_dropped++;
        msg_destroy(msg);
        return 0;
      }
      luasip_request_ack(a, msg, sip);
      return 0;
    }
    if (m == sip_method_cancel && !a->stateless) {
      /* nta matched no INVITE transaction for it: RFC 3261 9.2 */
      luasip_count_reply(m, 481);
      nta_msg_treply(nta, msg, SIP_481_NO_TRANSACTION, TAG_END());
      return 0;
    }
    if (overload_shed(a, msg, sip))
      return 0;
    luasip_request_incoming(a, nta, msg, sip);
    return 0;
  }
  if (sip && sip->sip_status) {
    if (!luasip_client_stray(a, msg, sip) && !luasip_proxy_stray(a, msg, sip)) {
      luasip_counters.stray_responses++;
      msg_destroy(msg);
    }
    return 0;
  }
  msg_destroy(msg);
  return 0;
}

static void dnsconf_tick(su_root_magic_t *magic, su_timer_t *t, su_timer_arg_t *arg)
{
  (void)magic; (void)t;
  luasip_dnsconf_refresh((lsip_dnsconf_t *)arg);
}

static void agent_free_nta(lsip_agent_t *a)
{
  if (a->dnsconf_timer) {
    su_timer_destroy(a->dnsconf_timer);
    a->dnsconf_timer = NULL;
  }
  if (a->nta) {
    luasip_proxies_detach(a);
    luasip_requests_detach(a);
    luasip_clients_detach(a);
    luasip_dialogs_detach(a);
    luasip_metrics_agent(a, 0);     /* its counters stay on the page */
    nta_agent_destroy(a->nta);
    a->nta = NULL;
    a->ncontacts = 0;               /* their transports are gone (the copies stay in home) */
  }
}

static void agent_destroy(lsip_obj_t *obj)
{
  lsip_agent_t *a = (lsip_agent_t *)obj;
  if (a->obj.alive) {
    /* close() from a handler: the userdata lives on, only sofia state goes now */
    agent_free_nta(a);
    return;
  }
  agent_free_nta(a);
  luasip_dnsconf_free(a->dnsconf);
  if (a->dns_cache)
    sres_cache_unref(a->dns_cache);
  su_home_deinit(a->home);
  luasip_freeobj(&a->obj);
}

/* Why a listen URI cannot be opened: sofia does not keep the socket's errno (it is
 * clobbered by its clean-up), so bind a socket of our own to the same address, UDP then
 * TCP (or the one transport the URI names), and return its errno (0: no idea). */
static int listen_errno(const char *uri)
{
  su_home_t home[1] = { SU_HOME_INIT(home) };
  url_t *url = url_hdup(home, (url_t const *)uri);
  struct addrinfo hints, *ai = NULL;
  const char *port, *host;
  char tp[8] = "";
  int types[2] = { SOCK_DGRAM, SOCK_STREAM }, i, e = 0;
  if (!url || !url->url_host)
    goto done;
  host = url->url_host;
  if (host[0] == '[') {                   /* "[::1]": the brackets are not the address */
    char *h = su_strdup(home, host + 1);
    char *end = h ? strchr(h, ']') : NULL;
    if (end)
      *end = '\0';
    host = h;
  }
  port = url->url_port ? url->url_port : "5060";
  if (url->url_type == url_sips) {
    types[0] = SOCK_STREAM, types[1] = 0;
  } else if (url->url_params && url_param(url->url_params, "transport", tp, sizeof tp)) {
    if (su_casematch(tp, "tcp") || su_casematch(tp, "tls"))
      types[0] = SOCK_STREAM, types[1] = 0;
    else
      types[1] = 0;
  }
  memset(&hints, 0, sizeof hints);
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  if (!host || getaddrinfo(host, port, &hints, &ai) != 0 || !ai)
    goto done;
  for (i = 0; i < 2 && types[i] && !e; i++) {
    int fd = socket(ai->ai_family, types[i], 0);
    int one = 1;
    if (fd < 0) {
      e = errno;
      break;
    }
    if (types[i] == SOCK_STREAM)
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, ai->ai_addr, ai->ai_addrlen) < 0)
      e = errno;
    close(fd);
  }
done:
  if (ai)
    freeaddrinfo(ai);
  su_home_deinit(home);
  return e;
}

/* The fail tuple for a listen URI that could not be opened, with the system's reason
 * when one can be found (address in use, not available, permission, ...). */
static int listen_failed(lua_State *L, const char *uri)
{
  int e = listen_errno(uri);
  if (e != 0)
    return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s: %s", uri, strerror(e)),
                       "listen");
  return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s", uri), "listen");
}

/* A sips: URI or one with transport=tls.  Its transport reports a connection closed
 * with requests queued on it (TPTAG_SDWN_ERROR) -- a TLS handshake refused or a
 * certificate that did not verify -- so they fail at once (nta answers 503) instead of
 * waiting for their timeout. */
static int uri_is_tls(const char *u)
{
  const char *p;
  if (su_casenmatch(u, "sips:", 5))
    return 1;
  for (p = u; (p = strchr(p, ';')) != NULL; p++)
    if (su_casenmatch(p, ";transport=tls", 14) && (p[14] == '\0' || p[14] == ';'))
      return 1;
  return 0;
}

/* The largest message taken in, by default: sofia's parser costs O(lines^2) per message
 * (msg_extract appends each header to its list by walking it), so the size bounds the
 * worst case (measured: 8 KB of two-byte header lines, 36 ms). A larger datagram is
 * dropped after its first 4 KB are parsed; a larger message on a stream gets 413 and the
 * connection stops reading (nta, tport). */
#define LUASIP_MAX_MESSAGE_SIZE 8192

/* core.agent{ listen = {uri...}, user_agent = s, t1 = s,
 *   tls = { cert = path, key = path, ca = path, verify = true } (checked by agent.lua),
 *   overload = { delay = 0.15, interval = 0.3, delay_other = 2 * delay, retry_after = 5,
 *                enabled = true }
 *   | false,
 *   dns = { servers = {"addr[:port]"...} } | { resolv_conf = path } (dnsconf.c) }
 *   -> agent | nil, err, code */
int luasip_agent_new(lua_State *L)
{
  lsip_agent_t *a;
  int i, n, stun;
  const char *first;
  lsip_overload_t ovl;
  usize_t maxsize;
  const char *resolv_conf;
  char tls_dir[LUASIP_TLS_DIR_MAX];
  unsigned tls_policy = 0;
  luaL_checktype(L, 1, LUA_TTABLE);
  memset(&ovl, 0, sizeof ovl);
  lua_getfield(L, 1, "overload");
  overload_config(L, -1, &ovl, "luasip.agent");
  lua_pop(L, 1);
  lua_getfield(L, 1, "listen");
  if (!lua_istable(L, -1) || luasip_rawlen(L, -1) == 0)
    return luaL_error(L, "luasip.agent: listen must be a non-empty list of URIs");
  n = (int)luasip_rawlen(L, -1);
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    if (!lua_isstring(L, -1))
      return luaL_error(L, "luasip.agent: listen[%d] must be a string", i);
    lua_pop(L, 1);
  }
  a = luasip_newobj(L, sizeof *a, LUASIP_AGENT, agent_destroy);
  su_home_init(a->home);
  a->requests.next = a->requests.prev = &a->requests;
  a->clients.next = a->clients.prev = &a->clients;
  a->dialogs.next = a->dialogs.prev = &a->dialogs;
  a->proxies.next = a->proxies.prev = &a->proxies;
  a->overload = su_alloc(a->home, sizeof *a->overload);
  if (!a->overload)
    return luaL_error(L, "luasip.agent: out of memory");
  *a->overload = ovl;
  lua_getfield(L, 1, "flood");
  luasip_flood_config(L, lua_gettop(L), a, "luasip.agent");
  lua_pop(L, 1);
  lua_getfield(L, 1, "stateless");
  a->stateless = lua_toboolean(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "user_agent");
  a->user_agent = su_strdup(a->home, lua_isstring(L, -1) ? lua_tostring(L, -1)
                            : "luasip/" LUASIP_VERSION);
  lua_pop(L, 1);
  lua_getfield(L, 1, "t1");
  a->t1 = lua_isnumber(L, -1) ? (unsigned)(lua_tonumber(L, -1) * 1000) : 500;
  lua_pop(L, 1);
  if (a->t1 < 1 || a->t1 > 60000)
    return luaL_error(L, "luasip.agent: t1 must be 0.001-60 seconds");
  a->t2 = a->t1 * 8 > 4000 ? a->t1 * 8 : 4000;
  lua_getfield(L, 1, "max_message_size");
  if (!lua_isnil(L, -1) && (!lua_isnumber(L, -1) || lua_tonumber(L, -1) < 1024 ||
                            lua_tonumber(L, -1) > 16 * 1024 * 1024))
    return luaL_error(L, "luasip.agent: max_message_size must be 1024-16777216 bytes");
  maxsize = lua_isnil(L, -1) ? LUASIP_MAX_MESSAGE_SIZE : (usize_t)lua_tonumber(L, -1);
  lua_pop(L, 1);
  lua_getfield(L, 1, "dns");
  a->dnsconf = luasip_dnsconf_new(L, -1, "luasip.agent");
  a->dns_cache = luasip_dnsconf_hosts(L, lua_gettop(L));
  lua_pop(L, 1);
  resolv_conf = luasip_dnsconf_path(a->dnsconf);
  tls_dir[0] = '\0';
  lua_getfield(L, 1, "tls");
  if (lua_istable(L, -1) && (i = luasip_tls_dir(L, -1, tls_dir, &tls_policy)) != 0) {
    a->closed = 1;
    return i;
  }
  lua_pop(L, 1);
  lua_rawgeti(L, -2, 1);
  first = lua_tostring(L, -1);
  stun = luasip_stun_plug_in();
  a->nta = nta_agent_create(luasip_S->root, (url_string_t const *)first, agent_message,
                            (nta_agent_magic_t *)a,
                            NTATAG_UA(0),
                            NTATAG_SIP_T1(a->t1),
                            NTATAG_SIP_T2(a->t2),
                            NTATAG_SIP_T1X64(64 * a->t1),
                            NTATAG_SERVER_RPORT(1),
                            NTATAG_CLIENT_RPORT(1),
                            NTATAG_MERGE_482(1),
                            NTATAG_TAG_3261(1),
                            NTATAG_CANCEL_2543(0),
                            NTATAG_MAXSIZE(maxsize),
                            /* each message's home starts with one block of its size +
                             * LUASIP_PRELOAD: its headers are parsed into it, not one malloc
                             * each (bench/profiles/README.md: 2-5 % fewer instructions
                             * per call, no more memory than at 0; 2048 and up hold more) */
                            NTATAG_PRELOAD(LUASIP_PRELOAD),
                            /* the parser copies each header's text and keeps the
                             * original: a header copied unchanged into a response or
                             * a relayed message is sent as it came, not encoded again
                             * through sofia's printf-based encoders (proxied call
                             * -3 %, UAS call -2 %, REGISTER floor -4 % instructions).
                             * C that changes a parsed header in place must clear its
                             * kept text (msg_fragment_clear), or the old one is sent */
                            NTATAG_SIPFLAGS(MSG_DO_CANONIC | MSG_DO_EXTRACT_COPY),
                            TAG_IF(resolv_conf, SRESTAG_RESOLV_CONF(resolv_conf)),
                            TAG_IF(a->dns_cache, SRESTAG_CACHE(a->dns_cache)),
                            /* bursts of calls overflow the kernel's default ~200 KB */
                            TPTAG_UDP_RMEM(4 * 1024 * 1024),
                            TPTAG_UDP_WMEM(1024 * 1024),
                            TAG_IF(tls_dir[0], TPTAG_CERTIFICATE(tls_dir)),
                            TAG_IF(tls_dir[0], TPTAG_TLS_VERIFY_POLICY(tls_policy)),
                            TAG_IF(tls_dir[0], TPTAG_TLS_VERIFY_DATE(1)),
                            TAG_IF(uri_is_tls(first), TPTAG_SDWN_ERROR(1)),
                            /* RFC 5626 4.4.1: a CRLF "ping" on a connection gets a CRLF pong */
                            TPTAG_PONG2PING(1),
                            /* STUN Binding answered by csrc/stun.c, or by nobody when
                             * another plug-in came first (not sofia's leaking one) */
                            TAG_IF(!stun, TPTAG_STUN_SERVER(0)),
                            TAG_END());
  if (!a->nta) {
    a->closed = 1;
    luasip_tls_dir_remove(tls_dir);
    return listen_failed(L, first);
  }
  lua_pop(L, 1);
  for (i = 2; i <= n; i++) {
    const char *u;
    lua_rawgeti(L, -2, i);
    u = lua_tostring(L, -1);
    if (nta_agent_add_tport(a->nta, (url_string_t const *)u,
                            TPTAG_UDP_RMEM(4 * 1024 * 1024), TPTAG_UDP_WMEM(1024 * 1024),
                            TAG_IF(tls_dir[0], TPTAG_CERTIFICATE(tls_dir)),
                            TAG_IF(tls_dir[0], TPTAG_TLS_VERIFY_POLICY(tls_policy)),
                            TAG_IF(tls_dir[0], TPTAG_TLS_VERIFY_DATE(1)),
                            TAG_IF(uri_is_tls(u), TPTAG_SDWN_ERROR(1)),
                            TPTAG_PONG2PING(1),
                            TAG_END()) < 0) {
      nta_agent_destroy(a->nta);
      a->nta = NULL;
      a->closed = 1;
      luasip_tls_dir_remove(tls_dir);
      return listen_failed(L, u);
    }
    lua_pop(L, 1);
  }
  /* sofia loaded the certificates when it bound the TLS transports */
  luasip_tls_dir_remove(tls_dir);
  luasip_metrics_agent(a, 1);
  if (resolv_conf) {
    a->dnsconf_timer = su_timer_create(su_root_task(luasip_S->root), 0);
    if (a->dnsconf_timer)
      su_timer_set_interval(a->dnsconf_timer, dnsconf_tick, (su_timer_arg_t *)a->dnsconf,
                            LUASIP_DNSCONF_MS);
  }
  luasip_anchor(L, &a->obj, -1);
  return 1;
}

/* The primary transport a message to dest (or one answering a request delivered by hint)
 * leaves through. */
static tport_t *primary_for(lsip_agent_t *a, tport_t *hint, url_t const *dest)
{
  char proto[16] = "udp";
  int v6;
  tport_t *tp;
  if (hint)
    return tport_is_primary(hint) ? hint : tport_parent(hint);
  if (!dest || !dest->url_host)
    return tport_primaries(nta_agent_tports(a->nta));
  v6 = dest->url_host[0] == '[' || strchr(dest->url_host, ':') != NULL;
  if (dest->url_type == url_sips)
    strcpy(proto, "tls");           /* RFC 3261 26.2: sips: is TLS */
  else if (dest->url_params)
    url_param(dest->url_params, "transport", proto, sizeof proto);
  for (tp = tport_primaries(nta_agent_tports(a->nta)); tp; tp = tport_next(tp)) {
    if (su_casematch(tport_name(tp)->tpn_proto, proto) &&
        (v6 ? tport_has_ip6(tp) : tport_has_ip4(tp)))
      return tp;
  }
  return tport_primaries(nta_agent_tports(a->nta));
}

/* The primary transport a message to dest goes out on, or the primary of hint (a
 * connection it came in on); NULL once the agent is closed */
tport_t *luasip_agent_primary(lsip_agent_t *a, tport_t *hint, url_t const *dest)
{
  return a->nta ? primary_for(a, hint, dest) : NULL;
}

/* A Contact for the transport a message goes out on: with IPv4 and IPv6 (or UDP and
 * TCP) on one agent, nta_agent_contact() would name only the first.  Made once per
 * primary transport (a finite set) and kept in the agent's home (callers copy it into
 * their message, SIPTAG_CONTACT, or read it); NULL once the agent is closed or out of
 * memory. */
sip_contact_t const *luasip_agent_contact_for(lsip_agent_t *a, tport_t *hint,
                                              url_t const *dest)
{
  tport_t *tp = a->nta ? primary_for(a, hint, dest) : NULL;
  tp_name_t const *tpn;
  const char *host, *lb = "", *rb = "";
  sip_contact_t *m;
  int i;
  if (!tp)
    return a->nta ? nta_agent_contact(a->nta) : NULL;
  for (i = 0; i < a->ncontacts; i++)
    if (a->contacts[i].tp == tp)
      return a->contacts[i].m;
  tpn = tport_name(tp);
  host = tpn->tpn_host;
  if (strchr(host, ':') && host[0] != '[')
    lb = "[", rb = "]";
  if (su_casematch(tpn->tpn_proto, "tls"))   /* RFC 5630: TLS hop, sips: Contact */
    m = sip_contact_format(a->home, "<sips:%s%s%s:%s>", lb, host, rb, tpn->tpn_port);
  else
    m = sip_contact_format(a->home, "<sip:%s%s%s:%s%s%s>", lb, host, rb, tpn->tpn_port,
                           su_casematch(tpn->tpn_proto, "udp") ? "" : ";transport=",
                           su_casematch(tpn->tpn_proto, "udp") ? "" : tpn->tpn_proto);
  if (!m)
    return NULL;
  if (a->ncontacts == a->contacts_cap) {
    int cap = a->contacts_cap ? 2 * a->contacts_cap : 4;
    struct lsip_contact_of *c = su_realloc(a->home, a->contacts, cap * sizeof *c);
    if (!c)
      return m;                     /* out of memory: made again next time */
    a->contacts = c;
    a->contacts_cap = cap;
  }
  a->contacts[a->ncontacts].tp = tp;
  a->contacts[a->ncontacts].m = m;
  a->ncontacts++;
  return m;
}

/* agent:close() -> true (idempotent) */
static int agent_close(lua_State *L)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, 1, LUASIP_AGENT);
  if (!a->closed) {
    a->closed = 1;
    luasip_unanchor(L, &a->obj);
    if (luasip_in_callback())
      luasip_defer(&a->obj);        /* never destroy nta from inside its own callback */
    else
      agent_free_nta(a);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int agent_closed(lua_State *L)
{
  lsip_agent_t *a = (lsip_agent_t *)luasip_checkobj(L, 1, LUASIP_AGENT);
  lua_pushboolean(L, a->closed);
  return 1;
}

/* agent:transports() -> { {transport=, host=, port=}, ... } */
static int agent_transports(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  tport_t *tp;
  int i = 0;
  lua_newtable(L);
  for (tp = tport_primaries(nta_agent_tports(a->nta)); tp; tp = tport_next(tp)) {
    tp_name_t const *tpn = tport_name(tp);
    lua_newtable(L);
    lua_pushstring(L, tpn->tpn_proto);
    lua_setfield(L, -2, "transport");
    lua_pushstring(L, tpn->tpn_host);
    lua_setfield(L, -2, "host");
    lua_pushinteger(L, tpn->tpn_port ? atoi(tpn->tpn_port) : 5060);
    lua_setfield(L, -2, "port");
    lua_rawseti(L, -2, ++i);
  }
  return 1;
}

/* agent:contact() -> "sip:host:port" of the first transport */
static int agent_contact(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  sip_contact_t const *m = nta_agent_contact(a->nta);
  char buf[256];
  if (!m || url_e(buf, sizeof buf, m->m_url) < 0)
    return luasip_fail(L, "no contact", "contact");
  buf[sizeof buf - 1] = '\0';
  lua_pushstring(L, buf);
  return 1;
}

/* agent:overload([opts]) -> { enabled =, delay =, interval =, delay_other =, retry_after =,
 *   shedding =,
 *   rejected_invite =, rejected_other =, acks_dropped =, measured =, last_delay =,
 *   max_delay = }: the load-shedding settings and counters (delays in seconds); opts,
 *   of the shape of the agent's overload option, replaces the settings first. */
static int agent_overload(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  lsip_overload_t *o = a->overload;
  if (!lua_isnone(L, 2))
    overload_config(L, 2, o, "luasip.agent:overload");
  lua_createtable(L, 0, 12);
  lua_pushboolean(L, o->enabled);
  lua_setfield(L, -2, "enabled");
  lua_pushnumber(L, o->delay);
  lua_setfield(L, -2, "delay");
  lua_pushnumber(L, o->delay_other);
  lua_setfield(L, -2, "delay_other");
  lua_pushinteger(L, (lua_Integer)o->retry_after);
  lua_setfield(L, -2, "retry_after");
  lua_pushnumber(L, o->interval);
  lua_setfield(L, -2, "interval");
  lua_pushboolean(L, o->dropping);
  lua_setfield(L, -2, "shedding");
  lua_pushinteger(L, (lua_Integer)o->rejected_invite);
  lua_setfield(L, -2, "rejected_invite");
  lua_pushinteger(L, (lua_Integer)o->rejected_other);
  lua_setfield(L, -2, "rejected_other");
  lua_pushinteger(L, (lua_Integer)o->acks_dropped);
  lua_setfield(L, -2, "acks_dropped");
  lua_pushinteger(L, (lua_Integer)o->measured);
  lua_setfield(L, -2, "measured");
  lua_pushnumber(L, o->last_delay);
  lua_setfield(L, -2, "last_delay");
  lua_pushnumber(L, o->max_delay);
  lua_setfield(L, -2, "max_delay");
  return 1;
}

/* agent:flood() -> the per-source policy's counters | nil */
static int agent_flood(lua_State *L)
{
  return luasip_flood_stats(L, luasip_agent_check(L, 1));
}

void luasip_agent_shed_counts(lsip_agent_t *a, unsigned long long *invite,
                              unsigned long long *other)
{
  if (a->overload) {
    *invite += a->overload->rejected_invite;
    *other += a->overload->rejected_other;
  }
}

/* Is the flow to u (sip:address:port;transport=...) usable: a datagram transport, or a
 * connection to that address still open (RFC 5626 flows; NAT bindings over TCP/TLS)? */
int luasip_agent_flow_alive(lsip_agent_t *a, url_t const *u)
{
  su_home_t home[1] = { SU_HOME_INIT(home) };
  tp_name_t tpn[1];
  tport_t *tp;
  int alive = 0;
  memset(tpn, 0, sizeof tpn);
  if (!a->nta || tport_name_by_url(home, tpn, (url_string_t const *)u) < 0) {
    su_home_deinit(home);
    return 0;
  }
  tp = tport_by_name(nta_agent_tports(a->nta), tpn);
  if (tp && (tport_is_dgram(tp) ||
             (tport_is_secondary(tp) && !tport_is_closed(tp) && !tport_is_shutdown(tp))))
    alive = 1;
  su_home_deinit(home);
  return alive;
}

/* agent:flow_alive(uri) -> boolean (luasip_agent_flow_alive) */
static int agent_flow_alive(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  url_t *u;
  su_home_t home[1] = { SU_HOME_INIT(home) };
  u = url_make(home, luaL_checkstring(L, 2));
  lua_pushboolean(L, u && a->nta && luasip_agent_flow_alive(a, u));
  su_home_deinit(home);
  return 1;
}

static const luaL_Reg agent_methods[] = {
  {"flow_alive", agent_flow_alive},
  {"close", agent_close},
  {"overload", agent_overload},
  {"flood", agent_flood},
  {"closed", agent_closed},
  {"transports", agent_transports},
  {"contact", agent_contact},
  {NULL, NULL}
};

void luasip_agent_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_AGENT, agent_methods, NULL);
  luasip_digest_open(L);
}
