/* SPDX-License-Identifier: MIT
 * luasip.dns_query: one RFC 3263 resolution (NAPTR -> SRV -> A/AAAA) of a SIP URI on
 * sofia's asynchronous resolver (sres_sip over sres, sockets watched by the su_root), for
 * what nta does not do itself: trying the next target after a 503 (lua/luasip/dns.lua),
 * and names for the Redis client. The loop never blocks on it.
 *
 *   core.dns_resolve(uri [, agent]) -> query | nil, err, code
 *     agent: use its dns option's name servers (dnsconf.c); else the system's.
 *   ("dns_resolved", q) when done; q:results() -> { {address=, port=, transport=}...}
 *   in the order to try them, or nil, err.
 *
 * A query owns its own sres resolver (created with the query, destroyed when it ends: no
 * cache is shared, which keeps the lifetime simple). The end is reported from a
 * 1 ms timer, never from inside sres's callback, so sres is never destroyed on its
  * own stack. The userdata is anchored while the query runs.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>

#include "luasip.h"

#define SRES_SIP_MAGIC_T struct lsip_dnsq
#include <sofia-sip/sresolv.h>
#include <sofia-sip/sres_sip.h>

#define LUASIP_DNSQ "luasip.dns_query"
#define DNSQ_MAX 32

typedef enum { DNSQ_RUNNING, DNSQ_ENDING, DNSQ_DONE } dnsq_state_t;

typedef struct lsip_dnsq {
  lsip_obj_t obj;
  dnsq_state_t state;
  sres_resolver_t *sres;
  sres_sip_t *srs;
  su_timer_t *timer;
  int error;                   /* SRES_SIP_ERR_* when no result */
  int n;
  struct { char addr[INET6_ADDRSTRLEN]; unsigned port; int proto; } r[DNSQ_MAX];
} lsip_dnsq_t;

/* drop sofia state (never called on sres's stack) */
static void dnsq_release(lsip_dnsq_t *q)
{
  if (q->timer) {
    su_timer_destroy(q->timer);
    q->timer = NULL;
  }
  if (q->srs) {
    sres_sip_unref(q->srs);
    q->srs = NULL;
  }
  if (q->sres) {
    sres_resolver_destroy(q->sres);
    q->sres = NULL;
  }
}

static void dnsq_collect(lsip_dnsq_t *q)
{
  su_addrinfo_t const *ai;
  q->error = sres_sip_error(q->srs);
  for (ai = sres_sip_results(q->srs); ai && q->n < DNSQ_MAX; ai = ai->ai_next) {
    su_sockaddr_t const *su = (su_sockaddr_t const *)ai->ai_addr;
    void const *a = su->su_family == AF_INET6 ? (void const *)&su->su_sin6.sin6_addr
                                              : (void const *)&su->su_sin.sin_addr;
    if (!inet_ntop(su->su_family, a, q->r[q->n].addr, sizeof q->r[q->n].addr))
      continue;
    q->r[q->n].port = ntohs(su->su_port);
    q->r[q->n].proto = ai->ai_protocol;
    q->n++;
  }
}

static void dnsq_end(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  lsip_dnsq_t *q = (lsip_dnsq_t *)arg;
  (void)m; (void)t;
  if (q->state != DNSQ_ENDING)
    return;
  dnsq_collect(q);
  dnsq_release(q);
  q->state = DNSQ_DONE;
  luasip_bridge("dns_resolved", &q->obj, NULL);   /* nothing of q is used after */
  if (!luasip_S->closing)
    luasip_unanchor(luasip_L(), &q->obj);
}

static void dnsq_ending(lsip_dnsq_t *q)
{
  if (q->state != DNSQ_RUNNING)
    return;
  q->state = DNSQ_ENDING;
  if (!q->timer || su_timer_set(q->timer, dnsq_end, (su_timer_arg_t *)q) < 0)
    luasip_log(1, "dns: cannot schedule the end of a query");
}

static void dnsq_notify(struct lsip_dnsq *q, sres_sip_t *srs, int final)
{
  (void)srs;
  if (final)
    dnsq_ending(q);
}

static void dnsq_destroy(lsip_obj_t *obj)
{
  lsip_dnsq_t *q = (lsip_dnsq_t *)obj;
  dnsq_release(q);    /* only lua_close collects a running query */
  luasip_freeobj(obj);
}

/* core.dns_resolve(uri [, agent]) -> query | nil, err, code */
int luasip_dns_resolve(lua_State *L)
{
  const char *uri = luaL_checkstring(L, 1);
  lsip_agent_t *a = lua_isnoneornil(L, 2) ? NULL
                    : (lsip_agent_t *)luasip_checkobj(L, 2, LUASIP_AGENT);
  const char *conf = luasip_dnsconf_path(a ? a->dnsconf : NULL);
  lsip_dnsq_t *q = luasip_newobj(L, sizeof *q, LUASIP_DNSQ, dnsq_destroy);
  q->state = DNSQ_DONE;
  q->sres = sres_resolver_create(luasip_S->root, conf, TAG_END());
  if (!q->sres)
    return luasip_fail(L, "cannot create a DNS resolver", "dns");
  q->timer = su_timer_create(su_root_task(luasip_S->root), 1);   /* 1 ms: 0 is refused */
  if (!q->timer) {
    dnsq_release(q);
    return luasip_fail(L, "cannot create a timer", "dns");
  }
  q->srs = sres_sip_new(q->sres, (url_string_t const *)uri, NULL, 1, 1, dnsq_notify, q);
  if (!q->srs) {
    dnsq_release(q);
    return luasip_fail(L, "cannot resolve this URI", "dns");
  }
  q->state = DNSQ_RUNNING;
  luasip_anchor(L, &q->obj, -1);
  /* a numeric host, a cached answer or a bad URI: complete already, no callback comes */
  if (!sres_sip_next_step(q->srs))
    dnsq_ending(q);
  return 1;
}

static const char *const dnsq_errors[] = {
  "", "internal error", "bad URI", "bad hints", "no such domain", "no records",
  "unknown transport", "no answer (permanent)", "no answer (try again)", "internal error"
};

/* q:results() -> { {address=, port=, transport=}... } | nil (running) | nil, err */
static int dnsq_results(lua_State *L)
{
  lsip_dnsq_t *q = (lsip_dnsq_t *)luasip_checkobj(L, 1, LUASIP_DNSQ);
  int i;
  if (q->state != DNSQ_DONE)
    return 0;
  if (q->n == 0) {
    int e = -q->error;
    lua_pushnil(L);
    lua_pushstring(L, e > 0 && e < (int)(sizeof dnsq_errors / sizeof *dnsq_errors)
                   ? dnsq_errors[e] : "no records");
    return 2;
  }
  lua_createtable(L, q->n, 0);
  for (i = 0; i < q->n; i++) {
    int p = q->r[i].proto;
    lua_createtable(L, 0, 3);
    lua_pushstring(L, q->r[i].addr);
    lua_setfield(L, -2, "address");
    lua_pushinteger(L, (lua_Integer)q->r[i].port);
    lua_setfield(L, -2, "port");
    lua_pushstring(L, p == TPPROTO_TLS ? "tls" : p == TPPROTO_TCP ? "tcp"
                   : p == TPPROTO_SCTP ? "sctp" : "udp");
    lua_setfield(L, -2, "transport");
    lua_rawseti(L, -2, i + 1);
  }
  return 1;
}

static const luaL_Reg dnsq_methods[] = {
  {"results", dnsq_results},
  {NULL, NULL}
};

void luasip_dns_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_DNSQ, dnsq_methods, NULL);
}
