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
 * So sres reads a copy of the system's resolv.conf in which only the name servers a UDP
 * socket can connect() to now are kept. It lives in a memfd read through
 * /proc/self/fd/N; agents re-check it every LUASIP_DNSCONF_MS (agent.c), and sres
 * rereads it when its mtime changes (sres looks at most every 5 s). With no reachable
 * server sres falls back to 127.0.0.1, where a query fails at once (ICMP port
 * unreachable) and the transaction gets 503.
 *
 * The memfd is one per process, shared by every Lua state, and lives until exit.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "luasip.h"

#define SYSTEM_CONF "/etc/resolv.conf"
#define CONF_MAX 8192

static int conf_fd = -1;
static char conf_path[64];
static char conf_text[CONF_MAX];   /* what the memfd holds now */
static size_t conf_len;
static time_t conf_mtime;

/* 1 when a UDP socket connects to the name server written in s (an address, IPv6 with
 * an optional %scope), 0 when it does not, -1 when s is not an address sres takes */
static int reachable(const char *s)
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
    ((struct sockaddr_in *)&ss)->sin_port = htons(53);
    len = sizeof(struct sockaddr_in);
  } else if (inet_pton(AF_INET6, host, &((struct sockaddr_in6 *)&ss)->sin6_addr) == 1) {
    ss.ss_family = AF_INET6;
    ((struct sockaddr_in6 *)&ss)->sin6_port = htons(53);
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

/* the system's configuration without the name servers that cannot be reached, into out */
static size_t filter(char *out, size_t size)
{
  char line[512];
  size_t n = 0;
  FILE *f = fopen(SYSTEM_CONF, "r");
  if (!f)
    return 0;
  while (fgets(line, sizeof line, f)) {
    char addr[128];
    size_t l = strlen(line);
    if (sscanf(line, " nameserver %127s", addr) == 1 && reachable(addr) == 0)
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

void luasip_dnsconf_refresh(void)
{
  char text[CONF_MAX];
  size_t n;
  struct timespec times[2];
  time_t now = time(NULL);
  if (conf_fd < 0)
    return;
  n = filter(text, sizeof text);
  if (n == conf_len && memcmp(text, conf_text, n) == 0)
    return;
  if (ftruncate(conf_fd, 0) < 0 || pwrite(conf_fd, text, n, 0) != (ssize_t)n) {
    luasip_log(2, "resolver configuration: cannot write the memfd: %s", strerror(errno));
    return;
  }
  memcpy(conf_text, text, n);
  conf_len = n;
  /* sres compares whole seconds: every change must move the mtime forward */
  conf_mtime = now > conf_mtime ? now : conf_mtime + 1;
  times[0].tv_sec = times[1].tv_sec = conf_mtime;
  times[0].tv_nsec = times[1].tv_nsec = 0;
  futimens(conf_fd, times);
}

const char *luasip_dnsconf_path(void)
{
  if (conf_fd < 0) {
    conf_fd = memfd_create("luasip-resolv.conf", MFD_CLOEXEC);
    if (conf_fd < 0) {
      luasip_log(2, "resolver configuration: memfd_create: %s (using %s as it is)",
                 strerror(errno), SYSTEM_CONF);
      return NULL;
    }
    snprintf(conf_path, sizeof conf_path, "/proc/self/fd/%d", conf_fd);
    conf_len = (size_t)-1;
  }
  luasip_dnsconf_refresh();
  return conf_path;
}
