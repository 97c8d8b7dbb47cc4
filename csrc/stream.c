/* SPDX-License-Identifier: MIT
 * luasip.stream: a client byte stream (TCP or a Unix socket) watched by the su_root, for
 * services such as Redis that luasip talks to without blocking the loop.  The connect is
 * non-blocking: a pending one ends with ("stream_connected", s) or ("stream_closed", s).
 * Reads arrive as ("stream_data", s) events (s:take() returns the bytes); writes are
 * queued (also while connecting) and flushed when the socket is writable; EOF or an
 * error gives ("stream_closed", s).  The userdata is anchored until the socket closes.
 * A datagram stream (stream_connect(ip, port, "udp"): a connected UDP socket, for
 * control protocols such as rtpengine's ng) keeps message boundaries instead: each
 * s:send is one datagram, each datagram received is one ("dgram_data", s) event whose
 * s:take() returns it; an ICMP refusal gives ("dgram_error", s) and the socket stays
 * open; other errors ("dgram_closed", s).
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "luasip.h"

#define LUASIP_STREAM "luasip.stream"

/* A stream's life, changed only by stream_to():
 *   CONNECTING  connect() in progress: watched for writability, writes queued
 *   OPEN        connected: watched for input (and output while a write is queued)
 *   FAILED      the socket failed and is closed; Lua is being told (still anchored, so
 *               the bridge can push it)
 *   CLOSED      socket closed and unwatched, unanchored; s->error says why (or empty) */
typedef enum { STREAM_CONNECTING, STREAM_OPEN, STREAM_FAILED, STREAM_CLOSED } stream_state_t;

typedef struct lsip_stream {
  lsip_obj_t obj;
  stream_state_t state;
  int fd;
  int reg;                    /* su_root registration index, or -1 */
  su_wait_t wait[1];
  char *in, *out;             /* received, not yet taken / queued, not yet written */
  size_t in_len, out_len, out_off;
  int events;
  unsigned dgram:1;           /* UDP: one send, one datagram; one event per datagram */
  char error[96];
} lsip_stream_t;

static int stream_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg);

/* errno text as luasip reports runtime failures: "connection refused" */
static void set_error(lsip_stream_t *s, const char *why)
{
  snprintf(s->error, sizeof s->error, "%s", why);
  if (s->error[0] >= 'A' && s->error[0] <= 'Z' && s->error[1] >= 'a' && s->error[1] <= 'z')
    s->error[0] = (char)(s->error[0] - 'A' + 'a');
}

static void stream_unwatch(lsip_stream_t *s)
{
  if (s->reg >= 0) {
    su_root_deregister(luasip_S->root, s->reg);
    s->reg = -1;
  }
}

/* The one transition function (see stream_state_t).  why: the error, for FAILED and
 * CLOSED (NULL: closed by Lua, or the error is already set). */
static void stream_to(lsip_stream_t *s, stream_state_t to, const char *why)
{
  if (s->state == STREAM_CLOSED || s->state == to)
    return;
  s->state = to;
  if (to != STREAM_FAILED && to != STREAM_CLOSED)
    return;
  if (why)
    set_error(s, why);
  stream_unwatch(s);
  if (s->fd >= 0) {
    close(s->fd);
    s->fd = -1;
  }
  if (to == STREAM_CLOSED && !luasip_S->closing)
    luasip_unanchor(luasip_L(), &s->obj);
}

static void stream_destroy(lsip_obj_t *obj)
{
  lsip_stream_t *s = (lsip_stream_t *)obj;
  stream_to(s, STREAM_CLOSED, NULL);  /* only lua_close collects an open stream */
  free(s->in);
  free(s->out);
  luasip_freeobj(obj);
}

static int stream_watch(lsip_stream_t *s, int events)
{
  if (s->reg >= 0 && s->events == events)
    return 0;
  stream_unwatch(s);
  if (su_wait_create(s->wait, s->fd, events) < 0)
    return -1;
  s->reg = su_root_register(luasip_S->root, s->wait, stream_event, (su_wakeup_arg_t *)s, 0);
  s->events = events;
  return s->reg < 0 ? -1 : 0;
}

/* Closes on an error seen in a loop callback and tells Lua ("stream_closed"). */
static void stream_fail(lsip_stream_t *s, const char *why)
{
  stream_to(s, STREAM_FAILED, why);
  luasip_bridge(s->dgram ? "dgram_closed" : "stream_closed", &s->obj, NULL);
  stream_to(s, STREAM_CLOSED, NULL);  /* Lua may have closed it already */
}

static int stream_flush(lsip_stream_t *s)
{
  if (s->state == STREAM_CONNECTING)
    return 0;                       /* sent once connected */
  while (s->out_off < s->out_len) {
    ssize_t n = send(s->fd, s->out + s->out_off, s->out_len - s->out_off, MSG_NOSIGNAL);
    if (n < 0) {
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        break;
      if (errno == EINTR)
        continue;
      return -1;
    }
    s->out_off += (size_t)n;
  }
  if (s->out_off == s->out_len)
    s->out_off = s->out_len = 0;
  return stream_watch(s, s->out_len ? SU_WAIT_IN | SU_WAIT_OUT : SU_WAIT_IN);
}

/* the pending connect ended (the socket became writable): SO_ERROR says how */
static void stream_connect_done(lsip_stream_t *s)
{
  int err = 0;
  socklen_t len = sizeof err;
  if (getsockopt(s->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
    err = errno;
  if (err) {
    stream_fail(s, strerror(err));
    return;
  }
  stream_to(s, STREAM_OPEN, NULL);
  if (stream_flush(s) < 0) {        /* what Lua queued while connecting */
    stream_fail(s, strerror(errno));
    return;
  }
  luasip_bridge("stream_connected", &s->obj, NULL);
}

/* A datagram socket is readable: each datagram (at most 32 a turn, so one busy peer
 * does not hold the loop) is one event; Lua takes it during the event.  A refusal (the
 * ICMP port unreachable of a connected UDP socket) is reported and the socket stays. */
static void dgram_receive(lsip_stream_t *s)
{
  static char buf[65536];           /* one loop thread; Lua copies it in s:take() */
  int i;
  for (i = 0; i < 32 && s->state == STREAM_OPEN; i++) {
    ssize_t n = recv(s->fd, buf, sizeof buf, 0);
    if (n < 0) {
      if (errno == EINTR)
        continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        return;
      if (errno == ECONNREFUSED) {
        set_error(s, strerror(errno));
        luasip_bridge("dgram_error", &s->obj, NULL);
        continue;                   /* re-read the state: Lua may have closed it */
      }
      stream_fail(s, strerror(errno));
      return;
    }
    s->in = buf;
    s->in_len = (size_t)n;
    luasip_bridge("dgram_data", &s->obj, NULL);
    s->in = NULL;                   /* only valid during the event */
    s->in_len = 0;
  }
}

static int stream_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_stream_t *s = (lsip_stream_t *)arg;
  int revents = su_wait_events(w, s->fd);
  (void)m;
  if (s->state == STREAM_CONNECTING) {
    if (revents & (SU_WAIT_OUT | SU_WAIT_ERR | SU_WAIT_HUP))
      stream_connect_done(s);
    return 0;                       /* input, if any, comes with the next event */
  }
  if (s->state != STREAM_OPEN)
    return 0;
  if (revents & SU_WAIT_OUT) {
    if (stream_flush(s) < 0) {
      stream_fail(s, strerror(errno));
      return 0;
    }
  }
  if (s->dgram) {
    if (revents & (SU_WAIT_IN | SU_WAIT_HUP | SU_WAIT_ERR))
      dgram_receive(s);
    return 0;
  }
  if (revents & (SU_WAIT_IN | SU_WAIT_HUP | SU_WAIT_ERR)) {
    char buf[16384];
    ssize_t n = recv(s->fd, buf, sizeof buf, 0);
    if (n > 0) {
      char *p = realloc(s->in, s->in_len + (size_t)n);
      if (!p) {
        stream_fail(s, "out of memory");
        return 0;
      }
      memcpy(p + s->in_len, buf, (size_t)n);
      s->in = p;
      s->in_len += (size_t)n;
      luasip_bridge("stream_data", &s->obj, NULL);   /* nothing of s is used after */
    } else if (n == 0) {
      stream_fail(s, "closed by peer");
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      stream_fail(s, strerror(errno));
    }
  }
  return 0;
}

/* stream_connect(address, port | nil [, "udp"]) -> stream | nil, err, code
 * address: an IPv4/IPv6 literal with port, or a Unix socket path (port nil); "udp": a
 * connected datagram socket (an IP address and port only). */
int luasip_stream_connect(lua_State *L)
{
  const char *addr = luaL_checkstring(L, 1);
  int port = (int)luaL_optinteger(L, 2, 0);
  int dgram = lua_isstring(L, 3) && !strcmp(lua_tostring(L, 3), "udp");
  struct sockaddr_storage ss;
  socklen_t len;
  lsip_stream_t *s;
  int fd, rc, one = 1;
  memset(&ss, 0, sizeof ss);
  if (!lua_isnoneornil(L, 2)) {
    struct sockaddr_in *in4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
      in4->sin_family = AF_INET;
      in4->sin_port = htons((unsigned short)port);
      len = sizeof *in4;
    } else if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
      in6->sin6_family = AF_INET6;
      in6->sin6_port = htons((unsigned short)port);
      len = sizeof *in6;
    } else {
      return luaL_error(L, "luasip.stream_connect: address must be an IP literal");
    }
  } else {
    struct sockaddr_un *un = (struct sockaddr_un *)&ss;
    if (strlen(addr) >= sizeof un->sun_path)
      return luaL_error(L, "luasip.stream_connect: socket path too long");
    un->sun_family = AF_UNIX;
    strcpy(un->sun_path, addr);
    len = sizeof *un;
    if (dgram)
      return luaL_error(L, "luasip.stream_connect: udp needs an IP address and port");
  }
  /* the userdata first (it owns the fd from here on), closed until the socket exists */
  s = luasip_newobj(L, sizeof *s, LUASIP_STREAM, stream_destroy);
  s->state = STREAM_CLOSED;
  s->fd = -1;
  s->reg = -1;
  s->dgram = (unsigned)dgram;
  fd = socket(ss.ss_family, (dgram ? SOCK_DGRAM : SOCK_STREAM) | SOCK_NONBLOCK | SOCK_CLOEXEC,
              0);
  if (fd < 0) {
    set_error(s, strerror(errno));
    return luasip_fail(L, s->error, "connect");
  }
  s->fd = fd;
  if (ss.ss_family != AF_UNIX && !dgram)
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  /* non-blocking: a far or silent peer must not stall the loop; the outcome of an
   * EINPROGRESS connect is read from SO_ERROR once the socket becomes writable (an
   * interrupted one goes on in the background too) */
  rc = connect(fd, (struct sockaddr *)&ss, len);
  if (rc < 0 && errno != EINPROGRESS && errno != EINTR) {
    set_error(s, strerror(errno));
    close(fd);
    s->fd = -1;
    return luasip_fail(L, s->error, "connect");
  }
  s->state = rc == 0 ? STREAM_OPEN : STREAM_CONNECTING;  /* born: from here on stream_to */
  luasip_anchor(L, &s->obj, -1);
  if (stream_watch(s, rc == 0 ? SU_WAIT_IN : SU_WAIT_OUT) < 0) {
    stream_to(s, STREAM_CLOSED, "cannot watch socket");
    return luasip_fail(L, s->error, "connect");
  }
  return 1;
}

static lsip_stream_t *stream_check(lua_State *L)
{
  return (lsip_stream_t *)luasip_checkobj(L, 1, LUASIP_STREAM);
}

/* s:send(bytes) -> true | nil, err, code   (queued while connecting) */
static int stream_send(lua_State *L)
{
  lsip_stream_t *s = stream_check(L);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  char *p;
  if (s->state == STREAM_FAILED || s->state == STREAM_CLOSED)
    return luasip_fail(L, s->error[0] ? s->error : "closed", "closed");
  if (s->dgram) {
    /* one datagram, never queued: a full socket buffer drops it (the caller retransmits) */
    while (send(s->fd, data, n, MSG_NOSIGNAL) < 0) {
      if (errno == EINTR)
        continue;
      set_error(s, strerror(errno));
      return luasip_fail(L, s->error, errno == ECONNREFUSED ? "refused" : "send");
    }
    lua_pushboolean(L, 1);
    return 1;
  }
  p = realloc(s->out, s->out_len + n);
  if (!p)
    return luasip_fail(L, "out of memory", "memory");
  memcpy(p + s->out_len, data, n);
  s->out = p;
  s->out_len += n;
  if (stream_flush(s) < 0) {
    stream_to(s, STREAM_CLOSED, strerror(errno));
    return luasip_fail(L, s->error, "closed");
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* s:take() -> bytes received since the last take ("" when none) */
static int stream_take(lua_State *L)
{
  lsip_stream_t *s = stream_check(L);
  lua_pushlstring(L, s->in ? s->in : "", s->in_len);
  s->in_len = 0;
  return 1;
}

/* s:close() -> true (idempotent) */
static int stream_close(lua_State *L)
{
  lsip_stream_t *s = (lsip_stream_t *)luasip_testobj(L, 1, LUASIP_STREAM);
  if (s)
    stream_to(s, STREAM_CLOSED, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* s:error() -> why it closed, or nil */
static int stream_error(lua_State *L)
{
  lsip_stream_t *s = stream_check(L);
  if (!s->error[0])
    return 0;
  lua_pushstring(L, s->error);
  return 1;
}

/* s:state() -> "connecting" | "open" | "closed" */
static int stream_state(lua_State *L)
{
  static const char *const names[] = { "connecting", "open", "closed", "closed" };
  lsip_stream_t *s = (lsip_stream_t *)luasip_testobj(L, 1, LUASIP_STREAM);
  if (!s && !luaL_testudata(L, 1, LUASIP_STREAM))
    luaL_checkudata(L, 1, LUASIP_STREAM);
  lua_pushstring(L, s ? names[s->state] : "closed");
  return 1;
}

static const luaL_Reg stream_methods[] = {
  {"send", stream_send},
  {"take", stream_take},
  {"close", stream_close},
  {"error", stream_error},
  {"state", stream_state},
  {NULL, NULL}
};

void luasip_stream_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_STREAM, stream_methods, NULL);
}
