/* SPDX-License-Identifier: MIT
 * STUN Binding on the SIP UDP ports (RFC 5389; keep-alives of RFC 5626 4.4.2 / 8.4).
 *
 * sofia's UDP transport hands every datagram whose first byte is 0 to a STUN server
 * plugged into tport.  Its built-in one (stun_mini.c) prints each request to stderr,
 * bypassing sip.set_logger, and loses 12 bytes on every malformed request
 * (send_stun_error) -- remote, unauthenticated memory growth.  This plug-in replaces it:
 * no state, no allocation, no log line, one sendto per answer.
 *
 *   Binding request, RFC 5389 (magic cookie) -> success with XOR-MAPPED-ADDRESS
 *   Binding request, RFC 3489 (no cookie)    -> success with MAPPED-ADDRESS
 *   a comprehension-required attribute we do not know -> 420 with UNKNOWN-ATTRIBUTES
 *   FINGERPRINT in the request -> checked (a wrong one: dropped) and put in the answer
 *   anything else (indications, other methods, a length that does not add up, an
 *   attribute running past the end) -> dropped without an answer (RFC 5389 7.3)
 *
 * USERNAME and MESSAGE-INTEGRITY are ignored: this usage has no credentials (RFC 5626
 * 8.4: the Binding requests of keep-alives carry none).
 *
 * The plug-in is process-wide (tport keeps one pointer) and must be in place before the
 * first tport is created; luasip_stun_plug_in() says whether it is, and agents created
 * without it turn sofia's STUN server off (TPTAG_STUN_SERVER(0)) instead.
 */
#include <string.h>
#include <sys/socket.h>
#include <netinet/in.h>

#include <sofia-sip/su.h>
#include <sofia-sip/su_tag.h>
#include <sofia-sip/su_wait.h>
#define TPORT_STUN_SERVER_T struct luasip_stun_s
#include <sofia-sip/msg_addr.h>
#include <sofia-sip/tport.h>
#include <sofia-sip/tport_plugins.h>

#include "luasip.h"

struct luasip_stun_s {
  int unused;
};

#define STUN_HEADER 20
#define STUN_COOKIE 0x2112A442u
#define STUN_BINDING_REQUEST 0x0001
#define STUN_BINDING_SUCCESS 0x0101
#define STUN_BINDING_ERROR 0x0111
#define ATTR_MAPPED_ADDRESS 0x0001
#define ATTR_USERNAME 0x0006
#define ATTR_MESSAGE_INTEGRITY 0x0008
#define ATTR_ERROR_CODE 0x0009
#define ATTR_UNKNOWN_ATTRIBUTES 0x000A
#define ATTR_XOR_MAPPED_ADDRESS 0x0020
#define ATTR_FINGERPRINT 0x8028
#define FINGERPRINT_XOR 0x5354554Eu
#define UNKNOWN_MAX 8               /* types listed in a 420 */
#define ANSWER_MAX 128              /* the largest answer below is 20 + 12 + 24 + 20 + 8 */

static unsigned get16(const uint8_t *p) { return (unsigned)p[0] << 8 | p[1]; }

static void put16(uint8_t *p, unsigned v)
{
  p[0] = (uint8_t)(v >> 8);
  p[1] = (uint8_t)v;
}

static void put32(uint8_t *p, uint32_t v)
{
  put16(p, v >> 16);
  put16(p + 2, v & 0xffff);
}

/* CRC-32 of ISO 3309 / ITU-T V.42, as FINGERPRINT uses it (RFC 5389 15.5); bitwise:
 * the messages are a few dozen bytes */
static uint32_t crc32_of(const uint8_t *p, size_t n)
{
  uint32_t c = 0xffffffffu;
  while (n--) {
    c ^= *p++;
    for (int k = 0; k < 8; k++)
      c = (c >> 1) ^ (0xedb88320u & (0u - (c & 1)));
  }
  return ~c;
}

/* appends one attribute (type, value of len bytes, padded to 4) at buf + *n */
static void put_attr(uint8_t *buf, size_t *n, unsigned type, const void *value, size_t len)
{
  put16(buf + *n, type);
  put16(buf + *n + 2, (unsigned)len);
  memcpy(buf + *n + 4, value, len);
  memset(buf + *n + 4 + len, 0, (4 - len % 4) % 4);
  *n += 4 + (len + 3) / 4 * 4;
}

/* the (XOR-)MAPPED-ADDRESS value of the sender's address into v; its length, 0 for a
 * family STUN cannot express */
static size_t mapped_address(uint8_t *v, const void *addr, socklen_t addrlen,
                             const uint8_t *request, int xor)
{
  const struct sockaddr *sa = addr;
  uint8_t mask[16];
  size_t alen;
  const uint8_t *ip;
  unsigned port;

  memcpy(mask, request + 4, 16);    /* the cookie, then the transaction id */
  if (sa->sa_family == AF_INET && addrlen >= (socklen_t)sizeof(struct sockaddr_in)) {
    const struct sockaddr_in *in = addr;
    ip = (const uint8_t *)&in->sin_addr;
    port = ntohs(in->sin_port);
    alen = 4;
    v[1] = 0x01;
  }
  else if (sa->sa_family == AF_INET6 && addrlen >= (socklen_t)sizeof(struct sockaddr_in6)) {
    const struct sockaddr_in6 *in6 = addr;
    ip = (const uint8_t *)&in6->sin6_addr;
    port = ntohs(in6->sin6_port);
    alen = 16;
    v[1] = 0x02;
  }
  else
    return 0;
  v[0] = 0;
  put16(v + 2, xor ? port ^ (STUN_COOKIE >> 16) : port);
  for (size_t i = 0; i < alen; i++)
    v[4 + i] = xor ? ip[i] ^ mask[i] : ip[i];
  return 4 + alen;
}

/* what to answer: STUN_BINDING_SUCCESS, STUN_BINDING_ERROR (the unknown types in
 * unknown[], their count in *n_unknown) or 0 (drop); *fingerprint set when the request
 * carried a correct one */
static unsigned check_request(const uint8_t *m, size_t n, unsigned *unknown,
                              size_t *n_unknown, int *fingerprint)
{
  size_t off = STUN_HEADER;

  *n_unknown = 0;
  *fingerprint = 0;
  if (n < STUN_HEADER || (m[0] & 0xc0) || get16(m + 2) % 4 || get16(m + 2) != n - STUN_HEADER)
    return 0;
  if (get16(m) != STUN_BINDING_REQUEST)
    return 0;                       /* an indication, a response, another method */
  while (off < n) {
    unsigned type, len;
    size_t padded;
    if (n - off < 4)
      return 0;
    type = get16(m + off);
    len = get16(m + off + 2);
    padded = ((size_t)len + 3) / 4 * 4;
    if (n - off - 4 < padded)
      return 0;                     /* runs past the end */
    if (type == ATTR_FINGERPRINT) {
      uint8_t copy[4];
      if (len != 4 || off + 8 != n)
        return 0;                   /* it is the last attribute, 4 bytes */
      put32(copy, crc32_of(m, off) ^ FINGERPRINT_XOR);
      if (memcmp(copy, m + off + 4, 4))
        return 0;
      *fingerprint = 1;
    }
    else if (type < 0x8000 && type != ATTR_USERNAME && type != ATTR_MESSAGE_INTEGRITY &&
             *n_unknown < UNKNOWN_MAX)
      unknown[(*n_unknown)++] = type;
    off += 4 + padded;
  }
  return *n_unknown ? STUN_BINDING_ERROR : STUN_BINDING_SUCCESS;
}

/* builds the answer to request m (n bytes) from addr into buf; its length, 0: none */
static size_t stun_answer(uint8_t *buf, const uint8_t *m, size_t n, const void *addr,
                          socklen_t addrlen)
{
  unsigned unknown[UNKNOWN_MAX];
  size_t n_unknown, len = STUN_HEADER;
  int fingerprint;
  unsigned type = check_request(m, n, unknown, &n_unknown, &fingerprint);
  uint8_t value[40];

  if (!type)
    return 0;
  put16(buf, type);
  memcpy(buf + 4, m + 4, 16);       /* the cookie (or RFC 3489's id) and transaction id */
  if (type == STUN_BINDING_SUCCESS) {
    int rfc5389 = get16(m + 4) == STUN_COOKIE >> 16 && get16(m + 6) == (STUN_COOKIE & 0xffff);
    size_t vlen = mapped_address(value, addr, addrlen, m, rfc5389);
    if (!vlen)
      return 0;
    put_attr(buf, &len, rfc5389 ? ATTR_XOR_MAPPED_ADDRESS : ATTR_MAPPED_ADDRESS, value, vlen);
  }
  else {
    static const char reason[] = "Unknown Attribute";
    value[0] = value[1] = 0;
    value[2] = 4;                   /* class 4, number 20 */
    value[3] = 20;
    memcpy(value + 4, reason, sizeof reason - 1);
    put_attr(buf, &len, ATTR_ERROR_CODE, value, 4 + sizeof reason - 1);
    for (size_t i = 0; i < n_unknown; i++)
      put16(value + 2 * i, unknown[i]);
    put_attr(buf, &len, ATTR_UNKNOWN_ATTRIBUTES, value, 2 * n_unknown);
  }
  if (fingerprint) {
    put16(buf + 2, (unsigned)(len + 8 - STUN_HEADER));
    put16(buf + len, ATTR_FINGERPRINT);
    put16(buf + len + 2, 4);
    put32(buf + len + 4, crc32_of(buf, len) ^ FINGERPRINT_XOR);
    len += 8;
  }
  else
    put16(buf + 2, (unsigned)(len - STUN_HEADER));
  return len;
}

static struct luasip_stun_s the_server;

static struct luasip_stun_s *stun_create(su_root_t *root, tagi_t const *tags)
{
  (void)root;
  (void)tags;
  return &the_server;
}

static void stun_destroy(struct luasip_stun_s *server) { (void)server; }

static int stun_socket(struct luasip_stun_s *server, su_socket_t socket)
{
  (void)server;
  (void)socket;
  return 0;
}

static void stun_request(struct luasip_stun_s *server, su_socket_t socket, void *msg,
                         ssize_t msglen, void *addr, socklen_t addrlen)
{
  uint8_t answer[ANSWER_MAX];
  size_t n;

  (void)server;
  if (msglen < 0)
    return;
  n = stun_answer(answer, msg, (size_t)msglen, addr, addrlen);
  if (n)
    (void)sendto(socket, answer, n, 0, addr, addrlen);  /* UDP: a lost answer is retried */
}

/* tport refuses a vtable whose vst_size is not larger than its own struct */
static const struct {
  tport_stun_server_vtable_t vt;
  int end;
} plug = {
  { (int)sizeof plug, stun_create, stun_destroy, stun_socket, stun_socket, stun_request },
  0
};

static int plugged = -1;            /* -1: not tried yet */

int luasip_stun_plug_in(void)
{
  if (plugged < 0)
    plugged = tport_plug_in_stun_server(&plug.vt) == 0;
  return plugged;
}
