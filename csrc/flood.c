/* SPDX-License-Identifier: MIT
 * The front door's per-source policy, before any Lua runs (csrc/agent.c calls
 * luasip_flood_check for each new request nta hands over: retransmissions never get
 * here).  A token bucket per source address (Kamailio's pike idea): `rate` requests per
 * second on average, bursts of `burst`; a source that empties its bucket is blocked for
 * `block` seconds, and stays blocked while it keeps sending faster than `rate`; its
 * requests are dropped (answering a flood feeds it) or answered with `status`.  Addresses
 * in `exempt` (CIDR prefixes) are never limited.  Also: requests whose User-Agent names a
 * well-known scanner are dropped (`scanners`), and messages with more than
 * `max_headers` header fields get 400.  The tables live in the agent's su_home.
 */
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "luasip.h"

#include <sofia-sip/msg_addr.h>
#include <sofia-sip/sip_status.h>
#include <sofia-sip/su_string.h>

#define BUCKETS 1024
#define MAX_SOURCES 65536
#define MAX_EXEMPT 32

typedef struct src {
  struct src *next;
  unsigned char addr[16];
  int family;
  double tokens, last, blocked_until;
} src_t;

typedef struct {
  int family, bits;
  unsigned char addr[16];
} prefix_t;

struct lsip_flood {
  double rate, burst, block;
  int status;                       /* 0: drop */
  char retry_after[16];
  int limit;                        /* the per-source limit is on */
  int scanners;                     /* drop scanner User-Agents */
  unsigned max_headers;             /* 0: no limit */
  prefix_t exempt[MAX_EXEMPT];
  int nexempt;
  src_t *table[BUCKETS];
  src_t *free_list;
  unsigned sources;
  unsigned long dropped, answered, blocks, scanner_drops, header_bombs;
};

/* the User-Agent substrings of well-known SIP scanners (lower case) */
static const char *const SCANNERS[] = {
  "friendly-scanner", "sipvicious", "sipcli", "sip-scan", "sipsak", "sundayddr",
  "iwar", "vaxsipuseragent", "pplsip", "sipscan", "sip auditor", "smap", "sipptk",
  "sipdrill", "cha0s", NULL
};

static double monotonic(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int addr_of(su_sockaddr_t const *su, unsigned char out[16])
{
  if (!su)
    return 0;
  if (su->su_family == AF_INET) {
    memcpy(out, &su->su_sin.sin_addr, 4);
    return AF_INET;
  }
#if SU_HAVE_IN6
  if (su->su_family == AF_INET6) {
    memcpy(out, &su->su_sin6.sin6_addr, 16);
    return AF_INET6;
  }
#endif
  return 0;
}

static unsigned hash_of(int family, const unsigned char *a)
{
  unsigned h = 2166136261u, i, n = family == AF_INET ? 4 : 16;
  for (i = 0; i < n; i++)
    h = (h ^ a[i]) * 16777619u;
  return h % BUCKETS;
}

static int in_prefix(prefix_t const *p, int family, const unsigned char *a)
{
  int full = p->bits / 8, rest = p->bits % 8;
  if (p->family != family)
    return 0;
  if (memcmp(p->addr, a, (size_t)full))
    return 0;
  return rest == 0 || ((p->addr[full] ^ a[full]) & (0xff << (8 - rest))) == 0;
}

/* A source's bucket; a stale entry on the way (idle long enough to be full again and not
 * blocked) is recycled. */
static src_t *source(lsip_agent_t *a, struct lsip_flood *f, int family,
                     const unsigned char *addr, double now)
{
  unsigned h = hash_of(family, addr);
  src_t **pp = &f->table[h], *s;
  double idle = f->burst / f->rate + f->block;
  while ((s = *pp) != NULL) {
    if (s->family == family && !memcmp(s->addr, addr, family == AF_INET ? 4 : 16))
      return s;
    if (now - s->last > idle && now >= s->blocked_until) {
      *pp = s->next;
      s->next = f->free_list;
      f->free_list = s;
      f->sources--;
      continue;
    }
    pp = &s->next;
  }
  if (f->sources >= MAX_SOURCES)
    return NULL;                    /* spoofed sources by the million: not tracked */
  if ((s = f->free_list) != NULL)
    f->free_list = s->next;
  else if (!(s = su_zalloc(a->home, sizeof *s)))
    return NULL;
  memset(s, 0, sizeof *s);
  s->family = family;
  memcpy(s->addr, addr, family == AF_INET ? 4 : 16);
  s->tokens = f->burst;
  s->last = now;
  s->next = f->table[h];
  f->table[h] = s;
  f->sources++;
  return s;
}

static void describe(int family, const unsigned char *addr, char *buf, size_t n)
{
  if (!inet_ntop(family, addr, buf, (socklen_t)n))
    snprintf(buf, n, "?");
}

/* 1 when over the per-source limit (the request is to be dropped or refused) */
static int over_limit(lsip_agent_t *a, struct lsip_flood *f, msg_t *msg)
{
  unsigned char addr[16];
  int family = addr_of(msg_addr(msg), addr), i;
  double now;
  src_t *s;
  if (!family)
    return 0;
  for (i = 0; i < f->nexempt; i++)
    if (in_prefix(&f->exempt[i], family, addr))
      return 0;
  now = monotonic();
  if (!(s = source(a, f, family, addr, now)))
    return 0;
  s->tokens += (now - s->last) * f->rate;
  if (s->tokens > f->burst)
    s->tokens = f->burst;
  s->last = now;
  if (now < s->blocked_until) {
    s->tokens -= 1;
    if (s->tokens < -f->burst)
      s->tokens = -f->burst;
    if (s->tokens < 0)              /* still faster than rate: the block goes on */
      s->blocked_until = now + f->block;
    return 1;
  }
  if (s->tokens >= 1) {
    s->tokens -= 1;
    return 0;
  }
  {
    char who[INET6_ADDRSTRLEN];
    describe(family, addr, who, sizeof who);
    luasip_log(2, "flood: %s sends more than %g requests/s: blocked for %g s", who, f->rate,
               f->block);
  }
  f->blocks++;
  s->blocked_until = now + f->block;
  return 1;
}

static int is_scanner(sip_t const *sip)
{
  char const *ua = sip->sip_user_agent ? sip->sip_user_agent->g_string : NULL;
  int i;
  if (!ua)
    return 0;
  for (i = 0; SCANNERS[i]; i++)
    if (su_strcasestr(ua, SCANNERS[i]))
      return 1;
  return 0;
}

static unsigned list_len(void const *first)
{
  msg_header_t const *h = first;
  unsigned n = 0;
  for (; h; h = h->sh_next)
    n++;
  return n;
}

/* the header fields of the kinds a message can repeat (any other known header appears
 * once: sofia files a second one under sip_error) */
static unsigned header_count(sip_t const *sip)
{
  return list_len(sip->sip_unknown) + list_len(sip->sip_error) + list_len(sip->sip_via) +
         list_len(sip->sip_route) + list_len(sip->sip_record_route) +
         list_len(sip->sip_contact) + list_len(sip->sip_path) + list_len(sip->sip_supported) +
         list_len(sip->sip_require) + list_len(sip->sip_proxy_require) +
         list_len(sip->sip_allow) + list_len(sip->sip_accept) +
         list_len(sip->sip_accept_encoding) + list_len(sip->sip_accept_language) +
         list_len(sip->sip_warning) + list_len(sip->sip_call_info) +
         list_len(sip->sip_error_info) +
         list_len(sip->sip_proxy_authorization) + list_len(sip->sip_authorization) + 16;
}

/* 1 when the request was taken care of here (dropped or answered); agent.c returns */
int luasip_flood_check(lsip_agent_t *a, nta_agent_t *nta, msg_t *msg, sip_t *sip)
{
  struct lsip_flood *f = a->flood;
  int ack;
  if (!f)
    return 0;
  ack = sip->sip_request->rq_method == sip_method_ack;
  if (f->max_headers && header_count(sip) > f->max_headers) {
    f->header_bombs++;
    if (ack) {
      luasip_counters.acks_dropped++;
      msg_destroy(msg);
    } else {
      luasip_count_reply(sip->sip_request->rq_method, 400);
      nta_msg_treply(nta, msg, 400, "Too Many Headers", TAG_END());
    }
    return 1;
  }
  if (f->scanners && is_scanner(sip)) {
    f->scanner_drops++;
    luasip_counters.scanners_dropped++;
    msg_destroy(msg);
    return 1;
  }
  if (f->limit && over_limit(a, f, msg)) {
    if (f->status && !ack) {
      f->answered++;
      luasip_count_reply(sip->sip_request->rq_method, f->status);
      nta_msg_treply(nta, msg, f->status, NULL,
                     SIPTAG_RETRY_AFTER_STR(f->status == 503 ? f->retry_after : NULL),
                     TAG_END());
    } else {
      f->dropped++;
      luasip_counters.flood_dropped++;
      msg_destroy(msg);
    }
    return 1;
  }
  return 0;
}

static int parse_prefix(const char *s, prefix_t *p)
{
  char host[INET6_ADDRSTRLEN + 1];
  const char *slash = strchr(s, '/');
  size_t n = slash ? (size_t)(slash - s) : strlen(s);
  int max;
  if (n == 0 || n >= sizeof host)
    return 0;
  memcpy(host, s, n);
  host[n] = '\0';
  if (inet_pton(AF_INET, host, p->addr) == 1)
    p->family = AF_INET, max = 32;
  else if (inet_pton(AF_INET6, host, p->addr) == 1)
    p->family = AF_INET6, max = 128;
  else
    return 0;
  p->bits = max;
  if (slash) {
    char *end;
    long b = strtol(slash + 1, &end, 10);
    if (*end || end == slash + 1 || b < 0 || b > max)
      return 0;
    p->bits = (int)b;
  }
  return 1;
}

static double num_field(lua_State *L, int idx, const char *k, double def, double lo, double hi,
                        const char *fname)
{
  double v = def;
  lua_getfield(L, idx, k);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) < lo || lua_tonumber(L, -1) > hi) {
      char range[64];
      snprintf(range, sizeof range, "%g-%g", lo, hi);    /* (lua_pushfstring has no %g) */
      luaL_error(L, "%s: flood.%s must be a number %s", fname, k, range);
    }
    v = lua_tonumber(L, -1);
  }
  lua_pop(L, 1);
  return v;
}

/* Reads the agent option `flood` at idx into a new policy in a's home: nil or false: none;
 * true: the defaults; a table { rate = 50, burst = 2 * rate, block = 30, status = false |
 * 503 | 403 ..., exempt = { "cidr", ... }, scanners = true, max_headers = 256 } (keys
 * checked by agent.lua). */
void luasip_flood_config(lua_State *L, int idx, lsip_agent_t *a, const char *fname)
{
  struct lsip_flood *f;
  int t = lua_type(L, idx);
  if (t == LUA_TNIL || (t == LUA_TBOOLEAN && !lua_toboolean(L, idx)))
    return;
  if (t != LUA_TBOOLEAN && t != LUA_TTABLE)
    luaL_error(L, "%s: flood must be true, false or a table", fname);
  if (!(f = su_zalloc(a->home, sizeof *f)))
    luaL_error(L, "%s: out of memory", fname);
  f->limit = 1;
  f->rate = 50;
  f->block = 30;
  f->scanners = 1;
  f->max_headers = 256;
  if (t == LUA_TTABLE) {
    f->rate = num_field(L, idx, "rate", f->rate, 0.1, 1e6, fname);
    f->burst = num_field(L, idx, "burst", 0, 1, 1e7, fname);
    f->block = num_field(L, idx, "block", f->block, 0.1, 86400, fname);
    f->max_headers = (unsigned)num_field(L, idx, "max_headers", f->max_headers, 0, 100000, fname);
    lua_getfield(L, idx, "limit");
    if (lua_isboolean(L, -1))
      f->limit = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "scanners");
    if (lua_isboolean(L, -1))
      f->scanners = lua_toboolean(L, -1);
    lua_pop(L, 1);
    lua_getfield(L, idx, "status");
    if (lua_type(L, -1) == LUA_TNUMBER) {
      double st = lua_tonumber(L, -1);
      if (st < 400 || st > 699 || st != (int)st)
        luaL_error(L, "%s: flood.status must be a status 400-699 or false", fname);
      f->status = (int)st;
    } else if (!lua_isnil(L, -1) && !(lua_isboolean(L, -1) && !lua_toboolean(L, -1))) {
      luaL_error(L, "%s: flood.status must be a status 400-699 or false", fname);
    }
    lua_pop(L, 1);
    lua_getfield(L, idx, "exempt");
    if (lua_istable(L, -1)) {
      int i, n = (int)luasip_rawlen(L, -1);
      if (n > MAX_EXEMPT)
        luaL_error(L, "%s: flood.exempt: at most %d prefixes", fname, MAX_EXEMPT);
      for (i = 1; i <= n; i++) {
        lua_rawgeti(L, -1, i);
        if (!lua_isstring(L, -1) || !parse_prefix(lua_tostring(L, -1), &f->exempt[f->nexempt]))
          luaL_error(L, "%s: flood.exempt[%d] must be an address or a CIDR prefix", fname, i);
        f->nexempt++;
        lua_pop(L, 1);
      }
    } else if (!lua_isnil(L, -1)) {
      luaL_error(L, "%s: flood.exempt must be a list of addresses or CIDR prefixes", fname);
    }
    lua_pop(L, 1);
  }
  if (f->burst < 1)
    f->burst = 2 * f->rate < 1 ? 1 : 2 * f->rate;
  snprintf(f->retry_after, sizeof f->retry_after, "%.0f", f->block);
  a->flood = f;
}

/* agent:flood() -> { blocked_sources, sources, dropped, answered, blocks, scanners,
 * header_bombs } | nil (no policy) */
int luasip_flood_stats(lua_State *L, lsip_agent_t *a)
{
  struct lsip_flood *f = a->flood;
  double now = monotonic();
  unsigned blocked = 0, i;
  src_t *s;
  if (!f) {
    lua_pushnil(L);
    return 1;
  }
  for (i = 0; i < BUCKETS; i++)
    for (s = f->table[i]; s; s = s->next)
      if (now < s->blocked_until)
        blocked++;
  lua_createtable(L, 0, 8);
  lua_pushnumber(L, blocked);
  lua_setfield(L, -2, "blocked_sources");
  lua_pushnumber(L, f->sources);
  lua_setfield(L, -2, "sources");
  lua_pushnumber(L, (lua_Number)f->dropped);
  lua_setfield(L, -2, "dropped");
  lua_pushnumber(L, (lua_Number)f->answered);
  lua_setfield(L, -2, "answered");
  lua_pushnumber(L, (lua_Number)f->blocks);
  lua_setfield(L, -2, "blocks");
  lua_pushnumber(L, (lua_Number)f->scanner_drops);
  lua_setfield(L, -2, "scanners");
  lua_pushnumber(L, (lua_Number)f->header_bombs);
  lua_setfield(L, -2, "header_bombs");
  return 1;
}
