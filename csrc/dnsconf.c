/*
 * The resolver configuration luasip hands to sofia's resolver (SRESTAG_RESOLV_CONF).
 *
 * sofia-sip 1.12's sres loops forever inside sres_query() when connect() to a name
 * server fails (ENETUNREACH on a host or namespace without a route to it, an IPv6
 * server on a host without IPv6): sres_send_dns_query marks the server with
 * dns_error = SRES_TIME_MAX, and sres_next_server's "dns_error + DNS_ERROR_TIMEOUT < now"
 * overflows, which GCC compiles as "selectable again". The process then spins in one
 * call, never returning to the loop (issue: "Deaf after a BYE that needs DNS").
 *
 * So sres reads a copy of a resolv.conf in which only the name servers a UDP socket can
 * connect() to now are kept. It lives in a memfd read through /proc/self/fd/N; agents
 * re-check it every LUASIP_DNSCONF_MS (agent.c), and sres rereads it when its mtime
 * changes (sres looks at most every 5 s). With no reachable server sres falls back to
 * 127.0.0.1, where a query fails at once (ICMP port unreachable) and the transaction
 * gets 503.
 *
 * The source is the system's /etc/resolv.conf (one memfd per process, shared by every
 * agent of every Lua state, living until exit), or what an agent's dns option names
 * (sip.agent{ dns = { servers = {...} } or { resolv_conf = path } }): a memfd of that
 * agent's own, closed with it. sres takes one port for all its servers (a "port N" line,
 * sres.c sres_parse_config), so servers = {"127.0.0.1:5353"} becomes
 * "nameserver 127.0.0.1" + "port 5353", and every server must use the same port.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "luasip.h"

#include <sofia-resolv/sres_cache.h>
#include <sofia-resolv/sres_record.h>

#define SYSTEM_CONF "/etc/resolv.conf"
#define SYSTEM_HOSTS "/etc/hosts"
#define HOSTS_TTL (10 * 365 * 24 * 3600)   /* hosts entries never expire */
#define CONF_MAX 8192

struct lsip_dnsconf {
  int fd;
  char path[64];             /* /proc/self/fd/N */
  char *file;                /* the resolv.conf read (NULL: servers below) */
  char *servers;             /* "nameserver a\n...port p\n" from dns.servers */
  char text[CONF_MAX];       /* what the memfd holds now */
  size_t len;
  time_t mtime;
};

static lsip_dnsconf_t system_conf = { -1, "", NULL, NULL, "", 0, 0 };

/* 1 when a UDP socket connects to the name server written in s (an address, IPv6 with
 * an optional %scope) on port, 0 when it does not, -1 when s is not an address sres
 * takes */
static int reachable(const char *s, unsigned port)
{
  struct sockaddr_storage ss;
  socklen_t len;
  char host[64];
  const char *scope;
  int fd, ok;
  memset(&ss, 0, sizeof ss);
  scope = strchr(s, '%');
  if (strlen(s) >= sizeof host)
    return -1;
  strcpy(host, s);
  if (scope)
    host[scope - s] = '\0';
  if (inet_pton(AF_INET, host, &((struct sockaddr_in *)&ss)->sin_addr) == 1) {
    ss.ss_family = AF_INET;
    ((struct sockaddr_in *)&ss)->sin_port = htons(port);
    len = sizeof(struct sockaddr_in);
  } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    ss.ss_family = AF_INET6;
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons(port);
    if (scope)
      ((struct sockaddr_in6 *)&ss)->sin6_scope_id = if_nametoindex(scope + 1);
    len = sizeof(struct sockaddr_in6);
  } else {
    return -1;
  }
  fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return 0;
  ok = connect(fd, (struct sockaddr *)&ss, len) == 0;
  close(fd);
  return ok;
}

/* the "port N" of a configuration (sres's default 53) */
static unsigned conf_port(FILE *f)
{
  char line[512];
  unsigned long port = 53;
  while (fgets(line, sizeof line, f)) {
    unsigned long p;
    if (sscanf(line, " port %lu", &p) == 1 && p < 65536)
      port = p;
  }
  rewind(f);
  return (unsigned)port;
}

/* c's configuration without the name servers that cannot be reached, into out */
static size_t filter(lsip_dnsconf_t *c, char *out, size_t size)
{
  char line[512];
  size_t n = 0;
  unsigned port;
  FILE *f = c->servers ? fmemopen(c->servers, strlen(c->servers), "r")
                       : fopen(c->file ? c->file : SYSTEM_CONF, "r");
  if (!f)
    return 0;
  port = conf_port(f);
  while (fgets(line, sizeof line, f)) {
    char addr[128];
    size_t l = strlen(line);
    if (sscanf(line, " nameserver %127s", addr) == 1 && reachable(addr, port) == 0)
      continue;
    if (n + l + 1 >= size)
      break;
    memcpy(out + n, line, l);
    n += l;
    if (line[l - 1] != '\n')
      out[n++] = '\n';
  }
  fclose(f);
  return n;
}

void luasip_dnsconf_refresh(lsip_dnsconf_t *c)
{
  char text[CONF_MAX];
  size_t n;
  struct timespec times[2];
  time_t now = time(NULL);
  if (!c)
    c = &system_conf;
  if (c->fd < 0)
    return;
  n = filter(c, text, sizeof text);
  if (n == c->len && memcmp(text, c->text, n) == 0)
    return;
  if (ftruncate(c->fd, 0) < 0 || pwrite(c->fd, text, n, 0) != (ssize_t)n) {
    luasip_log(2, "resolver configuration: cannot write the memfd: %s", strerror(errno));
    return;
  }
  memcpy(c->text, text, n);
  c->len = n;
  /* sres compares whole seconds: every change must move the mtime forward */
  c->mtime = now > c->mtime ? now : c->mtime + 1;
  times[0].tv_sec = times[1].tv_sec = c->mtime;
  times[0].tv_nsec = times[1].tv_nsec = 0;
  futimens(c->fd, times);
}

/* c's memfd, made on first use (0) or -1 */
static int conf_open(lsip_dnsconf_t *c)
{
  if (c->fd >= 0)
    return 0;
  c->fd = memfd_create("luasip-resolv.conf", MFD_CLOEXEC);
  if (c->fd < 0) {
    luasip_log(2, "resolver configuration: memfd_create: %s", strerror(errno));
    return -1;
  }
  snprintf(c->path, sizeof c->path, "/proc/self/fd/%d", c->fd);
  c->len = (size_t)-1;
  return 0;
}

const char *luasip_dnsconf_path(lsip_dnsconf_t *c)
{
  if (!c)
    c = &system_conf;
  if (conf_open(c) < 0)
    return c == &system_conf ? NULL : c->file;   /* the file as it is */
  luasip_dnsconf_refresh(c);                     /* as of now, for a new agent or query */
  return c->path;
}

void luasip_dnsconf_free(lsip_dnsconf_t *c)
{
  if (!c || c == &system_conf)
    return;
  if (c->fd >= 0)
    close(c->fd);
  free(c->file);
  free(c->servers);
  free(c);
}

/* "a.b.c.d[:port]", "[v6][:port]" or a bare IPv6 address: the address into addr and the
 * port (53 when none); -1 when s is none of these */
static int parse_server(const char *s, char *addr, size_t size, unsigned *port)
{
  const char *end, *colon;
  char *stop;
  unsigned long p = 53;
  unsigned char buf[sizeof(struct in6_addr)];
  size_t n;
  if (s[0] == '[') {
    end = strchr(s, ']');
    if (!end)
      return -1;
    n = (size_t)(end - s - 1);
    s++;
    colon = end[1] == ':' ? end + 1 : (end[1] ? NULL : end + 1);
    if (!colon)
      return -1;
  } else {
    colon = strchr(s, ':');
    if (colon && strchr(colon + 1, ':'))   /* a bare IPv6 address */
      colon = s + strlen(s);
    n = colon ? (size_t)(colon - s) : strlen(s);
    if (!colon)
      colon = s + n;
  }
  if (*colon == ':') {
    p = strtoul(colon + 1, &stop, 10);
    if (*stop || stop == colon + 1 || p < 1 || p > 65535)
      return -1;
  }
  if (n == 0 || n >= size)
    return -1;
  memcpy(addr, s, n);
  addr[n] = '\0';
  {
    char host[64];
    const char *scope = strchr(addr, '%');
    size_t hl = scope ? (size_t)(scope - addr) : n;
    if (hl >= sizeof host)
      return -1;
    memcpy(host, addr, hl);
    host[hl] = '\0';
    if (inet_pton(AF_INET, host, buf) != 1 && inet_pton(AF_INET6, host, buf) != 1)
      return -1;
  }
  *port = (unsigned)p;
  return 0;
}

/* The dns option at idx (nil or neither key: the system's configuration, NULL):
 * { servers = {"addr[:port]"...} } or { resolv_conf = path }. Raises on a malformed
 * option. */
lsip_dnsconf_t *luasip_dnsconf_new(lua_State *L, int idx, const char *who)
{
  lsip_dnsconf_t *c;
  char text[1024];
  size_t len;
  unsigned port = 0;
  int i, n = 0;
  if (lua_isnil(L, idx))
    return NULL;
  if (idx < 0)
    idx = lua_gettop(L) + idx + 1;
  if (!lua_istable(L, idx))
    luaL_error(L, "%s: dns must be a table { servers = {...} } or { resolv_conf = path }",
               who);
  lua_getfield(L, idx, "resolv_conf");
  lua_getfield(L, idx, "servers");
  if (!lua_isnil(L, -1) && !lua_isnil(L, -2))
    luaL_error(L, "%s: dns takes servers or resolv_conf, not both", who);
  if (lua_isnil(L, -1) && lua_isnil(L, -2)) {   /* { hosts = path } only (agent.lua) */
    lua_pop(L, 2);
    return NULL;
  }
  if (lua_isstring(L, -2)) {
    c = calloc(1, sizeof *c);
    if (!c || !(c->file = strdup(lua_tostring(L, -2)))) {
      free(c);
      luaL_error(L, "%s: out of memory", who);
      return NULL;
    }
    if (access(c->file, R_OK) != 0) {
      lua_pushfstring(L, "%s: dns.resolv_conf %s: %s", who, c->file, strerror(errno));
      luasip_dnsconf_free(c);
      lua_error(L);
    }
    c->fd = -1;
    lua_pop(L, 2);
    return c;
  }
  if (!lua_istable(L, -1) || (n = (int)luasip_rawlen(L, -1)) == 0)
    luaL_error(L, "%s: dns.servers must be a non-empty list of \"address[:port]\"", who);
  len = 0;
  for (i = 1; i <= n; i++) {
    char addr[64];
    unsigned p = 53;
    const char *s;
    lua_rawgeti(L, -1, i);
    s = lua_tostring(L, -1);
    if (!s || parse_server(s, addr, sizeof addr, &p) < 0)
      luaL_error(L, "%s: dns.servers[%d] must be \"address[:port]\" (an IP address)",
                 who, i);
    if (port && p != port)
      luaL_error(L, "%s: dns.servers must all use one port (sofia's resolver takes one)",
                 who);
    port = p;
    len += (size_t)snprintf(text + len, sizeof text - len, "nameserver %s\n", addr);
    if (len >= sizeof text - 32)
      luaL_error(L, "%s: dns.servers: too many", who);
    lua_pop(L, 1);
  }
  snprintf(text + len, sizeof text - len, "port %u\n", port);
  lua_pop(L, 2);
  c = calloc(1, sizeof *c);
  if (!c || !(c->servers = strdup(text))) {
    free(c);
    luaL_error(L, "%s: out of memory", who);
    return NULL;
  }
  c->fd = -1;
  return c;
}

/* sofia's resolver does not read /etc/hosts: a cache for nta's resolver (SRESTAG_CACHE)
 * holding an A or AAAA record for each name of the hosts file (the dns option's hosts =
 * path, or /etc/hosts), read once. Names are stored in lower case, as sres looks them up
 * (case-sensitively). nta still asks DNS for NAPTR and SRV first. NULL: no cache. */
sres_cache_t *luasip_dnsconf_hosts(lua_State *L, int idx)
{
  char line[1024];
  const char *path = SYSTEM_HOSTS;
  sres_cache_t *cache;
  time_t now = time(NULL);
  FILE *f;
  if (lua_istable(L, idx)) {
    lua_getfield(L, idx, "hosts");
    if (lua_isstring(L, -1))
      path = lua_tostring(L, -1);
    lua_pop(L, 1);   /* path stays valid: the option table holds the string */
  }
  f = fopen(path, "r");
  if (!f)
    return NULL;
  cache = sres_cache_new(0);
  while (cache && fgets(line, sizeof line, f)) {
    char *save = NULL, *addr, *name;
    union { sres_a_record_t a; sres_aaaa_record_t aaaa; } rr;
    char *hash = strchr(line, '#');
    if (hash)
      *hash = '\0';
    addr = strtok_r(line, " \t\r\n", &save);
    if (!addr)
      continue;
    memset(&rr, 0, sizeof rr);
    if (inet_pton(AF_INET, addr, &rr.a.a_addr) == 1) {
      rr.a.a_record->r_size = sizeof rr.a;
      rr.a.a_record->r_type = sres_type_a;
      rr.a.a_record->r_rdlen = sizeof rr.a.a_addr;
    } else if (inet_pton(AF_INET6, addr, &rr.aaaa.aaaa_addr) == 1) {
      rr.aaaa.aaaa_record->r_size = sizeof rr.aaaa;
      rr.aaaa.aaaa_record->r_type = sres_type_aaaa;
      rr.aaaa.aaaa_record->r_rdlen = sizeof rr.aaaa.aaaa_addr;
    } else {
      continue;
    }
    rr.a.a_record->r_class = sres_class_in;
    rr.a.a_record->r_ttl = HOSTS_TTL;
    rr.a.a_record->r_parsed = 1;
    while ((name = strtok_r(NULL, " \t\r\n", &save))) {
      char fqdn[256];
      size_t i, n = strlen(name);
      sres_record_t *r;
      if (n == 0 || n + 2 > sizeof fqdn)
        continue;
      for (i = 0; i < n; i++)
        fqdn[i] = (char)(name[i] >= 'A' && name[i] <= 'Z' ? name[i] - 'A' + 'a' : name[i]);
      if (fqdn[n - 1] != '.')
        fqdn[n++] = '.';
      fqdn[n] = '\0';
      rr.a.a_record->r_name = fqdn;
      r = sres_cache_alloc_record(cache, (sres_record_t *)&rr, 0);
      if (r)
        sres_cache_store(cache, r, now);
    }
  }
  fclose(f);
  return cache;
}
