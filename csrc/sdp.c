/* SPDX-License-Identifier: MIT
 * SDP (RFC 8866) parse and build in C: core.sdp_parse and core.sdp_build, the contract of
 * luasip.sdp.parse and luasip.sdp.build (lua/luasip/sdp.lua documents the tables).  Every
 * INVITE with an offer is parsed and answered; doing it with Lua patterns was ~half of a
 * UAS call's Lua work.  The tables are the ones the Lua code made, field for field (a
 * differential fuzz against it is the proof: spec/sdp_spec.lua keeps the Lua version as
 * its reference); the offer/answer logic stays in Lua, on these tables.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "luasip.h"

typedef struct {
  const char *p;
  size_t n;
} span_t;

/* the C locale's classes, as Lua's %s %d %a %w see them */
static int sp(int c) { return c == ' ' || (c >= '\t' && c <= '\r'); }
static int dg(int c) { return c >= '0' && c <= '9'; }
static int al(int c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

static int span_is(span_t s, const char *lit)
{
  size_t n = strlen(lit);
  return s.n == n && memcmp(s.p, lit, n) == 0;
}

/* the next whitespace-separated word of *s..e (Lua's %S+), 0 when there is none */
static int word(const char **s, const char *e, span_t *w)
{
  const char *p = *s;
  while (p < e && sp((unsigned char)*p)) p++;
  if (p >= e) {
    *s = e;
    return 0;
  }
  w->p = p;
  while (p < e && !sp((unsigned char)*p)) p++;
  w->n = (size_t)(p - w->p);
  *s = p;
  return 1;
}

/* the words of v into out (at most max); the number of words, all of them */
static size_t words(span_t v, span_t *out, size_t max)
{
  const char *s = v.p, *e = v.p + v.n;
  span_t w;
  size_t n = 0;
  while (word(&s, e, &w)) {
    if (n < max) out[n] = w;
    n++;
  }
  return n;
}

/* ^%d+$ */
static int is_uint(span_t s)
{
  size_t i;
  if (s.n == 0) return 0;
  for (i = 0; i < s.n; i++)
    if (!dg((unsigned char)s.p[i])) return 0;
  return 1;
}

/* ^%-?%d+[dhms]?$ */
static int is_typed_time(span_t s)
{
  size_t i = 0, d;
  if (i < s.n && s.p[i] == '-') i++;
  for (d = i; i < s.n && dg((unsigned char)s.p[i]); i++) {}
  if (i == d) return 0;
  if (i < s.n && strchr("dhms", s.p[i]) && s.p[i]) i++;
  return i == s.n;
}

/* pushes tonumber(s) (nil when it is not a number); 1 when it pushed a number */
static int push_tonumber(lua_State *L, span_t s)
{
  lua_pushlstring(L, s.p, s.n);
#if LUA_VERSION_NUM >= 503
  if (!lua_stringtonumber(L, lua_tostring(L, -1))) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  lua_remove(L, -2);
  return 1;
#else
  if (!lua_isnumber(L, -1)) {
    lua_pop(L, 1);
    lua_pushnil(L);
    return 0;
  }
  {
    lua_Number n = lua_tonumber(L, -1);
    lua_pop(L, 1);
    lua_pushnumber(L, n);
  }
  return 1;
#endif
}

static void set_span(lua_State *L, int t, const char *k, span_t v)
{
  lua_pushlstring(L, v.p, v.n);
  lua_setfield(L, t, k);
}

/* t[k] = tonumber(v), nothing when v is "" (tonumber("") is nil) */
static void set_number(lua_State *L, int t, const char *k, span_t v)
{
  if (v.n == 0) return;
  push_tonumber(L, v);
  lua_setfield(L, t, k);
}

/* t[k] = v the first time (*seen), else the error "second ..." */
static const char *set_once(lua_State *L, int t, const char *k, span_t v, int *seen,
                            const char *again)
{
  if (*seen) return again;
  set_span(L, t, k, v);
  *seen = 1;
  return NULL;
}

/* appends the value on top of the stack to the list in field k of table t */
static void append(lua_State *L, int t, const char *k, int *count)
{
  lua_getfield(L, t, k);
  lua_insert(L, -2);
  lua_rawseti(L, -2, ++*count);
  lua_pop(L, 1);
}

static void new_list(lua_State *L, int t, const char *k)
{
  lua_newtable(L);
  lua_setfield(L, t, k);
}

static int is_direction(span_t s)
{
  return span_is(s, "sendrecv") || span_is(s, "sendonly") || span_is(s, "recvonly") ||
         span_is(s, "inactive");
}

typedef struct {
  int info, connection, key;        /* seen in the current description */
  int attributes, bandwidths;       /* list lengths of the current description */
  int direction;                    /* a media a=<direction> seen */
} desc_t;

/* c=: pushes the connection table, or NULL and why not */
static const char *connection(lua_State *L, span_t v)
{
  span_t f[4], addr, a = {"", 0}, b = {"", 0};
  const char *s1, *s2, *e;
  int top;
  if (words(v, f, 4) != 3) return "c= needs <nettype> <addrtype> <address>";
  /* ^([^/]+)/?([^/]*)/?([^/]*)$: at most two slashes, a non-empty address */
  e = f[2].p + f[2].n;
  s1 = memchr(f[2].p, '/', f[2].n);
  if (s1 == f[2].p) return "bad c= address";
  addr.p = f[2].p;
  addr.n = s1 ? (size_t)(s1 - f[2].p) : f[2].n;
  if (s1) {
    s2 = memchr(s1 + 1, '/', (size_t)(e - s1 - 1));
    if (s2 && memchr(s2 + 1, '/', (size_t)(e - s2 - 1))) return "bad c= address";
    a.p = s1 + 1;
    a.n = (size_t)((s2 ? s2 : e) - a.p);
    if (s2) {
      b.p = s2 + 1;
      b.n = (size_t)(e - b.p);
    }
  }
  if (a.n > 0) {
    if (!is_uint(a) || (b.n > 0 && !is_uint(b))) return "bad c= address suffix";
    if (f[1].n == 3 && (f[1].p[0] | 0x20) == 'i' && (f[1].p[1] | 0x20) == 'p' && f[1].p[2] == '6') {
      if (b.n > 0) return "IP6 c= address takes only /<count>";
    }
  }
  lua_createtable(L, 0, 5);
  top = lua_gettop(L);
  set_span(L, top, "nettype", f[0]);
  set_span(L, top, "addrtype", f[1]);
  set_span(L, top, "address", addr);
  if (a.n > 0) {
    if (f[1].n == 3 && (f[1].p[0] | 0x20) == 'i' && (f[1].p[1] | 0x20) == 'p' && f[1].p[2] == '6') {
      set_number(L, top, "count", a);
    } else {
      set_number(L, top, "ttl", a);
      set_number(L, top, "count", b);
    }
  }
  return NULL;
}

/* b=: ^([%w%-_%.!%%%*%+`'~]+):(%d+)$ */
static const char *bandwidth(lua_State *L, span_t v)
{
  size_t i = 0;
  span_t t, n;
  while (i < v.n) {
    int c = (unsigned char)v.p[i];
    if (!(al(c) || dg(c) || (c && strchr("-_.!%*+`'~", c)))) break;
    i++;
  }
  if (i == 0 || i >= v.n || v.p[i] != ':') return "b= needs <bwtype>:<bandwidth>";
  t.p = v.p;
  t.n = i;
  n.p = v.p + i + 1;
  n.n = v.n - i - 1;
  if (!is_uint(n)) return "b= needs <bwtype>:<bandwidth>";
  lua_createtable(L, 0, 2);
  set_span(L, lua_gettop(L), "type", t);
  set_number(L, lua_gettop(L), "bandwidth", n);
  return NULL;
}

/* o=: pushes the origin table, or NULL and why not */
static const char *origin(lua_State *L, span_t v)
{
  span_t f[7];
  int top;
  if (words(v, f, 7) != 6) return "o= needs 6 fields";
  if (!is_uint(f[1]) || !is_uint(f[2])) return "o= sess-id and sess-version must be numbers";
  lua_createtable(L, 0, 6);
  top = lua_gettop(L);
  set_span(L, top, "username", f[0]);
  set_span(L, top, "sess_id", f[1]);
  set_span(L, top, "sess_version", f[2]);
  set_span(L, top, "nettype", f[3]);
  set_span(L, top, "addrtype", f[4]);
  set_span(L, top, "address", f[5]);
  return NULL;
}

/* the a= lines that have their own fields in the media table at m: 1 handled, 0 a plain
 * attribute, -1 an error (*why) */
static int media_attribute(lua_State *L, int m, desc_t *d, span_t name, span_t value,
                           int has_value, const char **why)
{
  const char *p = value.p, *e = value.p + value.n;
  if (span_is(name, "rtpmap")) {
    /* ^(%S+)%s+([^/%s]+)/(%d+)/?(%d*)%s*$; a malformed one stays a plain attribute */
    span_t pt, enc, rate, ch = {"", 0};
    if (!has_value || p >= e || sp((unsigned char)*p)) return 0;
    pt.p = p;
    while (p < e && !sp((unsigned char)*p)) p++;
    pt.n = (size_t)(p - pt.p);
    if (p >= e) return 0;
    while (p < e && sp((unsigned char)*p)) p++;
    enc.p = p;
    while (p < e && *p != '/' && !sp((unsigned char)*p)) p++;
    enc.n = (size_t)(p - enc.p);
    if (enc.n == 0 || p >= e || *p != '/') return 0;
    rate.p = ++p;
    while (p < e && dg((unsigned char)*p)) p++;
    rate.n = (size_t)(p - rate.p);
    if (rate.n == 0) return 0;
    if (p < e && *p == '/') {
      ch.p = ++p;
      while (p < e && dg((unsigned char)*p)) p++;
      ch.n = (size_t)(p - ch.p);
    }
    while (p < e && sp((unsigned char)*p)) p++;
    if (p != e) return 0;
    lua_getfield(L, m, "rtpmap");
    lua_pushlstring(L, pt.p, pt.n);
    lua_createtable(L, 0, 3);
    set_span(L, lua_gettop(L), "encoding", enc);
    set_number(L, lua_gettop(L), "clock_rate", rate);
    set_number(L, lua_gettop(L), "channels", ch);
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return 1;
  }
  if (span_is(name, "fmtp")) {
    /* ^(%S+)%s+(.-)%s*$, else ^(%S+)$ with "" */
    span_t pt;
    if (!has_value || p >= e || sp((unsigned char)*p)) {
      *why = "a=fmtp needs <format> <parameters>";
      return -1;
    }
    pt.p = p;
    while (p < e && !sp((unsigned char)*p)) p++;
    pt.n = (size_t)(p - pt.p);
    while (p < e && sp((unsigned char)*p)) p++;
    while (e > p && sp((unsigned char)e[-1])) e--;
    lua_getfield(L, m, "fmtp");
    lua_pushlstring(L, pt.p, pt.n);
    lua_pushlstring(L, p, (size_t)(e - p));
    lua_rawset(L, -3);
    lua_pop(L, 1);
    return 1;
  }
  if (!has_value && is_direction(name)) {
    set_span(L, m, "direction", name);
    d->direction = 1;
    return 1;
  }
  if (has_value && (span_is(name, "ptime") || span_is(name, "maxptime"))) {
    /* finite: build must be able to write it back (tostring(1e400) is "inf") */
    if (!push_tonumber(L, value) || !(lua_tonumber(L, -1) > 0) ||
        lua_tonumber(L, -1) - lua_tonumber(L, -1) != 0) {
      lua_pop(L, 1);
      *why = name.n == 5 ? "a=ptime needs a positive number" : "a=maxptime needs a positive number";
      return -1;
    }
    lua_setfield(L, m, name.n == 5 ? "ptime" : "maxptime");
    return 1;
  }
  return 0;
}

/* a media description ends: its direction, else the session's, else sendrecv */
static void end_media(lua_State *L, int m, const desc_t *d, int s)
{
  if (d->direction) return;
  lua_getfield(L, s, "direction");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    lua_pushliteral(L, "sendrecv");
  }
  lua_setfield(L, m, "direction");
}

static const char BAD_PORT[] = "bad m= port '";

/* m=: pushes the media table, or NULL and why not (with *bad the port word) */
static const char *media(lua_State *L, span_t v, int pt_meta, span_t *bad)
{
  const char *s = v.p, *e = v.p + v.n, *p;
  span_t f[3], port, count = {"", 0}, w;
  int top, n = 0;
  for (n = 0; n < 3 && word(&s, e, &f[n]); n++) {}
  if (n < 3) return "m= needs <media> <port> <proto> <fmt>...";
  /* ^(%d+)/?(%d*)$ */
  p = f[1].p;
  e = f[1].p + f[1].n;
  port.p = p;
  while (p < e && dg((unsigned char)*p)) p++;
  port.n = (size_t)(p - port.p);
  if (p < e && *p == '/') {
    count.p = ++p;
    while (p < e && dg((unsigned char)*p)) p++;
    count.n = (size_t)(p - count.p);
  }
  *bad = f[1];
  if (port.n == 0 || p != e) return BAD_PORT;
  lua_createtable(L, 0, 11);
  top = lua_gettop(L);
  push_tonumber(L, port);
  if (lua_tonumber(L, -1) > 65535) {
    lua_pop(L, 2);
    return BAD_PORT;
  }
  lua_setfield(L, top, "port");
  set_span(L, top, "media", f[0]);
  set_number(L, top, "port_count", count);
  set_span(L, top, "proto", f[2]);
  lua_newtable(L);
  e = v.p + v.n;
  n = 0;
  while (word(&s, e, &w)) {
    lua_pushlstring(L, w.p, w.n);
    lua_rawseti(L, -2, ++n);
  }
  lua_setfield(L, top, "formats");
  new_list(L, top, "bandwidths");
  new_list(L, top, "attributes");
  lua_newtable(L);
  lua_pushvalue(L, pt_meta);
  lua_setmetatable(L, -2);
  lua_setfield(L, top, "rtpmap");
  lua_newtable(L);
  lua_pushvalue(L, pt_meta);
  lua_setmetatable(L, -2);
  lua_setfield(L, top, "fmtp");
  return NULL;
}

/* core.sdp_parse(str, pt_meta) -> table | nil, err (luasip.sdp.parse checks str) */
int luasip_sdp_parse(lua_State *L)
{
  size_t len;
  const char *str = luaL_checklstring(L, 1, &len), *pos = str, *end = str + len;
  int lineno = 0, saw_v = 0, saw_o = 0, saw_s = 0, zones = 0;
  int n_emails = 0, n_phones = 0, n_times = 0, n_media = 0, n_repeats = 0;
  int s = 3, m = 0, cur;
  desc_t sd = {0, 0, 0, 0, 0, 0}, md = {0, 0, 0, 0, 0, 0}, *d = &sd;
  luaL_Buffer b;
  const char *why = NULL;
  span_t detail = {"", 0};
  const char *detail_after = NULL;  /* text after the detail in the message */

  luaL_checktype(L, 2, LUA_TTABLE);
  lua_settop(L, 2);
  luaL_checkstack(L, 24, "luasip.sdp.parse");
  lua_createtable(L, 0, 12);
  new_list(L, s, "attributes");
  new_list(L, s, "bandwidths");
  new_list(L, s, "emails");
  new_list(L, s, "phones");
  new_list(L, s, "times");
  new_list(L, s, "media");
  cur = s;

  while (pos < end) {
    const char *nl = memchr(pos, '\n', (size_t)(end - pos));
    span_t line, v;
    int t;
    line.p = pos;
    line.n = (size_t)((nl ? nl : end) - pos);
    pos = nl ? nl + 1 : end;
    lineno++;
    if (line.n > 0 && line.p[line.n - 1] == '\r') line.n--;
    /* RFC 8866 9: no NUL or CR inside a line (build could not write it back) */
    if (memchr(line.p, '\r', line.n) || memchr(line.p, '\0', line.n)) {
      why = "NUL or CR inside a line";
      break;
    }
    if (line.n == 0) continue;
    if (line.n < 2 || !al((unsigned char)line.p[0]) || line.p[1] != '=') {
      why = "expected <type>=<value>, got '";
      detail.p = line.p;
      detail.n = line.n > 40 ? 40 : line.n;
      detail_after = "'";
      break;
    }
    t = line.p[0];
    v.p = line.p + 2;
    v.n = line.n - 2;
    if (!saw_v && t != 'v') {
      why = "an SDP starts with v=";
      break;
    }
    switch (t) {
    case 'v':
      if (saw_v) {
        why = "second v= line";
      } else if (!span_is(v, "0")) {
        why = "unsupported version v=";
        detail = v;
      } else {
        lua_pushinteger(L, 0);
        lua_setfield(L, s, "version");
      }
      break;
    case 'o':
      if (m) goto misplaced;
      if (saw_o) {
        why = "second o= line";
      } else if (!(why = origin(L, v))) {
        lua_setfield(L, s, "origin");
      }
      break;
    case 's':
      if (m) goto misplaced;
      if (saw_s) why = "second s= line";
      else set_span(L, s, "name", v);
      break;
    case 'i':
      why = set_once(L, cur, "info", v, &d->info, "second i= line");
      break;
    case 'u':
      if (m) goto misplaced;
      set_span(L, s, "uri", v);
      break;
    case 'e':
    case 'p':
      if (m) goto misplaced;
      lua_pushlstring(L, v.p, v.n);
      if (t == 'e') append(L, s, "emails", &n_emails);
      else append(L, s, "phones", &n_phones);
      break;
    case 'c':
      if (d->connection) {
        why = m ? "more than one c= in a media description is not supported" : "second c= line";
      } else if (!(why = connection(L, v))) {
        lua_setfield(L, cur, "connection");
        d->connection = 1;
      }
      break;
    case 'b':
      if (!(why = bandwidth(L, v))) append(L, cur, "bandwidths", &d->bandwidths);
      break;
    case 't': {
      span_t f[3];
      if (m) goto misplaced;
      if (words(v, f, 3) != 2 || !is_uint(f[0]) || !is_uint(f[1])) {
        why = "t= needs <start-time> <stop-time>";
        break;
      }
      lua_createtable(L, 0, 3);
      set_number(L, lua_gettop(L), "start", f[0]);
      set_number(L, lua_gettop(L), "stop", f[1]);
      append(L, s, "times", &n_times);
      n_repeats = 0;
      break;
    }
    case 'r': {
      const char *ws = v.p, *we = v.p + v.n;
      span_t w;
      int nw = 0, ok = 1, top;
      if (m) goto misplaced;
      if (n_times == 0) {
        why = "r= before any t=";
        break;
      }
      while (word(&ws, we, &w)) {
        nw++;
        ok = ok && is_typed_time(w);
      }
      if (nw < 3 || !ok) {
        why = "r= needs <interval> <duration> <offsets>...";
        break;
      }
      lua_getfield(L, s, "times");
      lua_rawgeti(L, -1, n_times);
      lua_remove(L, -2);
      if (n_repeats == 0) new_list(L, lua_gettop(L), "repeats");
      lua_createtable(L, 0, 3);
      top = lua_gettop(L);
      ws = v.p;
      word(&ws, we, &w);
      set_span(L, top, "interval", w);
      word(&ws, we, &w);
      set_span(L, top, "duration", w);
      lua_createtable(L, nw - 2, 0);
      for (nw = 0; word(&ws, we, &w);) {
        lua_pushlstring(L, w.p, w.n);
        lua_rawseti(L, -2, ++nw);
      }
      lua_setfield(L, top, "offsets");
      append(L, top - 1, "repeats", &n_repeats);
      lua_pop(L, 1);
      break;
    }
    case 'z': {
      const char *ws = v.p, *we = v.p + v.n;
      span_t w, w2;
      int nw = 0, ok = 1, nz = 0;
      if (m) goto misplaced;
      if (zones) {
        why = "second z= line";
        break;
      }
      while (word(&ws, we, &w)) {
        ok = ok && ((nw % 2 == 0) ? is_uint(w) : is_typed_time(w));
        nw++;
      }
      if (nw < 2 || nw % 2 != 0 || !ok) {
        why = "z= needs <adjustment time> <offset> pairs";
        break;
      }
      lua_createtable(L, nw / 2, 0);
      for (ws = v.p; word(&ws, we, &w) && word(&ws, we, &w2);) {
        lua_createtable(L, 0, 2);
        set_span(L, lua_gettop(L), "time", w);
        set_span(L, lua_gettop(L), "offset", w2);
        lua_rawseti(L, -2, ++nz);
      }
      lua_setfield(L, s, "zones");
      zones = 1;
      break;
    }
    case 'k':
      why = set_once(L, cur, "key", v, &d->key, "second k= line");
      break;
    case 'a': {
      /* ^([^:]+):(.*)$, else the whole value is the name */
      span_t name = v, value = {"", 0};
      const char *colon = memchr(v.p, ':', v.n);
      int has_value = 0, handled = 0;
      size_t i;
      if (colon && colon > v.p) {
        name.n = (size_t)(colon - v.p);
        value.p = colon + 1;
        value.n = (size_t)(v.p + v.n - value.p);
        has_value = 1;
      }
      for (i = 0; i < name.n && !sp((unsigned char)name.p[i]); i++) {}
      if (name.n == 0 || i < name.n) {
        why = "bad attribute name in a=";
        detail = v;
        break;
      }
      if (m) {
        handled = media_attribute(L, m, d, name, value, has_value, &why);
        if (handled < 0) break;
      } else if (!has_value && is_direction(name)) {
        set_span(L, s, "direction", name);
        handled = 1;
      }
      if (!handled) {
        lua_createtable(L, 0, 2);
        set_span(L, lua_gettop(L), "name", name);
        if (has_value) set_span(L, lua_gettop(L), "value", value);
        append(L, cur, "attributes", &d->attributes);
      }
      break;
    }
    case 'm': {
      span_t badport;
      if (m) end_media(L, m, &md, s);
      lua_settop(L, 3);
      m = 0;
      why = media(L, v, 2, &badport);
      if (why) {
        if (why == BAD_PORT) {
          detail = badport;
          detail_after = "'";
        }
        break;
      }
      m = cur = 4;
      memset(&md, 0, sizeof md);
      d = &md;
      lua_pushvalue(L, m);
      append(L, s, "media", &n_media);
      break;
    }
    default:
    misplaced:
      why = "unknown or misplaced ";
      detail.p = line.p;
      detail.n = 1;
      detail_after = "= line";
      break;
    }
    if (why) break;
    if (t == 'v') saw_v = 1;
    else if (t == 'o') saw_o = 1;
    else if (t == 's') saw_s = 1;
  }
  if (!why) {
    if (!saw_v) {
      lineno = 1;
      why = "empty SDP";
    } else if (!saw_o) {
      lua_pushnil(L);
      lua_pushliteral(L, "no o= line");
      return 2;
    } else {
      if (m) end_media(L, m, &md, s);
      lua_settop(L, 3);
      return 1;
    }
  }
  lua_pushnil(L);
  luaL_buffinit(L, &b);
  lua_pushfstring(L, "line %d: %s", lineno, why);
  luaL_addvalue(&b);
  luaL_addlstring(&b, detail.p, detail.n);
  if (detail_after) luaL_addstring(&b, detail_after);
  luaL_pushresult(&b);
  return 2;
}

/* build ----------------------------------------------------------------------------- */

#define FNAME "luasip.sdp.build"
#define OUT_SLOT 2                  /* the stack slot of the output's userdata, once it grows */

typedef struct {
  lua_State *L;
  char *p;
  size_t n, cap;
  size_t line;                      /* where the current line's value starts */
  char init[1024];
} out_t;

/* raises "luasip.sdp.build: <msg>" where the script called sdp.build */
static int build_error(lua_State *L, const char *fmt, ...)
{
  va_list ap;
  luaL_where(L, 2);
  lua_pushliteral(L, FNAME ": ");
  va_start(ap, fmt);
  lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  lua_concat(L, 3);
  return lua_error(L);
}

static void put(out_t *o, const char *s, size_t n)
{
  if (o->n + n > o->cap) {
    size_t cap = o->cap * 2;
    char *np;
    while (cap < o->n + n) cap *= 2;
    np = lua_newuserdata(o->L, cap);
    memcpy(np, o->p, o->n);
    lua_replace(o->L, OUT_SLOT);
    o->p = np;
    o->cap = cap;
  }
  memcpy(o->p + o->n, s, n);
  o->n += n;
}

static void puts_(out_t *o, const char *s) { put(o, s, strlen(s)); }

static void begin(out_t *o, char type)
{
  char h[2];
  h[0] = type;
  h[1] = '=';
  put(o, h, 2);
  o->line = o->n;
}

/* the line's value may not hold a line break or a NUL: build could not write it */
static void end_line(out_t *o, char type)
{
  size_t i;
  for (i = o->line; i < o->n; i++) {
    char c = o->p[i];
    if (c == '\r' || c == '\n' || c == '\0')
      build_error(o->L, "line break or NUL in the %c= line", type);
  }
  put(o, "\r\n", 2);
}

/* the value at idx as tostring() writes it (strings and numbers; 0 for anything else) */
static int put_tostring(out_t *o, int idx)
{
  lua_State *L = o->L;
  size_t n;
  const char *s;
  if (lua_type(L, idx) == LUA_TSTRING) {
    s = lua_tolstring(L, idx, &n);
    put(o, s, n);
    return 1;
  }
  if (lua_type(L, idx) != LUA_TNUMBER) return 0;
  lua_pushvalue(L, idx);
  s = lua_tolstring(L, -1, &n);
  put(o, s, n);
  lua_pop(L, 1);
  return 1;
}

/* num(): a whole number without a fraction, anything else as tostring() */
static int put_num(out_t *o, int idx)
{
  lua_State *L = o->L;
  if (lua_type(L, idx) == LUA_TNUMBER) {
    char b[32];
    lua_Number n = lua_tonumber(L, idx);
#if LUA_VERSION_NUM >= 503
    if (lua_isinteger(L, idx)) {
      snprintf(b, sizeof b, LUA_INTEGER_FMT, (LUAI_UACINT)lua_tointeger(L, idx));
      puts_(o, b);
      return 1;
    }
#endif
    if (n == floor(n) && n < 9007199254740992.0 && n > -9007199254740992.0) {
      snprintf(b, sizeof b, "%lld", (long long)n);
      puts_(o, b);
      return 1;
    }
    if (n == floor(n) && n - n == 0) {
      /* a whole number beyond 2^53 (a sess-id or rate from a parse of a longer digit
       * string): all its digits, which parse back to it, not tostring's 1e+26 */
      char big[400];
      snprintf(big, sizeof big, "%.0f", (double)n);
      puts_(o, big);
      return 1;
    }
  }
  return put_tostring(o, idx);
}

/* field(): a string, or a number as num() writes it; raises naming what is missing */
static void put_field(out_t *o, int idx, const char *what)
{
  int t = lua_type(o->L, idx);
  if (t == LUA_TNIL) build_error(o->L, "%s missing", what);
  if (t != LUA_TSTRING && t != LUA_TNUMBER) build_error(o->L, "%s must be a string", what);
  put_num(o, idx);
}

/* a value concatenated as it is (string, or number as tostring()) */
static void put_text(out_t *o, int idx, const char *what)
{
  if (!put_tostring(o, idx)) build_error(o->L, "%s must be a string", what);
}

/* the value of field k of the table at t, pushed (lua_getfield honours metatables) */
static int get(lua_State *L, int t, const char *k)
{
  lua_getfield(L, t, k);
  return lua_type(L, -1);
}

static int truthy(lua_State *L, int idx) { return lua_toboolean(L, idx); }

/* a list field: nil/false -> 0 (nothing pushed), a table -> 1 (pushed), else raises */
static int get_list(out_t *o, int t, const char *k, const char *what)
{
  lua_State *L = o->L;
  get(L, t, k);
  if (!truthy(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (!lua_istable(L, -1)) build_error(L, "%s must be a list", what);
  return 1;
}

/* checks the address value at idx as field() does; its default type: IP6 when it has a ':' */
static const char *address_type(out_t *o, int idx, const char *what)
{
  lua_State *L = o->L;
  size_t n;
  const char *s;
  int t = lua_type(L, idx);
  if (t == LUA_TNIL) build_error(L, "%s missing", what);
  if (t != LUA_TSTRING && t != LUA_TNUMBER) build_error(L, "%s must be a string", what);
  if (t != LUA_TSTRING) return "IP4";
  s = lua_tolstring(L, idx, &n);
  return memchr(s, ':', n) ? "IP6" : "IP4";
}

/* nettype or addrtype: the value at idx when it is set, else dflt */
static void put_or(out_t *o, int idx, const char *dflt, const char *what)
{
  if (truthy(o->L, idx)) put_text(o, idx, what);
  else puts_(o, dflt);
}

static void put_connection(out_t *o, int c)
{
  lua_State *L = o->L;
  const char *type;
  int top = lua_gettop(L);
  if (!lua_istable(L, c)) build_error(L, "connection must be a table");
  get(L, c, "address");
  type = address_type(o, top + 1, "connection.address");
  get(L, c, "nettype");
  get(L, c, "addrtype");
  get(L, c, "ttl");
  get(L, c, "count");
  begin(o, 'c');
  put_or(o, top + 2, "IN", "connection.nettype");
  put(o, " ", 1);
  put_or(o, top + 3, type, "connection.addrtype");
  put(o, " ", 1);
  put_num(o, top + 1);
  if (truthy(L, top + 4)) {
    put(o, "/", 1);
    if (!put_num(o, top + 4)) build_error(L, "connection.ttl must be a number");
  }
  if (truthy(L, top + 5)) {
    put(o, "/", 1);
    if (!put_num(o, top + 5)) build_error(L, "connection.count must be a number");
  }
  end_line(o, 'c');
  lua_settop(L, top);
}

/* a list of { <k1> = ..., <k2> = ... } entries in field k of the table at t: one line
 * "<type>=<k1>:<k2>" each; with optional, a nil or true k2 leaves ":<k2>" out (a flag) */
typedef struct {
  const char *list, *entries;       /* field name; "<list> entries must be tables" */
  char type;
  const char *k1, *what1, *k2, *what2;
  int optional;
} pairs_t;

static const pairs_t BANDWIDTHS = {"bandwidths", "bandwidths entries must be tables", 'b',
                                   "type", "bandwidth type", "bandwidth", "bandwidth", 0};
static const pairs_t ATTRIBUTES = {"attributes", "attributes entries must be tables", 'a',
                                   "name", "attribute name", "value", "attribute value", 1};

static void put_pairs(out_t *o, int t, const pairs_t *pr)
{
  lua_State *L = o->L;
  int i, list, top = lua_gettop(L);
  if (!get_list(o, t, pr->list, pr->list)) return;
  list = top + 1;
  for (i = 1;; i++) {
    int v = top + 4;
    lua_rawgeti(L, list, i);
    if (lua_isnil(L, -1)) break;
    if (!lua_istable(L, -1)) build_error(L, "%s", pr->entries);
    get(L, top + 2, pr->k1);
    get(L, top + 2, pr->k2);
    begin(o, pr->type);
    put_field(o, top + 3, pr->what1);
    if (!pr->optional || !(lua_isnil(L, v) || (lua_isboolean(L, v) && lua_toboolean(L, v)))) {
      put(o, ":", 1);
      put_field(o, v, pr->what2);
    }
    end_line(o, pr->type);
    lua_settop(L, list);
  }
  lua_settop(L, top);
}

/* one line per string of the list in field k of the table at t */
static void put_strings(out_t *o, int t, const char *k, char type, const char *what)
{
  lua_State *L = o->L;
  int i, top = lua_gettop(L);
  if (!get_list(o, t, k, k)) return;
  for (i = 1;; i++) {
    lua_rawgeti(L, top + 1, i);
    if (lua_isnil(L, -1)) break;
    begin(o, type);
    put_field(o, top + 2, what);
    end_line(o, type);
    lua_pop(L, 1);
  }
  lua_settop(L, top);
}

/* a line "<type>=<field k>" when field k of the table at t is set */
static void put_optional(out_t *o, int t, const char *k, char type, const char *what)
{
  get(o->L, t, k);
  if (truthy(o->L, -1)) {
    begin(o, type);
    put_field(o, lua_gettop(o->L), what);
    end_line(o, type);
  }
  lua_pop(o->L, 1);
}

static int direction_ok(lua_State *L, int idx)
{
  size_t n;
  const char *s;
  span_t d;
  if (lua_type(L, idx) != LUA_TSTRING) return 0;
  s = lua_tolstring(L, idx, &n);
  d.p = s;
  d.n = n;
  return is_direction(d);
}

static void put_direction(out_t *o, int idx)
{
  lua_State *L = o->L;
  if (!direction_ok(L, idx)) {
    if (lua_type(L, idx) == LUA_TSTRING)
      build_error(L, "bad direction %s", lua_tostring(L, idx));
    build_error(L, "bad direction (a %s)", luaL_typename(L, idx));
  }
  begin(o, 'a');
  put_text(o, idx, "direction");
  end_line(o, 'a');
}

static void put_times(out_t *o, int t)
{
  lua_State *L = o->L;
  int i, j, top = lua_gettop(L), list = top + 1;
  if (!get_list(o, t, "times", "times") || luasip_rawlen(L, list) == 0) {
    lua_settop(L, top);
    puts_(o, "t=0 0\r\n");
    return;
  }
  for (i = 1;; i++) {
    int tm = list + 1;
    lua_rawgeti(L, list, i);
    if (lua_isnil(L, -1)) break;
    if (!lua_istable(L, -1)) build_error(L, "times entries must be tables");
    begin(o, 't');
    if (get(L, tm, "start") == LUA_TNIL || !truthy(L, -1)) puts_(o, "0");
    else if (!put_num(o, -1)) build_error(L, "times start must be a number");
    put(o, " ", 1);
    if (get(L, tm, "stop") == LUA_TNIL || !truthy(L, -1)) puts_(o, "0");
    else if (!put_num(o, -1)) build_error(L, "times stop must be a number");
    end_line(o, 't');
    lua_settop(L, tm);
    if (get_list(o, tm, "repeats", "repeats")) {
      int reps = tm + 1;
      for (j = 1;; j++) {
        int r = reps + 1, k, n;
        lua_rawgeti(L, reps, j);
        if (lua_isnil(L, -1)) break;
        if (!lua_istable(L, -1)) build_error(L, "repeats entries must be tables");
        get(L, r, "interval");
        get(L, r, "duration");
        begin(o, 'r');
        put_field(o, r + 1, "repeat interval");
        put(o, " ", 1);
        put_field(o, r + 2, "repeat duration");
        if (get_list(o, r, "offsets", "repeat offsets")) {
          n = (int)luasip_rawlen(L, r + 3);
          for (k = 1; k <= n; k++) {
            lua_rawgeti(L, r + 3, k);
            put(o, " ", 1);
            put_text(o, -1, "repeat offset");
            lua_pop(L, 1);
          }
        }
        end_line(o, 'r');
        lua_settop(L, reps);
      }
    }
    lua_settop(L, list);
  }
  lua_settop(L, top);
}

static void put_zones(out_t *o, int t)
{
  lua_State *L = o->L;
  int i, top = lua_gettop(L), list = top + 1;
  if (!get_list(o, t, "zones", "zones") || luasip_rawlen(L, list) == 0) {
    lua_settop(L, top);
    return;
  }
  begin(o, 'z');
  for (i = 1;; i++) {
    lua_rawgeti(L, list, i);
    if (lua_isnil(L, -1)) break;
    if (!lua_istable(L, -1)) build_error(L, "zones entries must be tables");
    get(L, list + 1, "time");
    get(L, list + 1, "offset");
    if (i > 1) put(o, " ", 1);
    put_field(o, list + 2, "zone time");
    put(o, " ", 1);
    put_field(o, list + 3, "zone offset");
    lua_settop(L, list);
  }
  end_line(o, 'z');
  lua_settop(L, top);
}

/* pt_get(map, f): map[f], else map[tonumber(f)]; pushes the value (nil when none) */
static void pt_get(lua_State *L, int map, int f)
{
  if (lua_isnil(L, map)) {
    lua_pushnil(L);
    return;
  }
  lua_pushvalue(L, f);
  lua_gettable(L, map);
  if (lua_isnil(L, -1) && lua_type(L, f) == LUA_TSTRING) {
    span_t s;
    s.p = lua_tolstring(L, f, &s.n);
    if (push_tonumber(L, s)) {
      lua_remove(L, -2);
      lua_gettable(L, map);
    } else {
      lua_pop(L, 1);
    }
  }
}

/* "rtpmap:<pt> <encoding>/<clock rate>[/<channels>]" for the format at f and entry at r */
static void put_rtpmap(out_t *o, int f, int r)
{
  lua_State *L = o->L;
  int top = lua_gettop(L);
  if (!lua_istable(L, r)) build_error(L, "rtpmap entries must be tables");
  get(L, r, "encoding");
  get(L, r, "clock_rate");
  get(L, r, "channels");
  begin(o, 'a');
  puts_(o, "rtpmap:");
  put_text(o, f, "format");
  put(o, " ", 1);
  put_field(o, top + 1, "rtpmap encoding");
  put(o, "/", 1);
  put_field(o, top + 2, "rtpmap clock_rate");
  if (truthy(L, top + 3)) {
    put(o, "/", 1);
    if (!put_num(o, top + 3)) build_error(L, "rtpmap channels must be a number");
  }
  end_line(o, 'a');
  lua_settop(L, top);
}

static void put_fmtp(out_t *o, int f, int p)
{
  begin(o, 'a');
  puts_(o, "fmtp:");
  put_text(o, f, "format");
  put(o, " ", 1);
  put_field(o, p, "fmtp");
  end_line(o, 'a');
}

/* tostring(a) < tostring(b) for two keys that are strings or numbers, byte by byte (Lua's
 * order of strings in the C locale) */
static int key_less(lua_State *L, int a, int b)
{
  size_t na, nb;
  const char *sa, *sb;
  int c;
  if (a < 0) a = lua_gettop(L) + a + 1;
  if (b < 0) b = lua_gettop(L) + b + 1;
  lua_pushvalue(L, a);
  lua_pushvalue(L, b);
  sa = lua_tolstring(L, -2, &na);
  sb = lua_tolstring(L, -1, &nb);
  c = memcmp(sa, sb, na < nb ? na : nb);
  lua_pop(L, 2);
  return c < 0 || (c == 0 && na < nb);
}

/* the entries of map (a table or nil) whose keys no format named, in the order of their
 * keys' text, written by line(o, key, value) */
static void put_rest(out_t *o, int map, int done, void (*line)(out_t *, int, int),
                     const char *what)
{
  lua_State *L = o->L;
  int top = lua_gettop(L), rest = top + 1, n = 0, i, j;
  if (lua_isnil(L, map)) return;
  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, map)) {
    int kt = lua_type(L, -2);
    lua_pop(L, 1);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER)
      build_error(L, "%s keys must be formats (strings or numbers)", what);
    lua_pushvalue(L, -1);
    lua_tolstring(L, -1, NULL);     /* the copy becomes tostring(key) */
    lua_rawget(L, done);
    if (!lua_toboolean(L, -1)) {
      lua_pushvalue(L, -2);
      lua_rawseti(L, rest, ++n);
    }
    lua_pop(L, 1);
  }
  /* insertion sort: a few entries at most */
  for (i = 2; i <= n; i++) {
    lua_rawgeti(L, rest, i);
    for (j = i - 1; j >= 1; j--) {
      lua_rawgeti(L, rest, j);
      if (!key_less(L, -2, -1)) {
        lua_pop(L, 1);
        break;
      }
      lua_rawseti(L, rest, j + 1);
    }
    lua_rawseti(L, rest, j + 1);
  }
  for (i = 1; i <= n; i++) {
    lua_rawgeti(L, rest, i);
    lua_pushvalue(L, -1);
    lua_gettable(L, map);
    lua_pushvalue(L, -2);
    lua_tolstring(L, -1, NULL);
    line(o, lua_gettop(L), lua_gettop(L) - 1);
    lua_settop(L, rest);
  }
  lua_settop(L, top);
}

static void rest_rtpmap(out_t *o, int f, int r) { put_rtpmap(o, f, r); }
static void rest_fmtp(out_t *o, int f, int p) { put_fmtp(o, f, p); }

/* the map in field k of the media table at m, pushed: nil when unset, else a table */
static void get_map(out_t *o, int m, const char *k, const char *what)
{
  get(o->L, m, k);
  if (!truthy(o->L, -1)) {
    lua_pop(o->L, 1);
    lua_pushnil(o->L);
  } else if (!lua_istable(o->L, -1)) {
    build_error(o->L, "%s must be a table", what);
  }
}

static void put_media(out_t *o, int m)
{
  lua_State *L = o->L;
  int top = lua_gettop(L), formats, rtpmap, fmtp, done, i, nf;
  if (!lua_istable(L, m)) build_error(L, "media entries must be tables");
  /* m=<media> <port>[/<count>] <proto> <fmt>... */
  get(L, m, "media");
  get(L, m, "port");
  get(L, m, "port_count");
  get(L, m, "proto");
  begin(o, 'm');
  put_field(o, top + 1, "media");
  put(o, " ", 1);
  put_field(o, top + 2, "media port");
  if (truthy(L, top + 3)) {
    put(o, "/", 1);
    if (!put_num(o, top + 3)) build_error(L, "media port_count must be a number");
  }
  put(o, " ", 1);
  put_or(o, top + 4, "RTP/AVP", "media proto");
  lua_settop(L, top);
  if (get_list(o, m, "formats", "media formats")) {
    formats = top + 1;
  } else {
    lua_newtable(L);
    formats = top + 1;
  }
  nf = 0;
  for (i = 1;; i++) {
    lua_rawgeti(L, formats, i);
    if (lua_isnil(L, -1)) break;
    put(o, " ", 1);
    put_field(o, formats + 1, "format");
    lua_pop(L, 1);
    nf++;
  }
  lua_pop(L, 1);
  end_line(o, 'm');
  put_optional(o, m, "info", 'i', "media info");
  get(L, m, "connection");
  if (truthy(L, -1)) put_connection(o, lua_gettop(L));
  lua_pop(L, 1);
  put_pairs(o, m, &BANDWIDTHS);
  put_optional(o, m, "key", 'k', "media key");
  /* rtpmap and fmtp in the order of the formats, then any for formats not listed */
  get_map(o, m, "rtpmap", "media rtpmap");
  rtpmap = formats + 1;
  get_map(o, m, "fmtp", "media fmtp");
  fmtp = formats + 2;
  lua_createtable(L, 0, nf);
  done = formats + 3;
  for (i = 1; i <= nf; i++) {
    int f = done + 1;
    lua_rawgeti(L, formats, i);
    lua_pushvalue(L, f);
    lua_tolstring(L, -1, NULL);     /* tostring(f): the key of done */
    lua_rawget(L, done);
    if (!lua_toboolean(L, -1)) {
      pt_get(L, rtpmap, f);
      if (truthy(L, -1)) put_rtpmap(o, f, lua_gettop(L));
      lua_pop(L, 1);
      pt_get(L, fmtp, f);
      if (truthy(L, -1)) put_fmtp(o, f, lua_gettop(L));
      lua_pop(L, 1);
      lua_pushvalue(L, f);
      lua_tolstring(L, -1, NULL);
      lua_pushboolean(L, 1);
      lua_rawset(L, done);
    }
    lua_settop(L, done);
  }
  put_rest(o, rtpmap, done, rest_rtpmap, "rtpmap");
  put_rest(o, fmtp, done, rest_fmtp, "fmtp");
  lua_settop(L, top);
  get(L, m, "ptime");
  if (truthy(L, -1)) {
    begin(o, 'a');
    puts_(o, "ptime:");
    if (!put_num(o, -1)) build_error(L, "media ptime must be a number");
    end_line(o, 'a');
  }
  get(L, m, "maxptime");
  if (truthy(L, -1)) {
    begin(o, 'a');
    puts_(o, "maxptime:");
    if (!put_num(o, -1)) build_error(L, "media maxptime must be a number");
    end_line(o, 'a');
  }
  lua_settop(L, top);
  put_pairs(o, m, &ATTRIBUTES);
  /* a rejected stream (port 0) needs no direction when it has the one parse() fills in:
   * the session's, else sendrecv */
  get(L, m, "direction");
  get(L, m, "port");
  get(L, 1, "direction");
  if (truthy(L, top + 1)) {
    int rejected = lua_type(L, top + 2) == LUA_TNUMBER && lua_tonumber(L, top + 2) == 0;
    const char *dflt = lua_type(L, top + 3) == LUA_TSTRING ? lua_tostring(L, top + 3) : "sendrecv";
    int implied = lua_type(L, top + 1) == LUA_TSTRING && strcmp(lua_tostring(L, top + 1), dflt) == 0;
    if (!(rejected && implied)) put_direction(o, top + 1);
  }
  lua_settop(L, top);
}

/* core.sdp_build(t) -> string (luasip.sdp.build checks t) */
int luasip_sdp_build(lua_State *L)
{
  out_t o;
  int top, i;
  luaL_checktype(L, 1, LUA_TTABLE);
  lua_settop(L, 1);
  lua_pushnil(L);                   /* OUT_SLOT */
  luaL_checkstack(L, 40, FNAME);
  o.L = L;
  o.p = o.init;
  o.n = 0;
  o.cap = sizeof o.init;
  o.line = 0;
  top = lua_gettop(L);

  begin(&o, 'v');
  if (!truthy(L, (get(L, 1, "version"), -1))) puts_(&o, "0");
  else if (!put_num(&o, -1)) build_error(L, "version must be a number");
  end_line(&o, 'v');
  lua_settop(L, top);

  get(L, 1, "origin");
  if (!lua_istable(L, -1)) build_error(L, "origin table expected");
  {
    int org = top + 1;
    const char *type;
    get(L, org, "address");
    type = address_type(&o, top + 2, "origin.address");
    get(L, org, "username");
    get(L, org, "sess_id");
    get(L, org, "sess_version");
    get(L, org, "nettype");
    get(L, org, "addrtype");
    if (lua_isnil(L, top + 4)) build_error(L, "origin.sess_id missing");
    if (lua_isnil(L, top + 5)) build_error(L, "origin.sess_version missing");
    begin(&o, 'o');
    put_or(&o, top + 3, "-", "origin.username");
    put(&o, " ", 1);
    put_field(&o, top + 4, "origin.sess_id");
    put(&o, " ", 1);
    put_field(&o, top + 5, "origin.sess_version");
    put(&o, " ", 1);
    put_or(&o, top + 6, "IN", "origin.nettype");
    put(&o, " ", 1);
    put_or(&o, top + 7, type, "origin.addrtype");
    put(&o, " ", 1);
    put_num(&o, top + 2);
    end_line(&o, 'o');
  }
  lua_settop(L, top);

  begin(&o, 's');
  if (get(L, 1, "name") == LUA_TNIL) puts_(&o, "-");
  else put_field(&o, top + 1, "name");
  end_line(&o, 's');
  lua_settop(L, top);
  put_optional(&o, 1, "info", 'i', "info");
  put_optional(&o, 1, "uri", 'u', "uri");
  put_strings(&o, 1, "emails", 'e', "email");
  put_strings(&o, 1, "phones", 'p', "phone");
  get(L, 1, "connection");
  if (truthy(L, -1)) put_connection(&o, top + 1);
  lua_settop(L, top);
  put_pairs(&o, 1, &BANDWIDTHS);
  put_times(&o, 1);
  put_zones(&o, 1);
  put_optional(&o, 1, "key", 'k', "key");
  get(L, 1, "direction");
  if (truthy(L, -1)) put_direction(&o, top + 1);
  lua_settop(L, top);
  put_pairs(&o, 1, &ATTRIBUTES);
  if (get_list(&o, 1, "media", "media")) {
    for (i = 1;; i++) {
      lua_rawgeti(L, top + 1, i);
      if (lua_isnil(L, -1)) break;
      put_media(&o, top + 2);
      lua_pop(L, 1);
    }
  }
  lua_pushlstring(L, o.p, o.n);
  return 1;
}
