/* SPDX-License-Identifier: MIT
 * SIP URI helpers of the location service (RFC 3261 10.3 step 5 and 19.1.4) in C:
 * core.uri_parse, core.uri_aor and core.uri_equal, the contract of luasip.location's
 * parse_uri, aor and uri_equal (lua/luasip/location.lua documents it).  A REGISTER parses
 * its To, From and every Contact; doing it with Lua patterns was a sixth of a digest
 * REGISTER's Lua work.  No sofia objects: the string is split in place, and the parts that
 * are compared or handed out are unescaped (%HH) and, but for the user part and header
 * values, lowercased into one scratch buffer as long as the URI.
 */
#include <ctype.h>
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasip.h"

#define URI_MAX_PARAMS 64           /* parameters and headers each; more: not a URI here */
#define URI_STACK 512               /* scratch on the stack up to this length */

typedef struct {
  const char *p;
  size_t n;
} slice_t;

typedef struct {
  slice_t k, v;
  int flag;                         /* a parameter without '=' (value true) */
} pair_t;

typedef struct {
  slice_t scheme;                   /* lowercased */
  int sip;                          /* sip: or sips: */
  slice_t opaque;                   /* not sip: the rest, unescaped, lowercased */
  int has_user, has_password, has_port;
  slice_t user, password, host;     /* user/password unescaped; host also lowercased */
  slice_t port;                     /* its digits, no leading zero */
  int nparams, nheaders;
  pair_t params[URI_MAX_PARAMS];    /* names and values lowercased */
  pair_t headers[URI_MAX_PARAMS];   /* names lowercased */
} uri_t;

typedef struct {
  char *buf;                        /* scratch: every decoded part, at most the URI's length */
  size_t used;
} scratch_t;

static int hexval(int c)
{
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

/* unescape (%HH -> byte) and optionally lowercase s..s+n into the scratch */
static slice_t decode(scratch_t *sc, const char *s, size_t n, int lower)
{
  char *out = sc->buf + sc->used;
  size_t i, o = 0;
  slice_t r;
  for (i = 0; i < n; i++) {
    int c = (unsigned char)s[i];
    if (c == '%' && i + 2 < n && hexval(s[i + 1]) >= 0 && hexval(s[i + 2]) >= 0) {
      c = hexval(s[i + 1]) * 16 + hexval(s[i + 2]);
      i += 2;
    }
    out[o++] = (char)(lower ? tolower(c) : c);
  }
  sc->used += o;
  r.p = out;
  r.n = o;
  return r;
}

static const char *find(const char *s, const char *e, int c)
{
  const char *f = memchr(s, c, (size_t)(e - s));
  return f ? f : e;
}

/* first of any of the characters of set in s..e, or e */
static const char *find_any(const char *s, const char *e, const char *set)
{
  for (; s < e; s++)
    if (strchr(set, *s) && *s)
      return s;
  return e;
}

static int add_pair(pair_t *list, int *count, scratch_t *sc, const char *s, const char *e,
                    int lower_value)
{
  const char *eq = find(s, e, '=');
  pair_t *pr;
  if (*count >= URI_MAX_PARAMS)
    return 0;
  pr = &list[(*count)++];
  pr->k = decode(sc, s, (size_t)(eq - s), 1);
  if (eq < e) {
    pr->v = decode(sc, eq + 1, (size_t)(e - eq - 1), lower_value);
    pr->flag = 0;
  } else {
    pr->v.p = "";
    pr->v.n = 0;
    pr->flag = lower_value;         /* a parameter without a value is true; a header's is "" */
  }
  return 1;
}

/* the sep-separated pairs of s..e (empty ones skipped); 0: more than URI_MAX_PARAMS */
static int add_pairs(pair_t *list, int *count, scratch_t *sc, const char *s, const char *e,
                     int sep, int lower_value)
{
  while (s < e) {
    const char *f;
    while (s < e && *s == sep) s++;
    if (s >= e) break;
    f = find(s, e, sep);
    if (!add_pair(list, count, sc, s, f, lower_value)) return 0;
    s = f;
  }
  return 1;
}

/* parse s (len n) into u; NULL or why not */
static const char *parse(const char *s, size_t n, uri_t *u, scratch_t *sc)
{
  const char *b = s, *e = s + n, *colon, *at, *p, *q;
  memset(u, 0, offsetof(uri_t, params));
  /* ^%s*<?(.-)>?%s*$ */
  while (b < e && isspace((unsigned char)*b)) b++;
  if (b < e && *b == '<') b++;
  while (e > b && isspace((unsigned char)e[-1])) e--;
  if (e > b && e[-1] == '>') e--;
  /* ^([%a][%w%+%-%.]*):(.+)$ */
  if (b >= e || !isalpha((unsigned char)*b)) return "not a URI";
  for (p = b + 1; p < e && (isalnum((unsigned char)*p) || *p == '+' || *p == '-' || *p == '.');)
    p++;
  if (p >= e || *p != ':' || p + 1 >= e) return "not a URI";
  colon = p;
  u->scheme = decode(sc, b, (size_t)(colon - b), 1);   /* no '%' in a scheme: lowercase */
  u->sip = (u->scheme.n == 3 && !memcmp(u->scheme.p, "sip", 3))
           || (u->scheme.n == 4 && !memcmp(u->scheme.p, "sips", 4));
  b = colon + 1;
  if (!u->sip) {
    u->opaque = decode(sc, b, (size_t)(e - b), 1);
    return NULL;
  }
  at = find(b, e, '@');
  if (at < e) {
    const char *pc = find(b, at, ':');
    u->has_user = 1;
    u->user = decode(sc, b, (size_t)(pc - b), 0);
    if (pc < at) {
      u->has_password = 1;
      u->password = decode(sc, pc + 1, (size_t)(at - pc - 1), 0);
    }
    b = at + 1;
  }
  if (b < e && *b == '[') {
    p = find(b, e, ']');
    if (p >= e) return "no host in URI";
    p++;
  } else {
    p = find_any(b, e, ":;?");
  }
  if (p == b) return "no host in URI";
  u->host = decode(sc, b, (size_t)(p - b), 1);
  /* ^:?(%d*)(.*)$ */
  if (p < e && *p == ':') p++;
  q = p;
  while (q < e && isdigit((unsigned char)*q)) q++;
  if (q > p) {
    u->has_port = 1;
    while (p < q - 1 && *p == '0') p++;   /* compared as numbers: no leading zeros */
    u->port.p = p;
    u->port.n = (size_t)(q - p);
  }
  p = q;
  /* ^([^%?]*)%??(.*)$, the parameters starting with ';' */
  q = find(p, e, '?');
  if (q > p && *p != ';') return "bad URI after host";
  if (!add_pairs(u->params, &u->nparams, sc, p, q, ';', 1)) return "too many URI parameters";
  if (q < e && !add_pairs(u->headers, &u->nheaders, sc, q + 1, e, '&', 0))
    return "too many URI headers";
  return NULL;
}

static int slice_eq(slice_t a, slice_t b)
{
  return a.n == b.n && (a.n == 0 || !memcmp(a.p, b.p, a.n));
}

/* the last pair named k (a name given twice: the last one counts, as in a Lua table) */
static const pair_t *lookup(const pair_t *list, int count, slice_t k)
{
  int i;
  for (i = count - 1; i >= 0; i--)
    if (slice_eq(list[i].k, k))
      return &list[i];
  return NULL;
}

/* a state for parse: the scratch on the stack, or a userdata for a long URI */
typedef struct {
  char stack[URI_STACK];
  uri_t u;
} work_t;

static const char *parse_arg(lua_State *L, int arg, work_t *w, uri_t *u)
{
  size_t n;
  const char *s = luaL_checklstring(L, arg, &n);
  scratch_t sc;
  sc.buf = n <= URI_STACK ? w->stack : (char *)lua_newuserdata(L, n);
  sc.used = 0;
  return parse(s, n, u, &sc);
}

static void push_slice(lua_State *L, slice_t s)
{
  lua_pushlstring(L, s.p, s.n);
}

/* pushes the port as tonumber would (an integer where the Lua has them) */
static void push_port(lua_State *L, slice_t port)
{
  char digits[512];
  size_t i;
  lua_Integer v = 0;
  if (port.n <= 15) {
    for (i = 0; i < port.n; i++) v = v * 10 + (port.p[i] - '0');
    lua_pushinteger(L, v);
    return;
  }
  if (port.n >= sizeof digits) {
    lua_pushnumber(L, HUGE_VAL);
    return;
  }
  memcpy(digits, port.p, port.n);
  digits[port.n] = '\0';
  luasip_pushnumeral(L, digits);
}

static void push_pairs(lua_State *L, const pair_t *list, int count)
{
  int i;
  lua_createtable(L, 0, count);
  for (i = 0; i < count; i++) {
    push_slice(L, list[i].k);
    if (list[i].flag)
      lua_pushboolean(L, 1);
    else
      push_slice(L, list[i].v);
    lua_rawset(L, -3);
  }
}

/* uri_parse(s) -> { scheme, user, password, host, port, params, headers } | { scheme,
 * opaque } | nil, why */
int luasip_uri_parse(lua_State *L)
{
  work_t w;                         /* ~5 KB of C stack: no allocation to leak on an error */
  uri_t *u = &w.u;
  const char *why = parse_arg(L, 1, &w, u);
  if (why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  lua_settop(L, 2);                 /* keeps the scratch userdata of a long URI, if any */
  lua_createtable(L, 0, 7);
  push_slice(L, u->scheme);
  lua_setfield(L, -2, "scheme");
  if (!u->sip) {
    push_slice(L, u->opaque);
    lua_setfield(L, -2, "opaque");
    return 1;
  }
  if (u->has_user) {
    push_slice(L, u->user);
    lua_setfield(L, -2, "user");
  }
  if (u->has_password) {
    push_slice(L, u->password);
    lua_setfield(L, -2, "password");
  }
  push_slice(L, u->host);
  lua_setfield(L, -2, "host");
  if (u->has_port) {
    push_port(L, u->port);
    lua_setfield(L, -2, "port");
  }
  push_pairs(L, u->params, u->nparams);
  lua_setfield(L, -2, "params");
  push_pairs(L, u->headers, u->nheaders);
  lua_setfield(L, -2, "headers");
  return 1;
}

/* uri_user(s) -> the user part of a sip:/sips: URI, unescaped, or nil (no user, another
 * scheme, not a URI): uri_parse(s).user without the table */
int luasip_uri_user(lua_State *L)
{
  work_t w;
  const char *why = parse_arg(L, 1, &w, &w.u);
  if (why || !w.u.sip || !w.u.has_user)
    lua_pushnil(L);
  else
    push_slice(L, w.u.user);
  return 1;
}

/* characters a user part keeps unescaped in the canonical AOR (RFC 3261 25.1) */
static int user_plain(int c)
{
  return isalnum(c) || (c && strchr("-_.!~*'()&=+$,;?/", c));
}

/* uri_aor(s) -> canonical AOR "scheme:user@host[:port]" | nil, why (10.3 step 5) */
int luasip_uri_aor(lua_State *L)
{
  work_t w;
  luaL_Buffer b;
  size_t i;
  const char *why = parse_arg(L, 1, &w, &w.u);
  uri_t *u = &w.u;
  if (why) {
    lua_pushnil(L);
    lua_pushstring(L, why);
    return 2;
  }
  if (!u->sip) {
    lua_pushnil(L);
    lua_pushliteral(L, "an address-of-record must be a sip: or sips: URI");
    return 2;
  }
  luaL_buffinit(L, &b);
  luaL_addlstring(&b, u->scheme.p, u->scheme.n);
  luaL_addchar(&b, ':');
  if (u->has_user && u->user.n > 0) {
    for (i = 0; i < u->user.n; i++) {
      unsigned char c = (unsigned char)u->user.p[i];
      if (user_plain(c)) {
        luaL_addchar(&b, (char)c);
      } else {
        char hex[4];
        snprintf(hex, sizeof hex, "%%%02X", c);
        luaL_addlstring(&b, hex, 3);
      }
    }
    luaL_addchar(&b, '@');
  }
  luaL_addlstring(&b, u->host.p, u->host.n);
  if (u->has_port) {
    luaL_addchar(&b, ':');
    push_port(L, u->port);
    luaL_addvalue(&b);
  }
  luaL_pushresult(&b);
  return 1;
}

static int never_matches_alone(slice_t k)
{
  return (k.n == 4 && !memcmp(k.p, "user", 4))
         || (k.n == 3 && !memcmp(k.p, "ttl", 3)) || (k.n == 6 && !memcmp(k.p, "method", 6))
         || (k.n == 5 && !memcmp(k.p, "maddr", 5));
}

static int pair_value_eq(const pair_t *a, const pair_t *b)
{
  return a->flag == b->flag && (a->flag || slice_eq(a->v, b->v));
}

/* the parameters of x that y lacks or has otherwise (19.1.4: user, ttl, method and maddr
 * must be in both; other parameters only when in both) */
static int params_differ(const uri_t *x, const uri_t *y)
{
  int i;
  for (i = 0; i < x->nparams; i++) {
    const pair_t *a = lookup(x->params, x->nparams, x->params[i].k), *b;
    if (a != &x->params[i]) continue;   /* not the last of its name */
    b = lookup(y->params, y->nparams, a->k);
    if (!b ? never_matches_alone(a->k) : !pair_value_eq(a, b)) return 1;
  }
  return 0;
}

static int headers_differ(const uri_t *x, const uri_t *y)
{
  int i;
  for (i = 0; i < x->nheaders; i++) {
    const pair_t *a = lookup(x->headers, x->nheaders, x->headers[i].k), *b;
    if (a != &x->headers[i]) continue;
    b = lookup(y->headers, y->nheaders, a->k);
    if (!b || !slice_eq(a->v, b->v)) return 1;
  }
  return 0;
}

static int uris_equal(const uri_t *x, const uri_t *y)
{
  if (!slice_eq(x->scheme, y->scheme)) return 0;
  if (!x->sip || !y->sip) return !x->sip && !y->sip && slice_eq(x->opaque, y->opaque);
  if (x->has_user != y->has_user || (x->has_user && !slice_eq(x->user, y->user))) return 0;
  if (x->has_password != y->has_password
      || (x->has_password && !slice_eq(x->password, y->password)))
    return 0;
  if (!slice_eq(x->host, y->host)) return 0;
  if (x->has_port != y->has_port || (x->has_port && !slice_eq(x->port, y->port))) return 0;
  return !params_differ(x, y) && !params_differ(y, x) && !headers_differ(x, y)
         && !headers_differ(y, x);
}

/* uri_equal(a, b) -> boolean (19.1.4); what is not a URI string equals only itself */
int luasip_uri_equal(lua_State *L)
{
  work_t w[2];
  lua_settop(L, 2);
  if (lua_type(L, 1) != LUA_TSTRING || lua_type(L, 2) != LUA_TSTRING
      || parse_arg(L, 1, &w[0], &w[0].u) || parse_arg(L, 2, &w[1], &w[1].u))
    lua_pushboolean(L, lua_rawequal(L, 1, 2));
  else
    lua_pushboolean(L, uris_equal(&w[0].u, &w[1].u));
  return 1;
}
