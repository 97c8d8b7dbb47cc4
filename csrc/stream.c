/* SPDX-License-Identifier: MIT
 * luasip.stream: a client byte stream (TCP on loopback or a Unix socket) watched by the
 * su_root, for services such as Redis that luasip talks to without blocking the loop.
 * Reads arrive as ("stream_data", s) events (s:take() returns the bytes); writes are
 * queued and flushed when the socket is writable; EOF or an error gives
 * ("stream_closed", s).  The userdata is anchored while the socket is open.
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

typedef struct lsip_stream {
  lsip_obj_t obj;
  int fd;
  int reg;                    /* su_root registration index, or -1 */
  su_wait_t wait[1];
  char *in, *out;             /* received, not yet taken / queued, not yet written */
  size_t in_len, out_len, out_off;
  int events;
  int closed;
  char error[96];
} lsip_stream_t;

static int stream_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg);

static void stream_shut(lsip_stream_t *s)
{
  if (s->reg >= 0) {
    su_root_deregister(luasip_S->root, s->reg);
    s->reg = -1;
  }
  if (s->fd >= 0) {
    close(s->fd);
    s->fd = -1;
  }
  s->closed = 1;
}

static void stream_destroy(lsip_obj_t *obj)
{
  lsip_stream_t *s = (lsip_stream_t *)obj;
  stream_shut(s);
  free(s->in);
  free(s->out);
  luasip_freeobj(obj);
}

static int stream_watch(lsip_stream_t *s, int events)
{
  if (s->reg >= 0 && s->events == events)
    return 0;
  if (s->reg >= 0) {
    su_root_deregister(luasip_S->root, s->reg);
    s->reg = -1;
  }
  if (su_wait_create(s->wait, s->fd, events) < 0)
    return -1;
  s->reg = su_root_register(luasip_S->root, s->wait, stream_event, (su_wakeup_arg_t *)s, 0);
  s->events = events;
  return s->reg < 0 ? -1 : 0;
}

static void stream_fail(lsip_stream_t *s, const char *why)
{
  snprintf(s->error, sizeof s->error, "%s", why);
  stream_shut(s);
  luasip_bridge("stream_closed", &s->obj, NULL);
  luasip_unanchor(luasip_L(), &s->obj);
}

static int stream_flush(lsip_stream_t *s)
{
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

static int stream_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_stream_t *s = (lsip_stream_t *)arg;
  int revents = su_wait_events(w, s->fd);
  (void)m;
  if (s->closed)
    return 0;
  if (revents & SU_WAIT_OUT) {
    if (stream_flush(s) < 0) {
      stream_fail(s, strerror(errno));
      return 0;
    }
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
      luasip_bridge("stream_data", &s->obj, NULL);
    } else if (n == 0) {
      stream_fail(s, "closed by peer");
    } else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
      stream_fail(s, strerror(errno));
    }
  }
  return 0;
}

/* stream_connect(address, port | nil) -> stream | nil, err, code
 * address: an IPv4/IPv6 literal with port, or a Unix socket path (port nil). */
int luasip_stream_connect(lua_State *L)
{
  const char *addr = luaL_checkstring(L, 1);
  int port = (int)luaL_optinteger(L, 2, 0);
  struct sockaddr_storage ss;
  socklen_t len;
  lsip_stream_t *s;
  int fd, one = 1;
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
  }
  fd = socket(ss.ss_family, SOCK_STREAM, 0);
  if (fd < 0)
    return luasip_fail(L, strerror(errno), "connect");
  /* a local service: the connect completes (or fails) at once; I/O is non-blocking */
  if (connect(fd, (struct sockaddr *)&ss, len) < 0) {
    int e = errno;
    close(fd);
    return luasip_fail(L, strerror(e), "connect");
  }
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (ss.ss_family != AF_UNIX)
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  s = luasip_newobj(L, sizeof *s, LUASIP_STREAM, stream_destroy);
  s->fd = fd;
  s->reg = -1;
  if (stream_watch(s, SU_WAIT_IN) < 0) {
    stream_shut(s);
    return luasip_fail(L, "cannot watch socket", "connect");
  }
  luasip_anchor(L, &s->obj, -1);
  return 1;
}

static lsip_stream_t *stream_check(lua_State *L)
{
  return (lsip_stream_t *)luasip_checkobj(L, 1, LUASIP_STREAM);
}

/* s:send(bytes) -> true | nil, err, code */
static int stream_send(lua_State *L)
{
  lsip_stream_t *s = stream_check(L);
  size_t n;
  const char *data = luaL_checklstring(L, 2, &n);
  char *p;
  if (s->closed)
    return luasip_fail(L, s->error[0] ? s->error : "closed", "closed");
  p = realloc(s->out, s->out_len + n);
  if (!p)
    return luasip_fail(L, "out of memory", "memory");
  memcpy(p + s->out_len, data, n);
  s->out = p;
  s->out_len += n;
  if (stream_flush(s) < 0) {
    const char *e = strerror(errno);
    snprintf(s->error, sizeof s->error, "%s", e);
    stream_shut(s);
    luasip_unanchor(L, &s->obj);
    return luasip_fail(L, e, "closed");
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
  if (s && !s->closed) {
    stream_shut(s);
    luasip_unanchor(L, &s->obj);
  }
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

static const luaL_Reg stream_methods[] = {
  {"send", stream_send},
  {"take", stream_take},
  {"close", stream_close},
  {"error", stream_error},
  {NULL, NULL}
};

void luasip_stream_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_STREAM, stream_methods, NULL);
}
