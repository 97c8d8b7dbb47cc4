/* SPDX-License-Identifier: MIT
 * luasip.metrics_server: the Prometheus text page (exposition format 0.0.4) served over
 * HTTP on the su_root -- a listening TCP socket and its connections watched by the loop,
 * read and written without ever blocking it.  The page holds the process's message
 * counters (luasip_counters, bumped where messages are received and sent), nta's
 * statistics of the agents (nta_agent_get_stats), the handler and loop-lag histograms,
 * then what the Lua layer adds (event "metrics_page": the application's registry).
 * The server userdata is anchored while it listens; close() is idempotent.
 */
#define _GNU_SOURCE 1               /* accept4 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <netdb.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>

#include <sofia-sip/nta_tag.h>
#include <sofia-sip/sip_header.h>
#include <sofia-sip/su_tag.h>

#include "luasip.h"

#define LUASIP_METRICS_SERVER "luasip.metrics_server"
#define MCONN_MAX 16          /* connections served at once; more are closed at accept */
#define MREQ_MAX 4096         /* request head limit (bytes) */
#define MTICK_MS 100          /* loop-lag sample and deadline check period */

lsip_counters_t luasip_counters;

/* ---------------------------------------------------------------- histograms */

typedef struct chist {
  const double *le;
  int n;
  unsigned long long count[16];     /* per bucket (not cumulative) */
  unsigned long long total;
  double sum;
} chist_t;

static const double HANDLER_LE[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
                                     0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
static const double LAG_LE[] = { 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                 0.25, 0.5, 1 };
static chist_t handler_hist = { HANDLER_LE, 15, {0}, 0, 0 };
static chist_t lag_hist = { LAG_LE, 11, {0}, 0, 0 };
static unsigned long long handler_errors;

static void hist_observe(chist_t *h, double v)
{
  int i = 0;
  while (i < h->n && v > h->le[i])
    i++;
  if (i < h->n)
    h->count[i]++;
  h->total++;
  h->sum += v;
}

static double mono(void);

/* metrics_handler(started, failed): a request handler that started at `started` (now())
 * ended now; failed: it raised (dispatcher.lua, while metrics are on) */
int luasip_metrics_handler(lua_State *L)
{
  double s = mono() - luaL_checknumber(L, 1);
  hist_observe(&handler_hist, s < 0 ? 0 : s);
  if (lua_toboolean(L, 2))
    handler_errors++;
  return 0;
}

/* ---------------------------------------------------------------- agents */

/* nta's counters, in the order of STAT_NAMES; the last three are gauges */
enum { S_RECV_MSG, S_SENT_MSG, S_BAD_MESSAGE, S_DROP_REQUEST, S_DROP_RESPONSE,
       S_RETRY_REQUEST, S_RETRY_RESPONSE, S_RECV_RETRY, S_TOUT_REQUEST, S_TOUT_RESPONSE,
       S_IRQ, S_ORQ, S_NSTATS };
#define S_NCOUNTERS S_IRQ

typedef struct agent_stats {
  unsigned long long s[S_NSTATS];
  unsigned long long shed_invite, shed_other;
} agent_stats_t;

static lsip_agent_t **agents;
static size_t nagents, agents_cap;
static agent_stats_t closed_stats;  /* the counters of agents closed so far */

static void agent_stats_add(lsip_agent_t *a, agent_stats_t *t)
{
  usize_t v[S_NSTATS];
  int i;
  memset(v, 0, sizeof v);
  if (a->nta)
    nta_agent_get_stats(a->nta,
                        NTATAG_S_RECV_MSG_REF(v[S_RECV_MSG]),
                        NTATAG_S_SENT_MSG_REF(v[S_SENT_MSG]),
                        NTATAG_S_BAD_MESSAGE_REF(v[S_BAD_MESSAGE]),
                        NTATAG_S_DROP_REQUEST_REF(v[S_DROP_REQUEST]),
                        NTATAG_S_DROP_RESPONSE_REF(v[S_DROP_RESPONSE]),
                        NTATAG_S_RETRY_REQUEST_REF(v[S_RETRY_REQUEST]),
                        NTATAG_S_RETRY_RESPONSE_REF(v[S_RETRY_RESPONSE]),
                        NTATAG_S_RECV_RETRY_REF(v[S_RECV_RETRY]),
                        NTATAG_S_TOUT_REQUEST_REF(v[S_TOUT_REQUEST]),
                        NTATAG_S_TOUT_RESPONSE_REF(v[S_TOUT_RESPONSE]),
                        NTATAG_S_IRQ_HASH_USED_REF(v[S_IRQ]),
                        NTATAG_S_ORQ_HASH_USED_REF(v[S_ORQ]),
                        TAG_END());
  for (i = 0; i < S_NSTATS; i++)
    t->s[i] += v[i];
  luasip_agent_shed_counts(a, &t->shed_invite, &t->shed_other);
}

/* agent.c: an agent got its nta agent (open) or is about to destroy it */
void luasip_metrics_agent(lsip_agent_t *a, int open)
{
  size_t i;
  if (open) {
    if (nagents == agents_cap) {
      size_t cap = agents_cap ? 2 * agents_cap : 8;
      lsip_agent_t **n = realloc(agents, cap * sizeof *n);
      if (!n)
        return;                     /* its figures are missing from the page */
      agents = n;
      agents_cap = cap;
    }
    agents[nagents++] = a;
    return;
  }
  for (i = 0; i < nagents && agents[i] != a; i++)
    ;
  if (i == nagents)
    return;
  {
    agent_stats_t t;
    int k;
    memset(&t, 0, sizeof t);
    agent_stats_add(a, &t);
    for (k = 0; k < S_NCOUNTERS; k++)   /* the gauges end with the agent */
      closed_stats.s[k] += t.s[k];
    closed_stats.shed_invite += t.shed_invite;
    closed_stats.shed_other += t.shed_other;
  }
  agents[i] = agents[--nagents];
  if (!nagents) {
    free(agents);
    agents = NULL;
    agents_cap = 0;
  }
}

static unsigned long count_links(lsip_link_t const *head)
{
  unsigned long n = 0;
  lsip_link_t const *l;
  for (l = head->next; l && l != head; l = l->next)
    n++;
  return n;
}

/* ---------------------------------------------------------------- the page */

typedef struct mbuf {
  char *p;
  size_t n, cap;
  int oom;
} mbuf_t;

static void mb_add(mbuf_t *b, const char *fmt, ...)
#if defined(__GNUC__)
  __attribute__((format(printf, 2, 3)))
#endif
  ;

static void mb_add(mbuf_t *b, const char *fmt, ...)
{
  va_list ap;
  int k;
  if (b->oom)
    return;
  for (;;) {
    size_t room = b->cap - b->n;
    va_start(ap, fmt);
    k = vsnprintf(b->p ? b->p + b->n : NULL, room, fmt, ap);
    va_end(ap);
    if (k < 0) {
      b->oom = 1;
      return;
    }
    if ((size_t)k < room) {
      b->n += (size_t)k;
      return;
    }
    {
      size_t cap = b->cap ? b->cap : 4096;
      char *p;
      while (cap - b->n <= (size_t)k)
        cap *= 2;
      p = realloc(b->p, cap);
      if (!p) {
        b->oom = 1;
        return;
      }
      b->p = p;
      b->cap = cap;
    }
  }
}

static void mb_head(mbuf_t *b, const char *name, const char *type, const char *help)
{
  mb_add(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static const char *method_label(unsigned m)
{
  const char *name = m ? sip_method_name((sip_method_t)m, NULL) : NULL;
  return name ? name : "OTHER";
}

static void render_hist(mbuf_t *b, const char *name, const char *help, chist_t const *h)
{
  unsigned long long cum = 0;
  int i;
  mb_head(b, name, "histogram", help);
  for (i = 0; i < h->n; i++) {
    cum += h->count[i];
    mb_add(b, "%s_bucket{le=\"%g\"} %llu\n", name, h->le[i], cum);
  }
  mb_add(b, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.9g\n%s_count %llu\n", name, h->total,
         name, h->sum, name, h->total);
}

static void render_methods(mbuf_t *b, const char *name, const char *help,
                           unsigned long long const *v)
{
  unsigned m;
  mb_head(b, name, "counter", help);
  for (m = 0; m < LUASIP_M_METHODS; m++)
    if (v[m])
      mb_add(b, "%s{method=\"%s\"} %llu\n", name, method_label(m), v[m]);
}

/* The figures of the C core, in exposition format 0.0.4. */
static void render_core(mbuf_t *b)
{
  lsip_counters_t const *c = &luasip_counters;
  agent_stats_t t = closed_stats;
  unsigned long dialogs = 0, media[4];
  unsigned m;
  int st;
  size_t i;
  struct rusage ru;
  for (i = 0; i < nagents; i++) {
    agent_stats_add(agents[i], &t);
    dialogs += count_links(&agents[i]->dialogs);
  }
  mb_head(b, "luasip_info", "gauge", "luasip version (always 1).");
  mb_add(b, "luasip_info{version=\"%s\"} 1\n", LUASIP_VERSION);
  render_methods(b, "luasip_requests_received_total", "SIP requests received by the "
                 "agents (retransmissions absorbed by the transaction layer excluded).",
                 c->req_in);
  mb_head(b, "luasip_responses_sent_total", "counter", "SIP responses sent, stateless "
          "and stateful, by the method they answer and status (retransmissions excluded).");
  for (m = 0; m < LUASIP_M_METHODS; m++)
    for (st = 0; st < 600; st++)
      if (c->resp_out[m][st])
        mb_add(b, "luasip_responses_sent_total{method=\"%s\",code=\"%d\"} %llu\n",
               method_label(m), st + 100, c->resp_out[m][st]);
  render_methods(b, "luasip_requests_sent_total", "SIP requests sent, forwarded by "
                 "the proxy included (retransmissions excluded).", c->req_out);
  mb_head(b, "luasip_retransmissions_total", "counter",
          "SIP requests and responses retransmitted by the agents.");
  mb_add(b, "luasip_retransmissions_total %llu\n",
         t.s[S_RETRY_REQUEST] + t.s[S_RETRY_RESPONSE] + c->rtx_core);
  mb_head(b, "luasip_retransmissions_received_total", "counter",
          "Retransmitted SIP messages received (absorbed by the transaction layer).");
  mb_add(b, "luasip_retransmissions_received_total %llu\n", t.s[S_RECV_RETRY]);
  mb_head(b, "luasip_messages_total", "counter",
          "SIP messages received and sent on the transports.");
  mb_add(b, "luasip_messages_total{direction=\"received\"} %llu\n", t.s[S_RECV_MSG]);
  mb_add(b, "luasip_messages_total{direction=\"sent\"} %llu\n", t.s[S_SENT_MSG]);
  mb_head(b, "luasip_messages_dropped_total", "counter",
          "SIP messages dropped without an answer, by reason.");
  mb_add(b, "luasip_messages_dropped_total{reason=\"unparsable\"} %llu\n",
         t.s[S_BAD_MESSAGE]);
  mb_add(b, "luasip_messages_dropped_total{reason=\"request\"} %llu\n",
         t.s[S_DROP_REQUEST]);
  mb_add(b, "luasip_messages_dropped_total{reason=\"response\"} %llu\n",
         t.s[S_DROP_RESPONSE]);
  mb_add(b, "luasip_messages_dropped_total{reason=\"stray_response\"} %llu\n",
         c->stray_responses);
  mb_add(b, "luasip_messages_dropped_total{reason=\"ack\"} %llu\n", c->acks_dropped);
  mb_add(b, "luasip_messages_dropped_total{reason=\"flood\"} %llu\n", c->flood_dropped);
  mb_add(b, "luasip_messages_dropped_total{reason=\"scanner\"} %llu\n", c->scanners_dropped);
  mb_head(b, "luasip_timeouts_total", "counter",
          "Transactions ended by a timeout: our requests unanswered, our responses "
          "never acknowledged.");
  mb_add(b, "luasip_timeouts_total{kind=\"client\"} %llu\n", t.s[S_TOUT_REQUEST]);
  mb_add(b, "luasip_timeouts_total{kind=\"server\"} %llu\n", t.s[S_TOUT_RESPONSE]);
  mb_head(b, "luasip_overload_rejected_total", "counter",
          "New requests answered 503 by load shedding.");
  mb_add(b, "luasip_overload_rejected_total{method=\"INVITE\"} %llu\n", t.shed_invite);
  mb_add(b, "luasip_overload_rejected_total{method=\"other\"} %llu\n", t.shed_other);
  mb_head(b, "luasip_transactions", "gauge", "Live SIP transactions, by kind.");
  mb_add(b, "luasip_transactions{kind=\"server\"} %llu\n", t.s[S_IRQ]);
  mb_add(b, "luasip_transactions{kind=\"client\"} %llu\n", t.s[S_ORQ]);
  mb_head(b, "luasip_dialogs", "gauge", "Live SIP dialogs (early and confirmed).");
  mb_add(b, "luasip_dialogs %lu\n", dialogs);
  mb_head(b, "luasip_agents", "gauge", "Open SIP agents.");
  mb_add(b, "luasip_agents %lu\n", (unsigned long)nagents);
  mb_head(b, "luasip_handler_errors_total", "counter",
          "Request handlers that raised an error.");
  mb_add(b, "luasip_handler_errors_total %llu\n", handler_errors);
  render_hist(b, "luasip_handler_duration_seconds",
              "Time from a request handler's start to its end (waits included).",
              &handler_hist);
  render_hist(b, "luasip_loop_lag_seconds",
              "How late a 100 ms timer of the event loop fires.", &lag_hist);
  luasip_media_counts(media);
  mb_head(b, "luasip_media_streams", "gauge", "Open RTP streams.");
  mb_add(b, "luasip_media_streams %lu\n", media[0]);
  mb_head(b, "luasip_media_packets_total", "counter", "RTP packets sent and received.");
  mb_add(b, "luasip_media_packets_total{direction=\"sent\"} %llu\n", c->rtp_packets[0]);
  mb_add(b, "luasip_media_packets_total{direction=\"received\"} %llu\n",
         c->rtp_packets[1]);
  mb_head(b, "luasip_media_bytes_total", "counter",
          "RTP payload bytes sent and received.");
  mb_add(b, "luasip_media_bytes_total{direction=\"sent\"} %llu\n", c->rtp_octets[0]);
  mb_add(b, "luasip_media_bytes_total{direction=\"received\"} %llu\n", c->rtp_octets[1]);
  mb_head(b, "luasip_media_ticks_total", "counter",
          "Ticks of the 20 ms media clock, by how they ran.");
  mb_add(b, "luasip_media_ticks_total{kind=\"all\"} %lu\n", media[1]);
  mb_add(b, "luasip_media_ticks_total{kind=\"late\"} %lu\n", media[2]);
  mb_add(b, "luasip_media_ticks_total{kind=\"skipped\"} %lu\n", media[3]);
  if (getrusage(RUSAGE_SELF, &ru) == 0) {
    mb_head(b, "process_cpu_seconds_total", "counter",
            "Total user and system CPU time spent in seconds.");
    mb_add(b, "process_cpu_seconds_total %.6f\n",
           (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) +
           (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6);
  }
}

/* metrics_text() -> the C core's part of the page */
int luasip_metrics_text(lua_State *L)
{
  mbuf_t b = { NULL, 0, 0, 0 };
  render_core(&b);
  if (b.oom) {
    free(b.p);
    return luaL_error(L, "luasip.metrics: out of memory");
  }
  lua_pushlstring(L, b.p ? b.p : "", b.n);
  free(b.p);
  return 1;
}

/* ---------------------------------------------------------------- HTTP server */

typedef struct mconn {
  int fd;
  int reg;                          /* su_root registration, or -1 */
  su_wait_t wait[1];
  char in[MREQ_MAX];
  size_t in_len;
  char *out;                        /* the reply, written from out_off */
  size_t out_len, out_off;
  double deadline;                  /* monotonic seconds: closed when passed */
} mconn_t;

/* A server's life: LISTENING (socket watched, anchored) -> CLOSED (all sockets closed,
 * unanchored); only srv_close() moves it. */
typedef struct lsip_msrv {
  lsip_obj_t obj;
  int listening;
  int fd, reg;
  su_wait_t wait[1];
  char host[64];
  int port;
  char path[128];
  double timeout;                   /* s a connection may take to send its request */
  mconn_t *conns[MCONN_MAX];
  char *extra;                      /* the Lua layer's part of the page being served */
  size_t extra_len;
  struct lsip_msrv *next;           /* the listening servers */
} lsip_msrv_t;

static lsip_msrv_t *servers;
static su_timer_t *tick;
static double tick_due;

static double mono(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void conn_close(lsip_msrv_t *s, int i)
{
  mconn_t *c = s->conns[i];
  if (!c)
    return;
  if (c->reg >= 0)
    su_root_deregister(luasip_S->root, c->reg);
  close(c->fd);
  free(c->out);
  free(c);
  s->conns[i] = NULL;
}

static void tick_fired(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg);

static void tick_arm(void)
{
  tick_due = mono() + MTICK_MS / 1000.0;
  su_timer_set_interval(tick, tick_fired, NULL, MTICK_MS);
}

/* Every 100 ms while a server listens: how late this timer fired (the loop's lag), and
 * the connections past their deadline (a slow or silent client) are closed. */
static void tick_fired(su_root_magic_t *m, su_timer_t *t, su_timer_arg_t *arg)
{
  double now = mono(), lag = now - tick_due;
  lsip_msrv_t *s;
  int i;
  (void)m; (void)t; (void)arg;
  hist_observe(&lag_hist, lag < 0 ? 0 : lag);
  for (s = servers; s; s = s->next)
    for (i = 0; i < MCONN_MAX; i++)
      if (s->conns[i] && now > s->conns[i]->deadline)
        conn_close(s, i);
  tick_arm();
}

static void srv_close(lsip_msrv_t *s)
{
  lsip_msrv_t **pp;
  int i;
  if (!s->listening)
    return;
  s->listening = 0;
  for (i = 0; i < MCONN_MAX; i++)
    conn_close(s, i);
  if (s->reg >= 0)
    su_root_deregister(luasip_S->root, s->reg);
  s->reg = -1;
  close(s->fd);
  s->fd = -1;
  for (pp = &servers; *pp; pp = &(*pp)->next)
    if (*pp == s) {
      *pp = s->next;
      break;
    }
  if (!servers && tick) {
    su_timer_destroy(tick);
    tick = NULL;
  }
  if (!luasip_S->closing)
    luasip_unanchor(luasip_L(), &s->obj);
}

static void srv_destroy(lsip_obj_t *obj)
{
  lsip_msrv_t *s = (lsip_msrv_t *)obj;
  srv_close(s);                     /* only lua_close collects a listening server */
  luasip_freeobj(obj);
}

static const char *const REASONS[] = { "200 OK", "400 Bad Request", "404 Not Found",
                                       "405 Method Not Allowed",
                                       "500 Internal Server Error" };

/* Builds the reply of c (status: an entry of REASONS) with body (len bytes), HEAD: no
 * body.  1 when built. */
static int conn_reply(mconn_t *c, const char *status, const char *ctype, const char *body,
                      size_t len, int head)
{
  char hdr[256];
  int k = snprintf(hdr, sizeof hdr, "HTTP/1.0 %s\r\nContent-Type: %s\r\n"
                   "Content-Length: %lu\r\nConnection: close\r\n\r\n", status, ctype,
                   (unsigned long)len);
  if (k < 0 || (size_t)k >= sizeof hdr)
    return 0;
  if (head)
    len = 0;
  c->out = malloc((size_t)k + len);
  if (!c->out)
    return 0;
  memcpy(c->out, hdr, (size_t)k);
  if (len)
    memcpy(c->out + k, body, len);
  c->out_len = (size_t)k + len;
  c->out_off = 0;
  return 1;
}

static int conn_error(mconn_t *c, int which, int head)
{
  const char *st = REASONS[which];
  char body[64];
  int k = snprintf(body, sizeof body, "%s\n", st + 4);
  return conn_reply(c, st, "text/plain; charset=utf-8", body, (size_t)k, head);
}

/* The page for s: the core's figures, then the Lua layer's (asked through the bridge:
 * it calls metrics_extra(server, text)).  Lua that fails costs only its part. */
static int conn_page(lsip_msrv_t *s, mconn_t *c, int head)
{
  mbuf_t b = { NULL, 0, 0, 0 };
  int ok;
  render_core(&b);
  free(s->extra);
  s->extra = NULL;
  s->extra_len = 0;
  if (s->obj.alive)
    luasip_bridge("metrics_page", &s->obj, NULL);
  /* re-read: Lua may have closed the server (then the connection is gone too) */
  if (s->extra && s->listening)
    mb_add(&b, "%.*s", (int)s->extra_len, s->extra);
  free(s->extra);
  s->extra = NULL;
  if (!s->listening || b.oom) {
    free(b.p);
    return s->listening ? conn_error(c, 4, head) : 0;
  }
  ok = conn_reply(c, REASONS[0], "text/plain; version=0.0.4; charset=utf-8", b.p, b.n,
                  head);
  free(b.p);
  return ok;
}

/* A complete request head in c->in: "GET <path> HTTP/1.x".  Builds the reply. */
static int conn_request(lsip_msrv_t *s, mconn_t *c)
{
  char *line = c->in, *sp1, *sp2, *q;
  size_t plen;
  int head;
  c->in[c->in_len] = '\0';
  line[strcspn(line, "\r\n")] = '\0';
  sp1 = strchr(line, ' ');
  sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
  if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0 || sp1[1] != '/')
    return conn_error(c, 1, 0);
  *sp1 = *sp2 = '\0';
  head = !strcmp(line, "HEAD");
  if (!head && strcmp(line, "GET") != 0)
    return conn_error(c, 3, 0);
  q = strchr(sp1 + 1, '?');
  plen = q ? (size_t)(q - (sp1 + 1)) : strlen(sp1 + 1);
  if (plen != strlen(s->path) || memcmp(sp1 + 1, s->path, plen) != 0)
    return conn_error(c, 2, head);
  return conn_page(s, c, head);
}

static int conn_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg);
static int conn_event_cb(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg);

/* index of c in s, -1 when gone */
static int conn_index(lsip_msrv_t *s, mconn_t *c)
{
  int i;
  for (i = 0; i < MCONN_MAX; i++)
    if (s->conns[i] == c)
      return i;
  return -1;
}

/* Writes what it can of the reply; the connection ends when all is written. */
static void conn_write(lsip_msrv_t *s, int i)
{
  mconn_t *c = s->conns[i];
  while (c->out_off < c->out_len) {
    ssize_t n = send(c->fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      su_root_eventmask(luasip_S->root, c->reg, c->fd, SU_WAIT_OUT);
      c->deadline = mono() + s->timeout;   /* a reader that stalls is dropped too */
      return;
    }
    if (n <= 0)
      break;
    c->out_off += (size_t)n;
  }
  shutdown(c->fd, SHUT_WR);
  conn_close(s, i);
}

static int conn_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_msrv_t *s = (lsip_msrv_t *)m;
  mconn_t *c = (mconn_t *)arg;
  int i = conn_index(s, c);
  (void)w;
  if (i < 0)
    return 0;
  if (c->out) {
    conn_write(s, i);
    return 0;
  }
  for (;;) {
    ssize_t n = recv(c->fd, c->in + c->in_len, MREQ_MAX - 1 - c->in_len, 0);
    if (n < 0 && errno == EINTR)
      continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      return 0;
    if (n <= 0) {                   /* EOF before a complete request, or an error */
      conn_close(s, i);
      return 0;
    }
    c->in_len += (size_t)n;
    c->in[c->in_len] = '\0';
    if (strstr(c->in, "\r\n\r\n") || strstr(c->in, "\n\n")) {
      if (!conn_request(s, c) || conn_index(s, c) != i) {
        if (conn_index(s, c) == i)
          conn_close(s, i);
        return 0;
      }
      break;
    }
    if (c->in_len >= MREQ_MAX - 1 || memchr(c->in, '\0', c->in_len)) {
      if (!conn_error(c, 1, 0)) {
        conn_close(s, i);
        return 0;
      }
      break;
    }
  }
  conn_write(s, i);
  return 0;
}

static int srv_accept(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_msrv_t *s = (lsip_msrv_t *)m;
  int k;
  (void)w; (void)arg;
  for (k = 0; k < MCONN_MAX && s->listening; k++) {
    int fd = accept4(s->fd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC), i;
    mconn_t *c;
    if (fd < 0)
      return 0;
    for (i = 0; i < MCONN_MAX && s->conns[i]; i++)
      ;
    c = i < MCONN_MAX ? malloc(sizeof *c) : NULL;
    if (!c) {                       /* too many at once: this one is refused */
      close(fd);
      continue;
    }
    c->fd = fd;
    c->in_len = 0;
    c->out = NULL;
    c->out_len = c->out_off = 0;
    c->deadline = mono() + s->timeout;
    c->reg = -1;
    if (su_wait_create(c->wait, fd, SU_WAIT_IN) == 0)
      c->reg = su_root_register(luasip_S->root, c->wait, conn_event_cb,
                                (su_wakeup_arg_t *)c, 0);
    s->conns[i] = c;
    if (c->reg < 0)
      conn_close(s, i);
  }
  return 0;
}

/* su_root callbacks get the root's magic (NULL in luasip) and the registration's arg;
 * the arg is looked up among the live servers and connections before it is used: an
 * event may still be delivered, in the same wait, for one closed by an earlier one. */
static int srv_accept_cb(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_msrv_t *s;
  (void)m;
  for (s = servers; s; s = s->next)
    if (s == (lsip_msrv_t *)arg)
      return srv_accept((su_root_magic_t *)s, w, NULL);
  return 0;
}

static int conn_event_cb(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  lsip_msrv_t *s;
  int i;
  (void)m;
  for (s = servers; s; s = s->next)
    for (i = 0; i < MCONN_MAX; i++)
      if (s->conns[i] == (mconn_t *)arg)
        return conn_event((su_root_magic_t *)s, w, arg);
  return 0;
}

/* core.metrics_listen(host, port, path, timeout) -> server | nil, err, code */
int luasip_metrics_listen(lua_State *L)
{
  const char *host = luaL_checkstring(L, 1);
  lua_Integer port = luaL_checkinteger(L, 2);
  const char *path = luaL_checkstring(L, 3);
  lua_Number timeout = luaL_checknumber(L, 4);
  struct addrinfo hints, *ai = NULL;
  char portstr[16];
  lsip_msrv_t *s;
  int fd, one = 1, e;
  su_sockaddr_t sa;
  socklen_t salen = sizeof sa;
  if (strlen(host) >= sizeof s->host || strlen(path) + 1 >= sizeof s->path)
    return luaL_error(L, "luasip.metrics: host or path too long");
  snprintf(portstr, sizeof portstr, "%d", (int)port);
  memset(&hints, 0, sizeof hints);
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE;
  if (getaddrinfo(host, portstr, &hints, &ai) != 0 || !ai)
    return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s:%d: not a numeric "
                                          "address", host, (int)port), "listen");
  fd = socket(ai->ai_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd >= 0)
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (fd < 0 || bind(fd, ai->ai_addr, ai->ai_addrlen) < 0 || listen(fd, 16) < 0 ||
      getsockname(fd, &sa.su_sa, &salen) < 0) {
    e = errno;
    if (fd >= 0)
      close(fd);
    freeaddrinfo(ai);
    return luasip_fail(L, lua_pushfstring(L, "cannot listen on %s:%d: %s", host, (int)port,
                                          strerror(e)), "listen");
  }
  freeaddrinfo(ai);
  s = luasip_newobj(L, sizeof *s, LUASIP_METRICS_SERVER, srv_destroy);
  s->fd = fd;
  s->reg = -1;
  s->timeout = timeout;
  snprintf(s->host, sizeof s->host, "%s", host);
  s->port = ntohs(sa.su_port);
  snprintf(s->path, sizeof s->path, "%s", path);
  if (su_wait_create(s->wait, fd, SU_WAIT_ACCEPT) < 0 ||
      (s->reg = su_root_register(luasip_S->root, s->wait, srv_accept_cb,
                                 (su_wakeup_arg_t *)s, 0)) < 0) {
    close(fd);
    s->fd = -1;
    return luasip_fail(L, "cannot watch the metrics socket", "listen");
  }
  s->listening = 1;
  s->next = servers;
  servers = s;
  if (!tick) {
    tick = su_timer_create(su_root_task(luasip_S->root), 0);
    if (tick)
      tick_arm();
  }
  luasip_anchor(L, &s->obj, -1);
  return 1;
}

/* metrics_extra(server, text): the Lua layer's part of the page being served */
int luasip_metrics_extra(lua_State *L)
{
  lsip_msrv_t *s = (lsip_msrv_t *)luasip_checkobj(L, 1, LUASIP_METRICS_SERVER);
  size_t n;
  const char *text = luaL_checklstring(L, 2, &n);
  char *p = malloc(n + 1);
  if (!p)
    return luaL_error(L, "luasip.metrics: out of memory");
  memcpy(p, text, n);
  free(s->extra);
  s->extra = p;
  s->extra_len = n;
  return 0;
}

/* server:close() -> true (idempotent) */
static int msrv_close(lua_State *L)
{
  lsip_msrv_t *s = (lsip_msrv_t *)luasip_testobj(L, 1, LUASIP_METRICS_SERVER);
  if (!s)
    luaL_checkudata(L, 1, LUASIP_METRICS_SERVER);
  else
    srv_close(s);
  lua_pushboolean(L, 1);
  return 1;
}

static int msrv_closed(lua_State *L)
{
  lsip_msrv_t *s = (lsip_msrv_t *)luasip_testobj(L, 1, LUASIP_METRICS_SERVER);
  lua_pushboolean(L, !s || !s->listening);
  return 1;
}

/* fields: host, port (the bound one), path, url */
static int msrv_fields(lua_State *L)
{
  lsip_msrv_t *s = (lsip_msrv_t *)luasip_checkobj(L, 1, LUASIP_METRICS_SERVER);
  const char *k = luaL_checkstring(L, 2);
  if (!strcmp(k, "host"))
    lua_pushstring(L, s->host);
  else if (!strcmp(k, "port"))
    lua_pushinteger(L, s->port);
  else if (!strcmp(k, "path"))
    lua_pushstring(L, s->path);
  else if (!strcmp(k, "url"))
    lua_pushfstring(L, strchr(s->host, ':') ? "http://[%s]:%d%s" : "http://%s:%d%s",
                    s->host, s->port, s->path);
  else
    lua_pushnil(L);
  return 1;
}

static const luaL_Reg msrv_methods[] = {
  {"close", msrv_close},
  {"closed", msrv_closed},
  {NULL, NULL}
};

void luasip_metrics_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_METRICS_SERVER, msrv_methods, msrv_fields);
}
