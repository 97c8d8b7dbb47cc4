/* SPDX-License-Identifier: MIT
 * rtpgen: the far end of bench/media.sh.  Sends one G.711 (PCMU, 1 kHz tone) RTP stream
 * to each port listed in PORTFILE (127.0.0.1 only), paced by its own 20 ms timerfd, and
 * receives what comes back with kernel receive timestamps (SO_TIMESTAMPNS): after
 * WARMUP s it measures for MEASURE s the interval between consecutive packets of each
 * stream (histogram: p50, p99, max), loss (RTP sequence numbers) and drift (least-squares
 * slope of RTP time against arrival time, per stream), and prints one RESULT line.
 * Usage: rtpgen PORTFILE WARMUP_S MEASURE_S
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#define BIN_US 10
#define NBINS 100000               /* 10 us bins up to 1 s */
#define BATCH 32

typedef struct {
  int fd;
  struct sockaddr_in dst;
  uint16_t seq;
  uint32_t ts, ssrc;
  /* receive, during the measurement */
  int have;
  int64_t last_ns, first_ns;
  uint32_t first_ts, last_ts, cycles;
  uint16_t first_seq, max_seq;
  long received;
  double sx, sy, sxx, sxy;         /* least squares: RTP time (y) against arrival (x), s */
} gstream_t;

/* slope of y over x from the sums, minus 1, in %: the drift of one clock against another */
static double drift_pct(double n, double sx, double sy, double sxx, double sxy)
{
  double var = n * sxx - sx * sx;
  return var > 0 ? 100.0 * ((n * sxy - sx * sy) / var - 1.0) : 0;
}

static uint32_t hist[NBINS];
static long nint, over;
static int64_t max_int_ns;

static int64_t now_ns(clockid_t c)
{
  struct timespec t;
  clock_gettime(c, &t);
  return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

static int cmp_int(const void *a, const void *b)
{
  return *(const int *)a - *(const int *)b;
}

static long pct(double p)
{
  long want = (long)ceil(p * (double)nint), acc = 0;
  int i;
  for (i = 0; i < NBINS; i++) {
    acc += hist[i];
    if (acc >= want)
      return (long)i * BIN_US + BIN_US / 2;
  }
  return -1;
}

int main(int argc, char **argv)
{
  FILE *f;
  int *ports = NULL, n = 0, cap = 0, port, tfd, i, one = 1;
  gstream_t *s;
  uint8_t pkt[172], tone[160];
  double warm, meas;
  int64_t t0, tstart, tend;
  struct itimerspec its;
  long sent = 0;
  int64_t ref_first = 0;
  uint64_t ref_ticks = 0;
  double rn = 0, rsx = 0, rsy = 0, rsxx = 0, rsxy = 0;
  if (argc != 4) {
    fprintf(stderr, "usage: rtpgen PORTFILE WARMUP_S MEASURE_S\n");
    return 2;
  }
  warm = atof(argv[2]);
  meas = atof(argv[3]);
  f = fopen(argv[1], "r");
  if (!f) {
    perror(argv[1]);
    return 2;
  }
  while (fscanf(f, "%d", &port) == 1) {
    if (n == cap) {
      cap = cap ? 2 * cap : 256;
      ports = realloc(ports, (size_t)cap * sizeof *ports);
    }
    ports[n++] = port;
  }
  fclose(f);
  qsort(ports, (size_t)n, sizeof *ports, cmp_int);
  s = calloc((size_t)n, sizeof *s);
  for (i = 0; i < 160; i++) {      /* 1 kHz at -10 dBm0, mu-law (the slow way, once) */
    double v = 7200.0 * sin(2 * M_PI * 1000.0 * i / 8000.0);
    int x = (int)v, sign = x < 0 ? 0x00 : 0x80, seg, mag;
    if (x < 0)
      x = -x;
    x += 132;
    if (x > 32767)
      x = 32767;
    for (seg = 7; seg > 0 && !(x & (0x80 << seg)); seg--)
      ;
    mag = (x >> (seg + 3)) & 0x0f;
    tone[i] = (uint8_t)~(sign | (seg << 4) | mag);
  }
  for (i = 0; i < n; i++) {
    struct sockaddr_in a;
    int rcv = 1 << 20;
    s[i].fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    if (s[i].fd < 0) {
      perror("socket");
      return 2;
    }
    setsockopt(s[i].fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof one);
    setsockopt(s[i].fd, SOL_SOCKET, SO_RCVBUF, &rcv, sizeof rcv);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s[i].fd, (struct sockaddr *)&a, sizeof a) < 0) {
      perror("bind");
      return 2;
    }
    s[i].dst = a;
    s[i].dst.sin_port = htons((uint16_t)ports[i]);
    s[i].seq = (uint16_t)rand();
    s[i].ts = (uint32_t)rand();
    s[i].ssrc = (uint32_t)rand();
  }
  tfd = timerfd_create(CLOCK_MONOTONIC, 0);
  memset(&its, 0, sizeof its);
  clock_gettime(CLOCK_MONOTONIC, &its.it_value);
  its.it_interval.tv_nsec = 20000000L;
  timerfd_settime(tfd, TFD_TIMER_ABSTIME, &its, NULL);
  t0 = now_ns(CLOCK_REALTIME);     /* SO_TIMESTAMPNS stamps are CLOCK_REALTIME */
  tstart = t0 + (int64_t)(warm * 1e9);
  tend = tstart + (int64_t)(meas * 1e9);
  for (;;) {
    uint64_t k;
    int64_t now;
    if (read(tfd, &k, sizeof k) != sizeof k)
      continue;
    now = now_ns(CLOCK_REALTIME);
    if (now >= tend)
      break;
    if (now >= tstart) {           /* our own timer against the same clock */
      double x, y;
      if (!ref_first)
        ref_first = now;
      else
        ref_ticks += k;
      x = (double)(now - ref_first) / 1e9;
      y = (double)ref_ticks * 0.02;
      rn++;
      rsx += x;
      rsy += y;
      rsxx += x * x;
      rsxy += x * y;
    }
    for (i = 0; i < n; i++) {
      gstream_t *g = &s[i];
      pkt[0] = 0x80;
      pkt[1] = 0;
      pkt[2] = (uint8_t)(g->seq >> 8);
      pkt[3] = (uint8_t)g->seq;
      pkt[4] = (uint8_t)(g->ts >> 24);
      pkt[5] = (uint8_t)(g->ts >> 16);
      pkt[6] = (uint8_t)(g->ts >> 8);
      pkt[7] = (uint8_t)g->ts;
      memcpy(pkt + 8, &g->ssrc, 4);
      memcpy(pkt + 12, tone, 160);
      if (sendto(g->fd, pkt, sizeof pkt, 0, (struct sockaddr *)&g->dst, sizeof g->dst) > 0)
        sent++;
      g->seq++;
      g->ts += 160 * (uint32_t)k;
    }
    for (i = 0; i < n; i++) {
      gstream_t *g = &s[i];
      for (;;) {
        static uint8_t bufs[BATCH][256];
        static char ctl[BATCH][64];
        struct mmsghdr m[BATCH];
        struct iovec iov[BATCH];
        int j, got;
        memset(m, 0, sizeof m);
        for (j = 0; j < BATCH; j++) {
          iov[j].iov_base = bufs[j];
          iov[j].iov_len = sizeof bufs[j];
          m[j].msg_hdr.msg_iov = &iov[j];
          m[j].msg_hdr.msg_iovlen = 1;
          m[j].msg_hdr.msg_control = ctl[j];
          m[j].msg_hdr.msg_controllen = sizeof ctl[j];
        }
        got = recvmmsg(g->fd, m, BATCH, MSG_DONTWAIT, NULL);
        if (got <= 0)
          break;
        for (j = 0; j < got; j++) {
          struct cmsghdr *c;
          int64_t at = 0;
          uint8_t *b = bufs[j];
          uint16_t seq;
          uint32_t ts;
          if (m[j].msg_len < 12)
            continue;
          for (c = CMSG_FIRSTHDR(&m[j].msg_hdr); c; c = CMSG_NXTHDR(&m[j].msg_hdr, c))
            if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_TIMESTAMPNS) {
              struct timespec t;
              memcpy(&t, CMSG_DATA(c), sizeof t);
              at = (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
            }
          if (!at || at < tstart || at >= tend)
            continue;
          seq = (uint16_t)((b[2] << 8) | b[3]);
          ts = ((uint32_t)b[4] << 24) | ((uint32_t)b[5] << 16) | ((uint32_t)b[6] << 8) | b[7];
          if (!g->have) {
            g->have = 1;
            g->first_ns = at;
            g->first_ts = ts;
            g->first_seq = g->max_seq = seq;
          } else {
            int64_t d = at - g->last_ns;
            uint16_t delta = (uint16_t)(seq - g->max_seq);
            if (d < 0)
              d = 0;
            if (d / 1000 / BIN_US < NBINS)
              hist[d / 1000 / BIN_US]++;
            else
              over++;
            nint++;
            if (d > max_int_ns)
              max_int_ns = d;
            if (delta < 3000) {
              if (seq < g->max_seq)
                g->cycles += 65536;
              g->max_seq = seq;
            }
          }
          g->last_ns = at;
          g->last_ts = ts;
          g->received++;
          {
            double x = (double)(at - g->first_ns) / 1e9;
            double y = (double)(uint32_t)(ts - g->first_ts) / 8000.0;
            g->sx += x;
            g->sy += y;
            g->sxx += x * x;
            g->sxy += x * y;
          }
        }
      }
    }
  }
  {
    long received = 0, expected = 0, streams = 0;
    double dsum = 0, dmax = 0;
    for (i = 0; i < n; i++) {
      gstream_t *g = &s[i];
      if (!g->have)
        continue;
      streams++;
      received += g->received;
      expected += (long)(g->cycles + g->max_seq) - g->first_seq + 1;
      if (g->received > 10) {
        double drift = drift_pct((double)g->received, g->sx, g->sy, g->sxx, g->sxy);
        dsum += drift;
        if (fabs(drift) > fabs(dmax))
          dmax = drift;
      }
    }
    printf("RESULT streams=%d answering=%ld sent=%ld received=%ld lost=%ld "
           "p50_us=%ld p99_us=%ld max_us=%lld over_1s=%ld drift_pct_mean=%.4f "
           "drift_pct_worst=%.4f ref_drift_pct=%.4f\n", n, streams, sent, received,
           expected > received ? expected - received : 0, pct(0.5), pct(0.99),
           (long long)(max_int_ns / 1000), over, streams ? dsum / (double)streams : 0, dmax,
           drift_pct(rn, rsx, rsy, rsxx, rsxy));
  }
  return 0;
}
