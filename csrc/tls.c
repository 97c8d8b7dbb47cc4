/* SPDX-License-Identifier: MIT
 * The agent's tls option for sofia's tport TLS.  sofia takes no PEM paths: it reads a
 * certificate directory with fixed names (TPTAG_CERTIFICATE: agent.pem holds the
 * certificate then the key, cafile.pem the trusted CAs) when a TLS transport is bound.
 * luasip builds that directory privately (mkdtemp, 0700, files 0600) from the paths the
 * user gives, checks the PEM files with libcrypto first so a bad file is a clear error,
 * and removes the directory as soon as the transports are bound (sofia has loaded
 * everything by then: nothing is left on disk while the agent runs).
 * Also the sips: rule of RFC 3261 26.2 / RFC 5630 for what the agent sends: a request to
 * (or routed through) a sips: URI leaves over TLS or not at all.
 */
#include <stdlib.h>
#include <string.h>
#include <stdio.h>
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>

#include <sofia-sip/tport_tag.h>
#include <sofia-sip/nta_tport.h>
#include <sofia-sip/sip_protos.h>
#include <sofia-sip/su_string.h>
#include <sofia-sip/url.h>
#ifdef LUASIP_HAVE_LIBCRYPTO
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/err.h>
#endif

#include "luasip.h"

static const char *const tls_files[] = { "agent.pem", "cafile.pem", NULL };

/* Appends the file src to the open descriptor fd; 0, or -1 with errno. */
static int append_file(int fd, const char *src)
{
  char buf[8192];
  size_t n;
  int ok = 1, e = 0;
  FILE *f = fopen(src, "rb");
  if (!f)
    return -1;
  while (ok && (n = fread(buf, 1, sizeof buf, f)) > 0) {
    size_t off = 0;
    while (off < n) {
      ssize_t w = write(fd, buf + off, n - off);
      if (w < 0) {
        e = errno;
        ok = 0;
        break;
      }
      off += (size_t)w;
    }
  }
  if (ok && ferror(f))
    e = EIO, ok = 0;
  fclose(f);
  /* a PEM file without a final newline would glue its END line to the next BEGIN */
  if (ok && write(fd, "\n", 1) != 1)
    e = errno, ok = 0;
  errno = e;
  return ok ? 0 : -1;
}

#ifdef LUASIP_HAVE_LIBCRYPTO
/* What is wrong with the PEM file path as a certificate (key = 0) or a private key
 * (key = 1); NULL when it reads. *out takes the object (to be freed by the caller). */
static const char *pem_check(const char *path, int key, void **out)
{
  FILE *f = fopen(path, "r");
  void *obj;
  if (!f)
    return strerror(errno);
  obj = key ? (void *)PEM_read_PrivateKey(f, NULL, NULL, NULL)
            : (void *)PEM_read_X509(f, NULL, NULL, NULL);
  fclose(f);
  ERR_clear_error();
  if (!obj)
    return key ? "no PEM private key in it (or it is encrypted)" : "no PEM certificate in it";
  *out = obj;
  return NULL;
}
#endif

void luasip_tls_dir_remove(const char *dir)
{
  char path[LUASIP_TLS_DIR_MAX + 16];
  int i;
  if (!dir || !dir[0])
    return;
  for (i = 0; tls_files[i]; i++) {
    snprintf(path, sizeof path, "%s/%s", dir, tls_files[i]);
    unlink(path);
  }
  rmdir(dir);
}

/* The fail tuple (nil, "luasip.agent: tls.<what>: <path>: <why>", "tls"), after removing
 * the half-built directory. */
static int tls_fail(lua_State *L, const char *dir, const char *what, const char *path,
                    const char *why)
{
  luasip_tls_dir_remove(dir);
  return luasip_fail(L, lua_pushfstring(L, "luasip.agent: tls.%s: %s: %s", what, path, why),
                     "tls");
}

/* Builds the certificate directory from the tls option table at idx ({ cert =, key =,
 * ca =, verify = }, already type-checked by lua/luasip/agent.lua) into dir (at least
 * LUASIP_TLS_DIR_MAX bytes) and the verification policy into *policy.  Returns 0, or
 * pushes the fail tuple and returns its count. */
int luasip_tls_dir(lua_State *L, int idx, char *dir, unsigned *policy)
{
  const char *cert, *key, *ca, *tmp = getenv("TMPDIR");
  int verify, fd, n;
  char path[LUASIP_TLS_DIR_MAX + 16];
  if (idx < 0)
    idx = lua_gettop(L) + idx + 1;
  lua_getfield(L, idx, "cert");
  cert = lua_tostring(L, -1);
  lua_getfield(L, idx, "key");
  key = lua_isstring(L, -1) ? lua_tostring(L, -1) : cert;
  lua_getfield(L, idx, "ca");
  ca = lua_tostring(L, -1);
  lua_getfield(L, idx, "verify");
  verify = lua_isnil(L, -1) || lua_toboolean(L, -1);
  lua_pop(L, 1);                  /* the strings stay on the stack while used */
  dir[0] = '\0';
#ifdef LUASIP_HAVE_LIBCRYPTO
  if (cert) {
    X509 *x = NULL;
    EVP_PKEY *k = NULL;
    const char *why = pem_check(cert, 0, (void **)&x);
    int match;
    if (why) {
      lua_pop(L, 3);
      return tls_fail(L, dir, "cert", cert, why);
    }
    if ((why = pem_check(key, 1, (void **)&k)) != NULL) {
      X509_free(x);
      lua_pop(L, 3);
      return tls_fail(L, dir, "key", key, why);
    }
    match = X509_check_private_key(x, k);
    ERR_clear_error();
    X509_free(x);
    EVP_PKEY_free(k);
    if (!match) {
      lua_pop(L, 3);
      return tls_fail(L, dir, "key", key, "does not match the certificate");
    }
  }
  if (ca) {
    X509 *x = NULL;
    const char *why = pem_check(ca, 0, (void **)&x);
    if (why) {
      lua_pop(L, 3);
      return tls_fail(L, dir, "ca", ca, why);
    }
    X509_free(x);
  } else if (verify) {
    /* no ca: the system's trusted CAs (Debian: /etc/ssl/certs/ca-certificates.crt) */
    ca = X509_get_default_cert_file();
  }
#endif
  n = snprintf(dir, LUASIP_TLS_DIR_MAX, "%s/luasip-tls-XXXXXX",
               tmp && tmp[0] && strlen(tmp) < LUASIP_TLS_DIR_MAX - 32 ? tmp : "/tmp");
  if (n <= 0 || n >= LUASIP_TLS_DIR_MAX || !mkdtemp(dir)) {
    int e = errno;
    dir[0] = '\0';
    lua_pop(L, 3);
    return tls_fail(L, dir, "cert", "temporary directory", strerror(e));
  }
  if (cert) {
    snprintf(path, sizeof path, "%s/agent.pem", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || append_file(fd, cert) < 0 || (key != cert && append_file(fd, key) < 0)) {
      int e = errno;
      if (fd >= 0)
        close(fd);
      lua_pop(L, 3);
      return tls_fail(L, dir, "cert", cert, strerror(e));
    }
    close(fd);
  }
  if (ca && access(ca, R_OK) == 0) {
    snprintf(path, sizeof path, "%s/cafile.pem", dir);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0 || append_file(fd, ca) < 0) {
      int e = errno;
      if (fd >= 0)
        close(fd);
      lua_pop(L, 3);
      return tls_fail(L, dir, "ca", ca, strerror(e));
    }
    close(fd);
  }
  lua_pop(L, 3);
  /* outgoing connections: the chain against the CAs, the date, and the host name the
   * request was sent to among the certificate's subjects; incoming: no client
   * certificate asked for */
  *policy = verify ? TPTLS_VERIFY_SUBJECTS_OUT : TPTLS_VERIFY_NONE;
  return 0;
}

/* ---------------------------------------------------------------- sips: needs TLS */

/* u names a TLS hop: a sips: URI, or a sip: one with transport=tls */
static int url_is_tls(url_t const *u)
{
  char proto[8];
  if (u->url_type == url_sips)
    return 1;
  return u->url_params && url_param(u->url_params, "transport", proto, sizeof proto) > 0 &&
         su_casematch(proto, "tls");
}

/* Why the request sip may not be sent (RFC 3261 26.2, RFC 5630: a sips: Request-URI is
 * TLS on every hop, and a sips: next hop is reached over TLS), written into buf; NULL
 * when it may.  hop: the next hop nta is given (NULL: the top Route, else the
 * Request-URI); secure: the request must go over TLS whatever its URIs say (a proxy
 * forwarding a request that came to a sips: URI). */
const char *luasip_sips_refusal(lsip_agent_t *a, sip_t const *sip, url_t const *hop,
                                int secure, char *buf, size_t size)
{
  nta_agent_t *nta = luasip_agent_nta(a);
  tport_t *tp;
  char where[200];
  if (!sip->sip_request)
    return NULL;
  secure = secure || sip->sip_request->rq_url->url_type == url_sips;
  if (!hop)
    hop = sip->sip_route ? sip->sip_route->r_url : sip->sip_request->rq_url;
  if (secure && !url_is_tls(hop)) {
    issize_t n = url_e(where, sizeof where, hop);
    snprintf(buf, size, "a sips: request goes over TLS only, and its next hop %s is not TLS",
             n > 0 && (size_t)n < sizeof where ? where : "");
    return buf;
  }
  if (!url_is_tls(hop))
    return NULL;
  for (tp = nta ? tport_primaries(nta_agent_tports(nta)) : NULL; tp; tp = tport_next(tp))
    if (tport_has_tls(tp))
      return NULL;
  snprintf(buf, size, "a sips: request needs a TLS transport (listen on a sips: URI)");
  return buf;
}
