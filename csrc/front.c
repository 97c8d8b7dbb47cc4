/* SPDX-License-Identifier: MIT
 * agent:spread -- the stateless front of luasip.cluster, in C.  Every request that comes
 * to an agent with a spread table goes, without any Lua and without a transaction, to
 * the next hop of its Call-ID's hash slot (stateless forwarding, RFC 3261 16.11:
 * luasip_forward in proxy.c), so that a CANCEL, the ACK of a non-2xx and any request of
 * a call reach the worker that has its INVITE or dialog.  The responses come back through
 * the front's Via and go on in C too (luasip_proxy_stray).  Lua keeps the policy: it
 * sets the table again whenever a worker goes in or out of rotation (a slot whose worker
 * is down names the next live one, or none) and when the front drains.
 * A slot with no worker: 503 + Retry-After (an ACK is dropped).  Draining: new initial
 * requests (no To tag; not ACK or CANCEL) get 503 + Retry-After, the others still go.
 * Max-Forwards 0: 483.  The table lives in the agent's su_home.
 */
#include <stdint.h>
#include <string.h>

#include "luasip.h"

#include <sofia-sip/sip_status.h>

#define SPREAD_MAX 64
#define SPREAD_RETRY "5"

typedef struct lsip_spread {
  int n;                          /* hash slots */
  char *hops[SPREAD_MAX];         /* per slot: the next hop, NULL: no worker */
  int draining;
  unsigned long long forwarded, refused, dropped;
} lsip_spread_t;

/* The slot hash of a Call-ID (luasip.cluster.hash is this function) */
unsigned long luasip_spread_hash(const char *s)
{
  uint64_t h = 5381;
  for (; s && *s; s++)
    h = (h * 33 + (unsigned char)*s) % 2147483647u;
  return (unsigned long)h;
}

static void spread_refuse(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_method_t m,
                          int status, const char *phrase)
{
  lsip_spread_t *s = a->spread;
  if (m == sip_method_ack) {      /* never answered */
    s->dropped++;
    luasip_counters.acks_dropped++;
    msg_destroy(msg);
    return;
  }
  s->refused++;
  luasip_count_reply(m, status);
  nta_msg_treply(nta, msg, status, phrase,
                 TAG_IF(status == 503, SIPTAG_RETRY_AFTER_STR(SPREAD_RETRY)),
                 SIPTAG_SERVER_STR(a->user_agent), TAG_END());
}

/* 1 when the agent spreads requests and msg (a well-formed request) went its way */
int luasip_spread(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  lsip_spread_t *s = a->spread;
  sip_method_t m = sip->sip_request->rq_method;
  const char *hop, *why = NULL, *code = NULL;
  int rc;
  if (!s)
    return 0;
  if (s->draining && !(sip->sip_to && sip->sip_to->a_tag) && m != sip_method_ack &&
      m != sip_method_cancel) {
    spread_refuse(a, nta, msg, m, 503, "Service Unavailable");
    return 1;
  }
  hop = s->hops[luasip_spread_hash(sip->sip_call_id ? sip->sip_call_id->i_id : "") % s->n];
  if (!hop) {
    spread_refuse(a, nta, msg, m, 503, "Service Unavailable");
    return 1;
  }
  if (sip->sip_max_forwards && sip->sip_max_forwards->mf_count == 0) {
    spread_refuse(a, nta, msg, m, 483, "Too Many Hops");   /* luasip_forward would drop it */
    return 1;
  }
  rc = luasip_forward(a, msg, NULL, hop, &why, &code);
  if (rc == 0) {
    s->forwarded++;
  } else {
    s->dropped++;
    luasip_log_call(2 /* warning */, sip, "front: forward to %s failed: %s", hop,
                    why ? why : "?");
  }
  return 1;
}

/* agent:spread(slots [, { draining = bool }]) -> true: every request from now on goes to
 * slots[hash(Call-ID) % #slots + 1] (a URI, or false: 503), none reaches Lua;
 * agent:spread(false) -> true: off (requests go to the handlers again);
 * agent:spread() -> { slots =, draining =, forwarded =, refused =, dropped = } | nil */
static int agent_spread(lua_State *L)
{
  lsip_agent_t *a = luasip_agent_check(L, 1);
  lsip_spread_t *s = a->spread, fresh;
  const char *fname = "luasip.agent:spread";
  int i, n;
  if (lua_isnone(L, 2)) {
    if (!s) {
      lua_pushnil(L);
      return 1;
    }
    lua_createtable(L, 0, 5);
    lua_pushinteger(L, s->n);
    lua_setfield(L, -2, "slots");
    lua_pushboolean(L, s->draining);
    lua_setfield(L, -2, "draining");
    lua_pushnumber(L, (lua_Number)s->forwarded);
    lua_setfield(L, -2, "forwarded");
    lua_pushnumber(L, (lua_Number)s->refused);
    lua_setfield(L, -2, "refused");
    lua_pushnumber(L, (lua_Number)s->dropped);
    lua_setfield(L, -2, "dropped");
    return 1;
  }
  if (lua_isboolean(L, 2) && !lua_toboolean(L, 2)) {
    if (s) {
      for (i = 0; i < s->n; i++)
        su_free(a->home, s->hops[i]);
      su_free(a->home, s);
      a->spread = NULL;
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  luaL_checktype(L, 2, LUA_TTABLE);
  if (!lua_isnoneornil(L, 3))
    luaL_checktype(L, 3, LUA_TTABLE);
  n = (int)luasip_rawlen(L, 2);
  if (n < 1 || n > SPREAD_MAX)
    return luaL_error(L, "%s: 1-%d slots expected", fname, SPREAD_MAX);
  memset(&fresh, 0, sizeof fresh);
  fresh.n = n;
  /* check every slot before anything changes */
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1);
    if (!(lua_isboolean(L, -1) && !lua_toboolean(L, -1)))
      luasip_uri_arg(L, -1, fname);
    lua_pop(L, 1);
  }
  if (lua_istable(L, 3)) {
    lua_getfield(L, 3, "draining");
    fresh.draining = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (!s) {
    s = su_zalloc(a->home, sizeof *s);
    if (!s)
      return luaL_error(L, "%s: out of memory", fname);
    a->spread = s;
  } else {
    fresh.forwarded = s->forwarded, fresh.refused = s->refused, fresh.dropped = s->dropped;
    for (i = 0; i < s->n; i++)
      su_free(a->home, s->hops[i]);
  }
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, 2, i + 1);
    fresh.hops[i] = lua_type(L, -1) == LUA_TSTRING ? su_strdup(a->home, lua_tostring(L, -1))
                                                    : NULL;
    lua_pop(L, 1);
  }
  *s = fresh;
  lua_pushboolean(L, 1);
  return 1;
}

static const luaL_Reg front_methods[] = {
  {"spread", agent_spread},
  {NULL, NULL}
};

void luasip_front_open(lua_State *L)
{
  luasip_add_methods(L, LUASIP_AGENT, front_methods);
}
