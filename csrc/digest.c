/* SPDX-License-Identifier: MIT
 * HTTP digest computations for SIP authentication (RFC 2617, RFC 7616) in C, so that a
 * server checks a response without building its strings in Lua.  MD5 through sofia's
 * su_md5; SHA-256 and SHA-512-256 through OpenSSL's libcrypto when the build found it
 * (LUASIP_HAVE_LIBCRYPTO).  No state, no sofia objects: plain functions, exposed to Lua
 * as the C methods of the "luasip.digest" class (select(3, core.class("luasip.digest"))).
 */
#include <stdlib.h>
#include <string.h>

#include <sofia-sip/su_md5.h>
#include <sofia-sip/su_string.h>
#ifdef LUASIP_HAVE_LIBCRYPTO
#include <openssl/evp.h>
#endif

#include "luasip.h"

#define HEX_MAX 128                 /* SHA-512 hex; SHA-256 needs 64 */

typedef struct {
  const char *name;
  int sess;                         /* "-sess": HA1 = H(H(A1):nonce:cnonce) */
  int md5;                          /* su_md5, else the EVP digest below */
#ifdef LUASIP_HAVE_LIBCRYPTO
  const EVP_MD *(*evp)(void);
#endif
} alg_t;

#ifdef LUASIP_HAVE_LIBCRYPTO
#define ALG_EVP(f) , f
#else
#define ALG_EVP(f)
#endif

static const alg_t algs[] = {
  {"MD5", 0, 1 ALG_EVP(NULL)},
  {"MD5-sess", 1, 1 ALG_EVP(NULL)},
#ifdef LUASIP_HAVE_LIBCRYPTO
  {"SHA-256", 0, 0 ALG_EVP(EVP_sha256)},
  {"SHA-256-sess", 1, 0 ALG_EVP(EVP_sha256)},
  {"SHA-512-256", 0, 0 ALG_EVP(EVP_sha512_256)},
  {"SHA-512-256-sess", 1, 0 ALG_EVP(EVP_sha512_256)},
#endif
  {NULL, 0, 0 ALG_EVP(NULL)}
};

/* One hash over parts joined with ':' */
typedef struct {
  const char *p[8];
  size_t n[8];
  int count;
} parts_t;

static void parts_add(parts_t *ps, const char *s, size_t n)
{
  ps->p[ps->count] = s;
  ps->n[ps->count] = n;
  ps->count++;
}

static void tohex(const unsigned char *d, size_t n, char *hex)
{
  static const char xd[] = "0123456789abcdef";
  size_t i;
  for (i = 0; i < n; i++) {
    hex[2 * i] = xd[d[i] >> 4];
    hex[2 * i + 1] = xd[d[i] & 15];
  }
  hex[2 * n] = '\0';
}

/* hex <- lowercase hex of H(parts joined by ':'); returns its length, or 0 on failure */
static size_t hash_hex(const alg_t *alg, parts_t const *ps, char *hex)
{
  int i;
  if (alg->md5) {
    su_md5_t ctx;
    su_md5_init(&ctx);
    for (i = 0; i < ps->count; i++) {
      if (i > 0)
        su_md5_update(&ctx, ":", 1);
      su_md5_update(&ctx, ps->p[i], ps->n[i]);
    }
    su_md5_hexdigest(&ctx, hex);    /* lowercase, NUL-terminated */
    su_md5_deinit(&ctx);
    return 32;
  }
#ifdef LUASIP_HAVE_LIBCRYPTO
  {
    /* a context per hash, freed at once: a static one would be left to valgrind as
     * lost when the module is unloaded */
    EVP_MD_CTX *ctx = EVP_MD_CTX_new();
    unsigned char d[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    int ok = ctx && EVP_DigestInit_ex(ctx, alg->evp(), NULL);
    for (i = 0; ok && i < ps->count; i++)
      ok = (i == 0 || EVP_DigestUpdate(ctx, ":", 1)) &&
           EVP_DigestUpdate(ctx, ps->p[i], ps->n[i]);
    ok = ok && EVP_DigestFinal_ex(ctx, d, &n) && 2 * (size_t)n < HEX_MAX;
    EVP_MD_CTX_free(ctx);
    if (!ok)
      return 0;
    tohex(d, n, hex);
    return 2 * (size_t)n;
  }
#else
  (void)tohex;
  return 0;
#endif
}

static const alg_t *check_alg(lua_State *L, int idx, const char *fname)
{
  const char *name = luaL_optstring(L, idx, "MD5");
  const alg_t *a;
  for (a = algs; a->name; a++)
    if (su_casematch(name, a->name))
      return a;
  luaL_error(L, "%s: unsupported algorithm '%s'", fname, name);
  return NULL;
}

static const char *str_arg(lua_State *L, int idx, size_t *n, const char *fname,
                           const char *what)
{
  const char *s = lua_type(L, idx) == LUA_TSTRING ? lua_tolstring(L, idx, n) : NULL;
  if (!s)
    luaL_error(L, "%s: %s must be a string", fname, what);
  return s;
}

/* The request-digest (RFC 2617 3.2.2.1, RFC 7616 3.4.1) from the arguments at base:
 * alg, ha1, nonce, nc, cnonce, qop, method, uri [, body].  Raises naming fname. */
static size_t compute(lua_State *L, int base, const char *fname, char *out)
{
  const alg_t *alg = check_alg(L, base, fname);
  size_t nha1, nnonce, nnc = 0, ncnonce = 0, nqop = 0, nmethod, nuri, nbody = 0, i, hl;
  const char *ha1 = str_arg(L, base + 1, &nha1, fname, "ha1");
  const char *nonce = str_arg(L, base + 2, &nnonce, fname, "nonce");
  const char *nc = NULL, *cnonce = NULL, *qop = NULL, *body = NULL;
  const char *method = str_arg(L, base + 6, &nmethod, fname, "method");
  const char *uri = str_arg(L, base + 7, &nuri, fname, "uri");
  char lha1[HEX_MAX], sess[HEX_MAX], ha2[HEX_MAX], hbody[HEX_MAX];
  parts_t ps;
  if (!lua_isnoneornil(L, base + 5)) {
    qop = str_arg(L, base + 5, &nqop, fname, "qop");
    if (!su_casematch(qop, "auth") && !su_casematch(qop, "auth-int"))
      luaL_error(L, "%s: qop must be \"auth\", \"auth-int\" or nil", fname);
    nc = str_arg(L, base + 3, &nnc, fname, "nc");
    cnonce = str_arg(L, base + 4, &ncnonce, fname, "cnonce");
  } else if (alg->sess) {
    cnonce = str_arg(L, base + 4, &ncnonce, fname, "cnonce");
  }
  if (nha1 >= HEX_MAX)
    luaL_error(L, "%s: ha1 too long", fname);
  for (i = 0; i < nha1; i++)      /* the hex of H(A1) enters the hash in lowercase */
    lha1[i] = (ha1[i] >= 'A' && ha1[i] <= 'Z') ? (char)(ha1[i] + 32) : ha1[i];
  lha1[nha1] = '\0';
  ha1 = lha1;
  if (alg->sess) {
    ps.count = 0;
    parts_add(&ps, ha1, nha1);
    parts_add(&ps, nonce, nnonce);
    parts_add(&ps, cnonce, ncnonce);
    if (!(nha1 = hash_hex(alg, &ps, sess)))
      luaL_error(L, "%s: hash failed", fname);
    ha1 = sess;
  }
  ps.count = 0;
  parts_add(&ps, method, nmethod);
  parts_add(&ps, uri, nuri);
  if (qop && su_casematch(qop, "auth-int")) {
    parts_t pb;
    if (!lua_isnoneornil(L, base + 8))
      body = str_arg(L, base + 8, &nbody, fname, "body");
    pb.count = 0;
    parts_add(&pb, body ? body : "", nbody);
    if (!(hl = hash_hex(alg, &pb, hbody)))
      luaL_error(L, "%s: hash failed", fname);
    parts_add(&ps, hbody, hl);
  }
  if (!(hl = hash_hex(alg, &ps, ha2)))
    luaL_error(L, "%s: hash failed", fname);
  ps.count = 0;
  parts_add(&ps, ha1, nha1);
  parts_add(&ps, nonce, nnonce);
  if (qop) {
    parts_add(&ps, nc, nnc);
    parts_add(&ps, cnonce, ncnonce);
    parts_add(&ps, qop, nqop);
  }
  parts_add(&ps, ha2, hl);
  if (!(hl = hash_hex(alg, &ps, out)))
    luaL_error(L, "%s: hash failed", fname);
  return hl;
}

/* digest.ha1([alg], username, realm, password) -> hex of H(username:realm:password) */
static int digest_ha1(lua_State *L)
{
  const alg_t *alg = check_alg(L, 1, "luasip.digest.ha1");
  size_t nu, nr, np, hl;
  const char *u = str_arg(L, 2, &nu, "luasip.digest.ha1", "username");
  const char *r = str_arg(L, 3, &nr, "luasip.digest.ha1", "realm");
  const char *p = str_arg(L, 4, &np, "luasip.digest.ha1", "password");
  char hex[HEX_MAX];
  parts_t ps;
  ps.count = 0;
  parts_add(&ps, u, nu);
  parts_add(&ps, r, nr);
  parts_add(&ps, p, np);
  if (!(hl = hash_hex(alg, &ps, hex)))
    return luaL_error(L, "luasip.digest.ha1: hash failed");
  lua_pushlstring(L, hex, hl);
  return 1;
}

/* digest.response([alg], ha1, nonce, nc, cnonce, qop, method, uri [, body]) -> hex
 * qop nil: RFC 2069 (nc and cnonce unused, except cnonce for -sess); "auth-int" hashes
 * body (default ""). */
static int digest_response(lua_State *L)
{
  char hex[HEX_MAX];
  size_t n = compute(L, 1, "luasip.digest.response", hex);
  lua_pushlstring(L, hex, n);
  return 1;
}

/* digest.check(response, [alg], ha1, nonce, nc, cnonce, qop, method, uri [, body])
 *   -> boolean: response (hex, any case) is the request-digest; compared in constant
 * time */
static int digest_check(lua_State *L)
{
  size_t ngiven, n, i;
  const char *given = str_arg(L, 1, &ngiven, "luasip.digest.check", "response");
  char hex[HEX_MAX];
  unsigned diff = 0;
  n = compute(L, 2, "luasip.digest.check", hex);
  if (ngiven != n) {
    lua_pushboolean(L, 0);
    return 1;
  }
  for (i = 0; i < n; i++) {
    unsigned char c = (unsigned char)given[i];
    if (c >= 'A' && c <= 'Z')
      c = (unsigned char)(c + 32);
    diff |= (unsigned)(c ^ (unsigned char)hex[i]);
  }
  lua_pushboolean(L, diff == 0);
  return 1;
}

static int is_token(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         (c && strchr("-.!%*_+`'~", c) != NULL);
}

static int is_space(unsigned char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\f' || c == '\v';
}

/* digest.parse(value) -> scheme, params | nil: one WWW-Authenticate, Authorization (or
 * Proxy-) value; parameter names lowercased, quoted values unquoted (the contract of
 * luasip.auth.parse, without a Lua call per character). */
static int digest_parse(lua_State *L)
{
  size_t n;
  const char *v = lua_type(L, 1) == LUA_TSTRING ? lua_tolstring(L, 1, &n) : NULL;
  const char *p, *end, *t;
  luaL_Buffer B;
  if (!v) {
    lua_pushnil(L);
    return 1;
  }
  p = v, end = v + n;
  while (p < end && is_space((unsigned char)*p))
    p++;
  for (t = p; p < end && is_token((unsigned char)*p); p++)
    ;
  if (p == t) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlstring(L, t, (size_t)(p - t));
  lua_createtable(L, 0, 10);        /* a response's usual parameters: no rehash */
  for (;;) {
    char name[64];
    size_t nl, i;
    while (p < end && (is_space((unsigned char)*p) || *p == ','))
      p++;
    if (p >= end)
      break;
    for (t = p; p < end && is_token((unsigned char)*p); p++)
      ;
    nl = (size_t)(p - t);
    while (p < end && is_space((unsigned char)*p))
      p++;
    if (nl == 0 || p >= end || *p != '=') {
      lua_pushnil(L);
      return 1;
    }
    p++;
    while (p < end && is_space((unsigned char)*p))
      p++;
    if (nl < sizeof name) {
      for (i = 0; i < nl; i++)
        name[i] = (t[i] >= 'A' && t[i] <= 'Z') ? (char)(t[i] + 32) : t[i];
      lua_pushlstring(L, name, nl);
    } else {
      lua_pushlstring(L, t, nl);   /* absurdly long: lowercased by Lua */
      lua_getfield(L, -1, "lower");
      lua_insert(L, -2);
      lua_call(L, 1, 1);
    }
    if (p < end && *p == '"' && (t = memchr(p + 1, '"', (size_t)(end - p - 1))) &&
        !memchr(p + 1, '\\', (size_t)(t - p - 1))) {
      lua_pushlstring(L, p + 1, (size_t)(t - p - 1));   /* no escapes: as it is */
      p = t + 1;
    } else if (p < end && *p == '"') {
      luaL_buffinit(L, &B);
      for (p++;; p++) {
        if (p >= end) {
          lua_pushnil(L);          /* unterminated quoted string */
          return 1;
        }
        if (*p == '"')
          break;
        if (*p == '\\') {
          if (++p >= end) {
            lua_pushnil(L);
            return 1;
          }
        }
        luaL_addchar(&B, *p);
      }
      p++;
      luaL_pushresult(&B);
    } else {
      for (t = p; p < end && !is_space((unsigned char)*p) && *p != ',' && *p != '"'; p++)
        ;
      lua_pushlstring(L, t, (size_t)(p - t));
    }
    lua_rawset(L, -3);
  }
  return 2;
}

/* digest.supports(alg) -> boolean */
static int digest_supports(lua_State *L)
{
  const char *name = luaL_checkstring(L, 1);
  const alg_t *a;
  for (a = algs; a->name; a++)
    if (su_casematch(name, a->name)) {
      lua_pushboolean(L, 1);
      return 1;
    }
  lua_pushboolean(L, 0);
  return 1;
}

static const luaL_Reg digest_funcs[] = {
  {"ha1", digest_ha1},
  {"response", digest_response},
  {"check", digest_check},
  {"supports", digest_supports},
  {"parse", digest_parse},
  {NULL, NULL}
};

/* A class without instances: its methods table is the digest API. */
void luasip_digest_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_DIGEST, digest_funcs, NULL);
}
