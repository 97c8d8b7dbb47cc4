/* SPDX-License-Identifier: MIT
 * luasip.rtp: one RTP stream (G.711, RFC 4733 telephone-event) of one call leg, and the
 * one 20 ms media clock all streams share: a timerfd (CLOCK_MONOTONIC, absolute start,
 * periodic) registered once on the su_root while a stream is open.  Each tick runs every
 * stream's send side (prompt, tone, silence, echo, bridge, DTMF), then drains every
 * socket (recvmmsg) and runs the receive side (latching, RFC 4733, spandsp in-band DTMF,
 * recorder), and last enters Lua once per stream that queued events:
 * luasip_bridge("media", rtp).  The struct belongs to its userdata, anchored while open;
 * prompts (media_audio.c) are shared and reference counted.
 */
#define _GNU_SOURCE             /* recvmmsg */
#include <errno.h>
#include <math.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <spandsp.h>

#include "luasip.h"

#define FRAME 160                 /* samples per 20 ms at 8 kHz */
#define TICK_NS 20000000L
#define RXQ_MAX 1600              /* received samples waiting for a tick (200 ms) */
#define EV_MAX 1024               /* queued events per stream (Lua not reading: dropped) */
#define PKT_MAX 1500
#define BATCH 16
#define TICK_PKTS_MAX 256         /* per stream and tick: a flood waits for the next one */
#define DIGITS_MAX 64
#define EVENT_IDLE_TICKS 25       /* an RFC 4733 event without end: reported after 500 ms */

enum { C_NONE, C_PCMU, C_PCMA };
enum { EV_DIGIT, EV_OUTPUT_DONE, EV_DTMF_DONE, EV_RECORD_DONE, EV_LATCHED, EV_TIMEOUT };
enum { R_DONE, R_STOPPED, R_ERROR, R_SILENCE, R_MAX };
static const char *const REASONS[] = { "done", "stopped", "error", "silence", "max" };
enum { OUT_NONE, OUT_PLAY, OUT_TONE, OUT_SILENCE, OUT_ECHO };
enum { DT_START, DT_TONE, DT_END, DT_GAP };
static const char DTMF_CHARS[] = "0123456789*#ABCD";

typedef struct rtp_event {
  int type, reason, port;
  char digit;
  int inband;
  long ms;
  unsigned id;
  char text[160];           /* error message, or the latched address */
} rtp_event_t;

typedef struct out {
  int kind;
  unsigned id;
  long played;              /* samples */
  /* play */
  lsip_prompt_t **prompts;
  int nprompts, cur, loops_left;   /* loops_left 0: for ever */
  size_t pos;
  /* tone */
  double inc[2], ph[2], amp;
  int nf;
  long on, off, total;      /* samples; total < 0: until stopped */
} out_t;

typedef struct dtmf_job {
  struct dtmf_job *next;
  unsigned id;
  int inband, ms, gap;
  size_t pos;
  char digits[DIGITS_MAX + 1];
} dtmf_job_t;

typedef struct rec {
  void *wav;
  unsigned id;
  long frames, max_frames, silence_frames, quiet;
  int32_t level;            /* mean square below which a frame is silent */
} rec_t;

typedef struct rtp_stats {
  unsigned long packets_sent, packets_received, octets_sent, octets_received;
  unsigned long strangers, bad_packets, ssrc_changes, late_ticks, send_errors;
  unsigned long events_dropped;
  long lost_before;         /* losses of earlier SSRCs */
} rtp_stats_t;

/* A stream's life, changed only by rtp_to(): OPEN (socket, on the clock, anchored) and
 * CLOSED (socket closed, off the clock, output/record ended without events, unanchored). */
typedef enum { RTP_OPEN, RTP_CLOSED } rtp_state_t;

typedef struct lsip_rtp lsip_rtp_t;
struct lsip_rtp {
  lsip_obj_t obj;
  rtp_state_t state;
  int fd, family, slot, local_port;
  char local_addr[INET6_ADDRSTRLEN];
  struct sockaddr_storage remote;
  socklen_t remote_len;
  int have_remote, latched;
  /* the address set_remote last gave, and the one latched before it changed (a peer
   * replaced -- another fork, a failover target -- that may still be sending) */
  struct sockaddr_storage signalled, stale;
  int have_signalled, have_stale;
  /* codecs and direction */
  int send_pt, send_codec, te_send_pt, te_recv_pt, can_send, can_recv, inband;
  long timeout_ticks, idle_ticks;
  unsigned char recv_codec[128];
  /* send side */
  uint32_t ssrc, ts;
  uint16_t seq;
  int sent_last;
  out_t out;
  dtmf_job_t *jobs;
  int dt_phase, dt_ends;
  long dt_elapsed, dt_gap;
  uint32_t dt_ts;
  dtmf_tx_state_t *dtx;
  /* receive side */
  int16_t rxq[RXQ_MAX];
  int rxq_n;
  int16_t rx_frame[FRAME];
  int rx_have;
  int rx_have_ssrc;
  uint32_t rx_ssrc;
  uint16_t max_seq;
  uint32_t cycles, base_seq, received;
  int have_transit;
  double transit, jitter;
  /* RFC 4733 receive */
  int te_seen, ev_active, ev_code, ev_have_last;
  uint32_t ev_ts, ev_last_ts;
  long ev_acc, ev_dur, ev_idle;
  /* in-band receive */
  dtmf_rx_state_t *drx;
  int ib_digit;
  long ib_start, rx_samples;
  rec_t rec;
  lsip_rtp_t *peer;         /* bridged with */
  rtp_event_t *ev;
  size_t nev, ev_cap;
  int notify;
  unsigned next_id;
  rtp_stats_t st;
};

/* the media clock and the streams on it */
static struct {
  int fd, reg;
  su_wait_t wait[1];
  lsip_rtp_t **s;
  size_t n, cap;
  lsip_rtp_t **notify;
  size_t notify_cap;
  struct timespec due;      /* the next expiry */
  unsigned long ticks, late, skipped;
  long max_late_us, max_work_us;
} eng = { -1, -1, {{0}}, NULL, 0, 0, NULL, 0, {0, 0}, 0, 0, 0, 0, 0 };

static rtp_event_t ev_sink;   /* where events of a full queue or closed stream go */

static long ns_between(const struct timespec *a, const struct timespec *b)
{
  return (b->tv_sec - a->tv_sec) * 1000000000L + (b->tv_nsec - a->tv_nsec);
}

static void ts_add(struct timespec *t, long ns)
{
  t->tv_nsec += ns;
  while (t->tv_nsec >= 1000000000L) {
    t->tv_nsec -= 1000000000L;
    t->tv_sec++;
  }
}

/* ---------------------------------------------------------------- events */

static rtp_event_t *ev_push(lsip_rtp_t *s, int type)
{
  rtp_event_t *e;
  if (s->state != RTP_OPEN)
    return &ev_sink;                /* closed: no more events */
  if (s->nev >= EV_MAX) {
    s->st.events_dropped++;
    return &ev_sink;
  }
  if (s->nev == s->ev_cap) {
    size_t cap = s->ev_cap ? 2 * s->ev_cap : 8;
    rtp_event_t *n = realloc(s->ev, cap * sizeof *n);
    if (!n) {
      s->st.events_dropped++;
      return &ev_sink;
    }
    s->ev = n;
    s->ev_cap = cap;
  }
  e = &s->ev[s->nev++];
  memset(e, 0, sizeof *e);
  e->type = type;
  s->notify = 1;
  return e;
}

static void ev_digit(lsip_rtp_t *s, char digit, int inband, long ms)
{
  rtp_event_t *e = ev_push(s, EV_DIGIT);
  e->digit = digit;
  e->inband = inband;
  e->ms = ms;
}

static void ev_done(lsip_rtp_t *s, int type, unsigned id, int reason, long ms,
                    const char *err)
{
  rtp_event_t *e = ev_push(s, type);
  e->id = id;
  e->reason = reason;
  e->ms = ms;
  if (err)
    snprintf(e->text, sizeof e->text, "%s", err);
}

/* ---------------------------------------------------------------- outputs */

static void out_release(out_t *o)
{
  int i;
  for (i = 0; i < o->nprompts; i++)
    luasip_prompt_release(o->prompts[i]);
  free(o->prompts);
  memset(o, 0, sizeof *o);
}

/* Ends the current output (an output_done event unless the stream is closing). */
static void out_end(lsip_rtp_t *s, int reason, const char *err)
{
  if (s->out.kind == OUT_NONE)
    return;
  ev_done(s, EV_OUTPUT_DONE, s->out.id, reason, s->out.played / 8, err);
  out_release(&s->out);
}

/* One frame of the current output into pcm (silence without one). */
static void out_frame(lsip_rtp_t *s, int16_t *pcm)
{
  out_t *o = &s->out;
  int i;
  switch (o->kind) {
  case OUT_PLAY: {
    int n = 0;
    while (n < FRAME) {
      size_t len;
      const int16_t *src = luasip_prompt_pcm(o->prompts[o->cur], &len);
      if (o->pos < len) {
        size_t k = len - o->pos;
        if (k > (size_t)(FRAME - n))
          k = (size_t)(FRAME - n);
        memcpy(pcm + n, src + o->pos, k * sizeof *pcm);
        o->pos += k;
        n += (int)k;
        o->played += (long)k;
        continue;
      }
      o->pos = 0;
      if (++o->cur < o->nprompts)
        continue;
      o->cur = 0;
      if (o->loops_left > 0 && --o->loops_left == 0)
        break;
      if (o->played == 0 && n == 0)
        break;                      /* a list of empty files: nothing to loop */
    }
    if (n < FRAME) {
      memset(pcm + n, 0, (size_t)(FRAME - n) * sizeof *pcm);
      out_end(s, R_DONE, NULL);
    }
    return;
  }
  case OUT_TONE:
    for (i = 0; i < FRAME; i++) {
      long c = o->off > 0 ? o->played % (o->on + o->off) : 0;
      double v = 0;
      if (o->total >= 0 && o->played >= o->total) {
        memset(pcm + i, 0, (size_t)(FRAME - i) * sizeof *pcm);
        out_end(s, R_DONE, NULL);
        return;
      }
      if (c < o->on || o->off <= 0) {
        int f;
        for (f = 0; f < o->nf; f++) {
          v += sin(o->ph[f]);
          o->ph[f] += o->inc[f];
          if (o->ph[f] > 2 * M_PI)
            o->ph[f] -= 2 * M_PI;
        }
      } else {
        o->ph[0] = o->ph[1] = 0;    /* each burst starts at phase 0 */
      }
      pcm[i] = (int16_t)lrint(v * o->amp);
      o->played++;
    }
    if (o->total >= 0 && o->played >= o->total)
      out_end(s, R_DONE, NULL);
    return;
  case OUT_SILENCE:
    memset(pcm, 0, FRAME * sizeof *pcm);
    o->played += FRAME;
    if (o->played >= o->total) {
      o->played = o->total;
      out_end(s, R_DONE, NULL);
    }
    return;
  case OUT_ECHO:
    if (s->rx_have)
      memcpy(pcm, s->rx_frame, FRAME * sizeof *pcm);
    else
      memset(pcm, 0, FRAME * sizeof *pcm);
    o->played += FRAME;
    return;
  default:
    memset(pcm, 0, FRAME * sizeof *pcm);
  }
}

/* ---------------------------------------------------------------- recorder */

static void rec_end(lsip_rtp_t *s, int reason, const char *err)
{
  if (!s->rec.wav)
    return;
  luasip_wav_close(s->rec.wav);     /* the file is complete from here on */
  ev_done(s, EV_RECORD_DONE, s->rec.id, reason, s->rec.frames * 20, err);
  memset(&s->rec, 0, sizeof s->rec);
}

static void rec_frame(lsip_rtp_t *s, const int16_t *pcm)
{
  rec_t *r = &s->rec;
  char err[128];
  int64_t sum = 0;
  int i;
  if (!r->wav)
    return;
  if (luasip_wav_write(r->wav, pcm, FRAME, err, sizeof err) < 0) {
    rec_end(s, R_ERROR, err);
    return;
  }
  r->frames++;
  for (i = 0; i < FRAME; i++)
    sum += (int32_t)pcm[i] * pcm[i];
  if (sum / FRAME < r->level)
    r->quiet++;
  else
    r->quiet = 0;
  if (r->silence_frames && r->quiet >= r->silence_frames)
    rec_end(s, R_SILENCE, NULL);
  else if (r->max_frames && r->frames >= r->max_frames)
    rec_end(s, R_MAX, NULL);
}

/* ---------------------------------------------------------------- DTMF send */

static int dtmf_code(char c)
{
  const char *p = c ? strchr(DTMF_CHARS, c >= 'a' && c <= 'd' ? c - 'a' + 'A' : c) : NULL;
  return p ? (int)(p - DTMF_CHARS) : -1;
}

static void dtmf_job_done(lsip_rtp_t *s, int report)
{
  dtmf_job_t *j = s->jobs;
  if (!j)
    return;
  s->jobs = j->next;
  if (report && j->id)              /* id 0: a digit relayed from the bridged stream */
    ev_push(s, EV_DTMF_DONE)->id = j->id;
  if (s->dtx) {
    dtmf_tx_free(s->dtx);
    s->dtx = NULL;
  }
  s->dt_phase = DT_START;
  free(j);
}

static void dtmf_queue(lsip_rtp_t *s, dtmf_job_t *j)
{
  dtmf_job_t **pp = &s->jobs;
  while (*pp)
    pp = &(*pp)->next;
  *pp = j;
}

/* ---------------------------------------------------------------- send */

static void rtp_send(lsip_rtp_t *s, int pt, int marker, uint32_t ts, const uint8_t *pay,
                     size_t n)
{
  uint8_t pkt[12 + 2 * FRAME];
  pkt[0] = 0x80;
  pkt[1] = (uint8_t)((marker ? 0x80 : 0) | (pt & 0x7f));
  pkt[2] = (uint8_t)(s->seq >> 8);
  pkt[3] = (uint8_t)s->seq;
  pkt[4] = (uint8_t)(ts >> 24);
  pkt[5] = (uint8_t)(ts >> 16);
  pkt[6] = (uint8_t)(ts >> 8);
  pkt[7] = (uint8_t)ts;
  pkt[8] = (uint8_t)(s->ssrc >> 24);
  pkt[9] = (uint8_t)(s->ssrc >> 16);
  pkt[10] = (uint8_t)(s->ssrc >> 8);
  pkt[11] = (uint8_t)s->ssrc;
  memcpy(pkt + 12, pay, n);
  s->seq++;
  if (sendto(s->fd, pkt, 12 + n, MSG_DONTWAIT, (struct sockaddr *)&s->remote,
             s->remote_len) < 0) {
    s->st.send_errors++;
    return;
  }
  s->st.packets_sent++;
  s->st.octets_sent += n;
  luasip_counters.rtp_packets[0]++;
  luasip_counters.rtp_octets[0] += n;
  s->sent_last = 1;
}

static void send_event(lsip_rtp_t *s, int code, int end, long dur, int marker)
{
  uint8_t p[4];
  if (dur > 0xffff)
    dur = 0xffff;
  p[0] = (uint8_t)code;
  p[1] = (uint8_t)((end ? 0x80 : 0) | 10);   /* volume -10 dBm0 */
  p[2] = (uint8_t)(dur >> 8);
  p[3] = (uint8_t)dur;
  rtp_send(s, s->te_send_pt, marker, s->dt_ts, p, 4);
}

/* RFC 4733 send for this tick: 1 when an event packet replaced the audio */
static int dtmf_rfc4733_tick(lsip_rtp_t *s, unsigned k, int can)
{
  dtmf_job_t *j = s->jobs;
  int code;
  if (s->dt_phase == DT_START) {
    if (s->te_send_pt < 0 || !j->digits[j->pos]) {
      dtmf_job_done(s, 1);
      return 0;
    }
    s->dt_ts = s->ts;               /* the event timestamp stays fixed (RFC 4733 2.5.1.2) */
    s->dt_elapsed = 0;
    s->dt_phase = DT_TONE;
    code = dtmf_code(j->digits[j->pos]);
    s->dt_elapsed = FRAME;
    if (can)
      send_event(s, code, 0, s->dt_elapsed, 1);
    return 1;
  }
  code = dtmf_code(j->digits[j->pos]);
  if (s->dt_phase == DT_TONE) {
    s->dt_elapsed += (long)FRAME * k;
    if (s->dt_elapsed >= (long)j->ms * 8) {
      s->dt_elapsed = (long)j->ms * 8;
      s->dt_phase = DT_END;
      s->dt_ends = 0;
    } else {
      if (can)
        send_event(s, code, 0, s->dt_elapsed, 0);
      return 1;
    }
  }
  if (s->dt_phase == DT_END) {      /* the end packet three times, one per tick */
    if (can)
      send_event(s, code, 1, s->dt_elapsed, 0);
    if (++s->dt_ends >= 3) {
      s->dt_phase = DT_GAP;
      s->dt_gap = (long)j->gap * 8;
    }
    return 1;
  }
  s->dt_gap -= (long)FRAME * k;     /* DT_GAP: the audio flows again */
  if (s->dt_gap <= 0) {
    s->dt_phase = DT_START;
    if (!j->digits[++j->pos])
      dtmf_job_done(s, 1);
  }
  return 0;
}

static void encode(int codec, const int16_t *pcm, uint8_t *out)
{
  int i;
  if (codec == C_PCMA)
    for (i = 0; i < FRAME; i++)
      out[i] = linear_to_alaw(pcm[i]);
  else
    for (i = 0; i < FRAME; i++)
      out[i] = linear_to_ulaw(pcm[i]);
}

/* The send side of one tick; k > 1 after missed ticks: positions and the timestamp
 * advance by k frames, one packet goes out (no burst). */
static void rtp_send_tick(lsip_rtp_t *s, unsigned k)
{
  int16_t pcm[FRAME];
  uint8_t pay[FRAME];
  int can = s->can_send && s->have_remote, evsent = 0;
  unsigned i;
  if (s->peer) {                    /* bridged: outputs wait */
    if (s->peer->rx_have)
      memcpy(pcm, s->peer->rx_frame, sizeof pcm);
    else
      memset(pcm, 0, sizeof pcm);
  } else {
    for (i = 0; i < k; i++)
      out_frame(s, pcm);
  }
  if (s->jobs) {
    if (s->jobs->inband) {
      int n;
      if (!s->dtx) {
        s->dtx = dtmf_tx_init(NULL);
        if (s->dtx) {
          dtmf_tx_set_timing(s->dtx, s->jobs->ms, s->jobs->gap);
          dtmf_tx_put(s->dtx, s->jobs->digits, -1);
        }
      }
      n = s->dtx ? dtmf_tx(s->dtx, pcm, FRAME) : 0;
      for (i = 1; i < k && n > 0; i++)
        n = dtmf_tx(s->dtx, pcm, FRAME);
      if (n < FRAME) {
        if (n > 0)
          memset(pcm + n, 0, (size_t)(FRAME - n) * sizeof *pcm);
        if (n <= 0)
          dtmf_job_done(s, 1);
      }
    } else {
      evsent = dtmf_rfc4733_tick(s, k, can);
    }
  }
  if (can && !evsent) {
    encode(s->send_codec, pcm, pay);
    rtp_send(s, s->send_pt, !s->sent_last, s->ts, pay, FRAME);
  } else if (!evsent) {
    s->sent_last = 0;               /* the next packet starts a talkspurt */
  }
  s->ts += (uint32_t)FRAME * k;
}

/* ---------------------------------------------------------------- receive */

static void inband_report(void *data, int code, int level, int delay)
{
  lsip_rtp_t *s = data;
  (void)level; (void)delay;
  if (code) {
    s->ib_digit = code;
    s->ib_start = s->rx_samples;
  } else if (s->ib_digit) {
    if (!s->te_seen)
      ev_digit(s, (char)s->ib_digit, 1, (s->rx_samples - s->ib_start) / 8);
    s->ib_digit = 0;
  }
}

static void rfc4733_report(lsip_rtp_t *s)
{
  long ms = (s->ev_acc + s->ev_dur) / 8;
  s->ev_active = 0;
  s->ev_have_last = 1;
  s->ev_last_ts = s->ev_ts;
  if (s->ev_code < 16) {
    ev_digit(s, DTMF_CHARS[s->ev_code], 0, ms);
    if (s->peer && s->peer->state == RTP_OPEN) {   /* relay the key to the other leg */
      dtmf_job_t *j = calloc(1, sizeof *j);
      if (j) {
        j->digits[0] = DTMF_CHARS[s->ev_code];
        j->ms = ms < 40 ? 40 : ms > 2000 ? 2000 : (int)ms;
        j->gap = 40;
        j->inband = s->peer->te_send_pt < 0;
        j->id = 0;
        dtmf_queue(s->peer, j);
      }
    }
  }
}

/* RFC 4733 receive: one digit per event (keyed by its timestamp), reported at its end;
 * duplicates and retransmitted ends are ignored, a lost start still gives the digit,
 * long-event segments (new timestamp, same event, no marker) count once. */
static void rfc4733_packet(lsip_rtp_t *s, uint32_t ts, int marker, const uint8_t *p,
                           size_t n)
{
  int code, end;
  long dur;
  if (n < 4) {
    s->st.bad_packets++;
    return;
  }
  code = p[0];
  end = p[1] & 0x80;
  dur = (p[2] << 8) | p[3];
  s->te_seen = 1;
  if (s->ev_have_last && ts == s->ev_last_ts)
    return;
  if (s->ev_active && ts != s->ev_ts) {
    if (code == s->ev_code && !marker) {
      s->ev_acc += s->ev_dur;
      s->ev_ts = ts;
      s->ev_dur = 0;
    } else {
      rfc4733_report(s);            /* the previous one lost its end packets */
    }
  }
  if (!s->ev_active) {
    s->ev_active = 1;
    s->ev_ts = ts;
    s->ev_code = code;
    s->ev_acc = 0;
    s->ev_dur = 0;
  }
  if (dur > s->ev_dur)
    s->ev_dur = dur;
  s->ev_idle = 0;
  if (end)
    rfc4733_report(s);
}

static void rxq_push(lsip_rtp_t *s, const int16_t *pcm, int n)
{
  if (n > RXQ_MAX)
    n = RXQ_MAX;
  if (s->rxq_n + n > RXQ_MAX) {     /* overflow: the oldest samples go */
    int drop = s->rxq_n + n - RXQ_MAX;
    memmove(s->rxq, s->rxq + drop, (size_t)(s->rxq_n - drop) * sizeof *pcm);
    s->rxq_n -= drop;
  }
  memcpy(s->rxq + s->rxq_n, pcm, (size_t)n * sizeof *pcm);
  s->rxq_n += n;
}

static void audio_packet(lsip_rtp_t *s, int codec, uint32_t ts, const uint8_t *p, size_t n,
                         const struct timespec *now)
{
  int16_t pcm[PKT_MAX];
  size_t i;
  double arrival = (double)now->tv_sec * 8000.0 + (double)now->tv_nsec / 125000.0;
  double transit = arrival - (double)ts;
  if (s->have_transit) {            /* RFC 3550 6.4.1 */
    double d = fabs(transit - s->transit);
    if (d < 8000.0 * 10)
      s->jitter += (d - s->jitter) / 16.0;
  }
  s->transit = transit;
  s->have_transit = 1;
  if (codec == C_PCMA)
    for (i = 0; i < n; i++)
      pcm[i] = alaw_to_linear(p[i]);
  else
    for (i = 0; i < n; i++)
      pcm[i] = ulaw_to_linear(p[i]);
  rxq_push(s, pcm, (int)n);
  if (s->inband && !s->te_seen && s->drx) {
    dtmf_rx(s->drx, pcm, (int)n);
    s->rx_samples += (long)n;
  }
}

static int same_addr(const struct sockaddr_storage *a, const struct sockaddr_storage *b)
{
  if (a->ss_family != b->ss_family)
    return 0;
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a, *y = (const void *)b;
    return x->sin_port == y->sin_port && x->sin_addr.s_addr == y->sin_addr.s_addr;
  } else {
    const struct sockaddr_in6 *x = (const void *)a, *y = (const void *)b;
    return x->sin6_port == y->sin6_port &&
      !memcmp(&x->sin6_addr, &y->sin6_addr, sizeof x->sin6_addr);
  }
}

static void addr_text(const struct sockaddr_storage *a, char *buf, size_t len, int *port)
{
  if (a->ss_family == AF_INET) {
    const struct sockaddr_in *x = (const void *)a;
    inet_ntop(AF_INET, &x->sin_addr, buf, (socklen_t)len);
    *port = ntohs(x->sin_port);
  } else {
    const struct sockaddr_in6 *x = (const void *)a;
    inet_ntop(AF_INET6, &x->sin6_addr, buf, (socklen_t)len);
    *port = ntohs(x->sin6_port);
  }
}

/* RFC 3550 A.1, reduced: extended highest sequence number and packets received per
 * SSRC; a new SSRC restarts it (the losses so far are kept). */
static void seq_update(lsip_rtp_t *s, uint32_t ssrc, uint16_t seq)
{
  if (!s->rx_have_ssrc || ssrc != s->rx_ssrc) {
    if (s->rx_have_ssrc) {
      long exp = (long)(s->cycles + s->max_seq) - (long)s->base_seq + 1;
      if (exp > (long)s->received)
        s->st.lost_before += exp - (long)s->received;
      s->st.ssrc_changes++;
      s->have_transit = 0;
    }
    s->rx_have_ssrc = 1;
    s->rx_ssrc = ssrc;
    s->base_seq = seq;
    s->max_seq = seq;
    s->cycles = 0;
    s->received = 0;
  } else {
    uint16_t delta = (uint16_t)(seq - s->max_seq);
    if (delta < 3000) {
      if (seq < s->max_seq)
        s->cycles += 65536;
      s->max_seq = seq;
    }
  }
  s->received++;
}

static long lost_now(lsip_rtp_t *s)
{
  long lost = s->st.lost_before;
  if (s->rx_have_ssrc) {
    long exp = (long)(s->cycles + s->max_seq) - (long)s->base_seq + 1;
    if (exp > (long)s->received)
      lost += exp - (long)s->received;
  }
  return lost;
}

static void rtp_packet(lsip_rtp_t *s, const uint8_t *b, size_t n, int trunc,
                       const struct sockaddr_storage *from, socklen_t fromlen,
                       const struct timespec *now)
{
  size_t off;
  int pt, codec, marker;
  uint32_t ts, ssrc;
  uint16_t seq;
  if (trunc || n > PKT_MAX || n < 12 || (b[0] >> 6) != 2) {
    s->st.bad_packets++;
    return;
  }
  off = 12 + 4 * (size_t)(b[0] & 0x0f);
  if (off <= n && (b[0] & 0x10)) {  /* header extension */
    if (off + 4 > n) {
      s->st.bad_packets++;
      return;
    }
    off += 4 + 4 * (size_t)((b[off + 2] << 8) | b[off + 3]);
  }
  if (off > n) {
    s->st.bad_packets++;
    return;
  }
  if (b[0] & 0x20) {                /* padding: the last octet counts it */
    size_t pad = b[n - 1];
    if (pad == 0 || pad > n - off) {
      s->st.bad_packets++;
      return;
    }
    n -= pad;
  }
  marker = b[1] & 0x80;
  pt = b[1] & 0x7f;
  seq = (uint16_t)((b[2] << 8) | b[3]);
  ts = ((uint32_t)b[4] << 24) | ((uint32_t)b[5] << 16) | ((uint32_t)b[6] << 8) | b[7];
  ssrc = ((uint32_t)b[8] << 24) | ((uint32_t)b[9] << 16) | ((uint32_t)b[10] << 8) | b[11];
  codec = pt == s->te_recv_pt ? -1 : s->recv_codec[pt];
  if (codec == C_NONE) {
    s->st.bad_packets++;
    return;
  }
  if (s->latched || (s->have_stale && same_addr(from, &s->stale))) {
    if (!s->latched || !same_addr(from, &s->remote)) {
      s->st.strangers++;            /* (the replaced peer does not latch again) */
      return;
    }
  } else {                          /* symmetric RTP: send where it comes from */
    rtp_event_t *e;
    memcpy(&s->remote, from, fromlen);
    s->remote_len = fromlen;
    s->have_remote = 1;
    s->latched = 1;
    e = ev_push(s, EV_LATCHED);
    addr_text(from, e->text, sizeof e->text, &e->port);
  }
  s->idle_ticks = 0;
  s->st.packets_received++;
  s->st.octets_received += n - off;
  luasip_counters.rtp_packets[1]++;
  luasip_counters.rtp_octets[1] += n - off;
  seq_update(s, ssrc, seq);
  if (!s->can_recv)
    return;                         /* sendonly / inactive: counted, not used */
  if (codec < 0)
    rfc4733_packet(s, ts, marker, b + off, n - off);
  else
    audio_packet(s, codec, ts, b + off, n - off, now);
}

static void rtp_drain(lsip_rtp_t *s)
{
  static uint8_t bufs[BATCH][2048];
  static struct sockaddr_storage from[BATCH];
  struct mmsghdr msgs[BATCH];
  struct iovec iov[BATCH];
  struct timespec now;
  int total = 0;
  while (total < TICK_PKTS_MAX) {
    int i, got;
    memset(msgs, 0, sizeof msgs);
    for (i = 0; i < BATCH; i++) {
      iov[i].iov_base = bufs[i];
      iov[i].iov_len = sizeof bufs[i];
      msgs[i].msg_hdr.msg_iov = &iov[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &from[i];
      msgs[i].msg_hdr.msg_namelen = sizeof from[i];
    }
    got = recvmmsg(s->fd, msgs, BATCH, MSG_DONTWAIT, NULL);
    if (got <= 0)
      break;
    clock_gettime(CLOCK_MONOTONIC, &now);
    for (i = 0; i < got; i++)
      rtp_packet(s, bufs[i], msgs[i].msg_len, (msgs[i].msg_hdr.msg_flags & MSG_TRUNC) != 0,
                 &from[i], msgs[i].msg_hdr.msg_namelen, &now);
    total += got;
    if (got < BATCH)
      break;
  }
}

/* The receive side of one tick: drain, then one frame per elapsed tick for the recorder
 * (silence where nothing arrived); rx_frame keeps the last for echo and bridge. */
static void rtp_recv_tick(lsip_rtp_t *s, unsigned k)
{
  unsigned i;
  rtp_drain(s);
  for (i = 0; i < k; i++) {
    int n = s->rxq_n < FRAME ? s->rxq_n : FRAME;
    s->rx_have = n > 0;
    memcpy(s->rx_frame, s->rxq, (size_t)n * sizeof *s->rxq);
    memset(s->rx_frame + n, 0, (size_t)(FRAME - n) * sizeof *s->rxq);
    s->rxq_n -= n;
    memmove(s->rxq, s->rxq + n, (size_t)s->rxq_n * sizeof *s->rxq);
    rec_frame(s, s->rx_frame);
  }
  if (s->rxq_n > 4 * FRAME) {       /* a burst left a backlog: keep the delay bounded */
    int drop = s->rxq_n - 2 * FRAME;
    memmove(s->rxq, s->rxq + drop, (size_t)(s->rxq_n - drop) * sizeof *s->rxq);
    s->rxq_n -= drop;
  }
  if (s->ev_active && (s->ev_idle += (long)k) >= EVENT_IDLE_TICKS)
    rfc4733_report(s);
  if (s->timeout_ticks > 0) {
    long before = s->idle_ticks;
    s->idle_ticks += (long)k;
    if (before < s->timeout_ticks && s->idle_ticks >= s->timeout_ticks)
      ev_push(s, EV_TIMEOUT);
  }
  if (k > 1)
    s->st.late_ticks++;
}

/* ---------------------------------------------------------------- the clock */

static int media_tick(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg);

static int clock_start(void)
{
  struct itimerspec its;
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (fd < 0)
    return -1;
  clock_gettime(CLOCK_MONOTONIC, &eng.due);
  ts_add(&eng.due, TICK_NS);
  its.it_value = eng.due;
  its.it_interval.tv_sec = 0;
  its.it_interval.tv_nsec = TICK_NS;
  /* absolute and periodic: the kernel keeps the 20 ms grid; a late tick reads the
   * number of expirations instead of drifting */
  if (timerfd_settime(fd, TFD_TIMER_ABSTIME, &its, NULL) < 0 ||
      su_wait_create(eng.wait, fd, SU_WAIT_IN) < 0) {
    close(fd);
    return -1;
  }
  eng.reg = su_root_register(luasip_S->root, eng.wait, media_tick, NULL, 0);
  if (eng.reg < 0) {
    su_wait_destroy(eng.wait);
    close(fd);
    return -1;
  }
  eng.fd = fd;
  return 0;
}

static void clock_stop(void)
{
  if (eng.reg >= 0 && luasip_S && luasip_S->root)
    su_root_deregister(luasip_S->root, eng.reg);   /* also destroys the wait object */
  eng.reg = -1;
  if (eng.fd >= 0)
    close(eng.fd);
  eng.fd = -1;
}

static int media_tick(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  uint64_t k = 0;
  struct timespec now, done;
  long late;
  size_t i, nn = 0;
  (void)m; (void)w; (void)arg;
  if (read(eng.fd, &k, sizeof k) != (ssize_t)sizeof k || k == 0)
    return 0;
  clock_gettime(CLOCK_MONOTONIC, &now);
  late = ns_between(&eng.due, &now) - (long)(k - 1) * TICK_NS;  /* after the last expiry */
  ts_add(&eng.due, (long)k * TICK_NS);
  eng.ticks += k;
  eng.skipped += k - 1;
  if (k > 1 || late > 2000000L)
    eng.late++;
  if (late / 1000 > eng.max_late_us)
    eng.max_late_us = late / 1000;
  if (k > 50)
    k = 50;                         /* a stall of over a second: do not replay it */
  /* every stream sends first, so that its packet leaves at the same offset in each
   * tick whatever the receive work (echo and bridge send the frame of the last tick) */
  for (i = 0; i < eng.n; i++)
    rtp_send_tick(eng.s[i], (unsigned)k);
  for (i = 0; i < eng.n; i++)
    rtp_recv_tick(eng.s[i], (unsigned)k);
  /* the streams to tell, listed first: Lua may close or open streams meanwhile */
  if (eng.notify_cap < eng.n) {
    lsip_rtp_t **p = realloc(eng.notify, eng.cap * sizeof *p);
    if (p) {
      eng.notify = p;
      eng.notify_cap = eng.cap;
    }
  }
  for (i = 0; i < eng.n && nn < eng.notify_cap; i++)
    if (eng.s[i]->notify)
      eng.notify[nn++] = eng.s[i];
  clock_gettime(CLOCK_MONOTONIC, &done);
  if (ns_between(&now, &done) / 1000 > eng.max_work_us)
    eng.max_work_us = ns_between(&now, &done) / 1000;
  /* struct memory stays valid during the calls: a stream closed or collected by Lua is
   * freed only by luasip_drain, after the loop step; state and notify are re-read each
   * time (STYLE rule 8).  When Lua did not run, the events stay queued for rtp:events(). */
  for (i = 0; i < nn; i++) {
    lsip_rtp_t *s = eng.notify[i];
    if (s->state != RTP_OPEN || !s->notify || !s->nev)
      continue;
    s->notify = 0;
    luasip_bridge("media", &s->obj, NULL);
  }
  return 0;
}

static int engine_add(lsip_rtp_t *s)
{
  if (eng.n == eng.cap) {
    size_t cap = eng.cap ? 2 * eng.cap : 64;
    lsip_rtp_t **p = realloc(eng.s, cap * sizeof *p);
    if (!p)
      return -1;
    eng.s = p;
    eng.cap = cap;
  }
  if (eng.n == 0 && eng.fd < 0 && clock_start() < 0)
    return -1;
  s->slot = (int)eng.n;
  eng.s[eng.n++] = s;
  return 0;
}

static void engine_remove(lsip_rtp_t *s)
{
  size_t i = (size_t)s->slot;
  if (s->slot < 0)
    return;
  eng.s[i] = eng.s[--eng.n];
  eng.s[i]->slot = (int)i;
  s->slot = -1;
  if (eng.n == 0)
    clock_stop();
}

/* ---------------------------------------------------------------- lifetime */

static void unbridge(lsip_rtp_t *s)
{
  if (s->peer) {
    s->peer->peer = NULL;
    s->peer = NULL;
  }
}

/* The one transition function (see rtp_state_t).  L: a Lua state to drop the anchor
 * with (NULL at lua_close). */
static void rtp_to(lsip_rtp_t *s, rtp_state_t to, lua_State *L)
{
  if (s->state == to || s->state == RTP_CLOSED)
    return;
  s->state = RTP_CLOSED;            /* from here on no event is queued */
  s->nev = 0;
  unbridge(s);
  out_release(&s->out);
  if (s->rec.wav)
    luasip_wav_close(s->rec.wav);   /* finalised: header and length are right */
  memset(&s->rec, 0, sizeof s->rec);
  while (s->jobs)
    dtmf_job_done(s, 0);
  engine_remove(s);
  if (s->fd >= 0)
    close(s->fd);
  s->fd = -1;
  if (L && !luasip_S->closing)
    luasip_unanchor(L, &s->obj);
}

static void rtp_destroy(lsip_obj_t *obj)
{
  lsip_rtp_t *s = (lsip_rtp_t *)obj;
  rtp_to(s, RTP_CLOSED, NULL);      /* only lua_close collects an open stream */
  if (s->drx)
    dtmf_rx_free(s->drx);
  free(s->ev);
  luasip_freeobj(obj);
}

/* ---------------------------------------------------------------- Lua: helpers */

static lsip_rtp_t *rtp_check(lua_State *L)
{
  return (lsip_rtp_t *)luasip_checkobj(L, 1, LUASIP_RTP);
}

/* raises for keys of the options table at idx not in allowed */
static void check_keys(lua_State *L, int idx, const char *fname, const char *const *allowed)
{
  lua_pushnil(L);
  while (lua_next(L, idx)) {
    const char *const *a;
    const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
    for (a = allowed; key && *a; a++)
      if (!strcmp(*a, key))
        break;
    if (!key || !*a)
      luaL_error(L, "luasip.rtp:%s: unknown option %s", fname,
                 key ? key : luaL_typename(L, -2));
    lua_pop(L, 1);
  }
}

/* opts at idx (a table or nil) -> idx, or 0 when absent */
static int opt_table(lua_State *L, int idx, const char *fname, const char *const *allowed)
{
  if (lua_isnoneornil(L, idx))
    return 0;
  if (!lua_istable(L, idx))
    luaL_error(L, "luasip.rtp:%s: options must be a table", fname);
  check_keys(L, idx, fname, allowed);
  return idx;
}

static lua_Number opt_num(lua_State *L, int t, const char *key, lua_Number def,
                          lua_Number lo, lua_Number hi, const char *fname)
{
  lua_Number v = def;
  if (!t)
    return def;
  lua_getfield(L, t, key);
  if (!lua_isnil(L, -1)) {
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "luasip.rtp:%s: %s must be a number", fname, key);
    v = lua_tonumber(L, -1);
    if (v < lo || v > hi)
      luaL_error(L, "luasip.rtp:%s: %s out of range", fname, key);
  }
  lua_pop(L, 1);
  return v;
}

static int push_id(lua_State *L, unsigned id)
{
  lua_pushinteger(L, (lua_Integer)id);
  return 1;
}

static int closed_fail(lua_State *L)
{
  return luasip_fail(L, "stream closed", "closed");
}

static int codec_of(const char *name)
{
  if (!strcmp(name, "PCMU"))
    return C_PCMU;
  if (!strcmp(name, "PCMA"))
    return C_PCMA;
  return C_NONE;
}

/* ---------------------------------------------------------------- Lua: open */

static int parse_addr(const char *addr, int port, struct sockaddr_storage *ss,
                      socklen_t *len)
{
  struct sockaddr_in *in4 = (struct sockaddr_in *)ss;
  struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;
  memset(ss, 0, sizeof *ss);
  if (inet_pton(AF_INET, addr, &in4->sin_addr) == 1) {
    in4->sin_family = AF_INET;
    in4->sin_port = htons((unsigned short)port);
    *len = sizeof *in4;
    return 0;
  }
  if (inet_pton(AF_INET6, addr, &in6->sin6_addr) == 1) {
    in6->sin6_family = AF_INET6;
    in6->sin6_port = htons((unsigned short)port);
    *len = sizeof *in6;
    return 0;
  }
  return -1;
}

/* core.rtp_open{ address = "127.0.0.1", port_min = 10000, port_max = 60000 }
 *   -> rtp | nil, err, code
 * Binds an even UDP port of the range (random start), joins the media clock. */
int luasip_rtp_open(lua_State *L)
{
  static const char *const keys[] = { "address", "port_min", "port_max", NULL };
  const char *addr = "127.0.0.1";
  int pmin = 10000, pmax = 60000, tries, port, fd, rcvbuf = 256 * 1024;
  struct sockaddr_storage ss;
  socklen_t len;
  lsip_rtp_t *s;
  if (!lua_isnoneornil(L, 1)) {
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, 1)) {
      const char *const *a;
      const char *key = lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : NULL;
      for (a = keys; key && *a; a++)
        if (!strcmp(*a, key))
          break;
      if (!key || !*a)
        return luaL_error(L, "luasip.rtp_open: unknown option %s",
                          key ? key : luaL_typename(L, -2));
      lua_pop(L, 1);
    }
    lua_getfield(L, 1, "address");
    if (!lua_isnil(L, -1))
      addr = luaL_checkstring(L, -1);
    lua_getfield(L, 1, "port_min");
    pmin = (int)luaL_optinteger(L, -1, pmin);
    lua_getfield(L, 1, "port_max");
    pmax = (int)luaL_optinteger(L, -1, pmax);
    lua_pop(L, 3);
  }
  if (pmin < 1024 || pmax > 65534 || pmin > pmax)
    return luaL_error(L, "luasip.rtp_open: port range must be within 1024-65534");
  if (parse_addr(addr, 0, &ss, &len) < 0)
    return luaL_error(L, "luasip.rtp_open: address must be an IP literal");
  s = luasip_newobj(L, sizeof *s, LUASIP_RTP, rtp_destroy);
  s->state = RTP_CLOSED;            /* until the socket is bound and on the clock */
  s->fd = -1;
  s->slot = -1;
  fd = socket(ss.ss_family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0)
    return luasip_fail(L, strerror(errno), "socket");
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof rcvbuf);
  pmin += pmin & 1;
  tries = (pmax - pmin) / 2 + 1;
  port = pmin + 2 * (int)(su_random() % (unsigned)tries);
  for (; tries > 0; tries--) {
    if (ss.ss_family == AF_INET)
      ((struct sockaddr_in *)&ss)->sin_port = htons((unsigned short)port);
    else
      ((struct sockaddr_in6 *)&ss)->sin6_port = htons((unsigned short)port);
    if (bind(fd, (struct sockaddr *)&ss, len) == 0)
      break;
    if (errno != EADDRINUSE && errno != EACCES) {
      const char *why = strerror(errno);
      close(fd);
      return luasip_fail(L, why, "bind");
    }
    port += 2;
    if (port > pmax)
      port = pmin;
  }
  if (tries == 0) {
    close(fd);
    return luasip_fail(L, "no free even port in the range", "bind");
  }
  s->fd = fd;
  s->family = ss.ss_family;
  s->local_port = port;
  snprintf(s->local_addr, sizeof s->local_addr, "%s", addr);
  s->send_pt = 0;
  s->send_codec = C_PCMU;
  s->recv_codec[0] = C_PCMU;
  s->recv_codec[8] = C_PCMA;
  s->te_send_pt = s->te_recv_pt = -1;
  s->can_send = s->can_recv = 1;
  s->ssrc = su_random();
  s->seq = (uint16_t)su_random();
  s->ts = su_random();
  s->next_id = 1;
  if (engine_add(s) < 0) {
    close(fd);
    s->fd = -1;
    return luasip_fail(L, "cannot start the media clock", "clock");
  }
  s->state = RTP_OPEN;              /* from here on rtp_to */
  luasip_anchor(L, &s->obj, -1);    /* events push it while it is open */
  return 1;
}

/* ---------------------------------------------------------------- Lua: methods */

/* rtp:local_port() -> n */
static int rtp_local_port(lua_State *L)
{
  lua_pushinteger(L, rtp_check(L)->local_port);
  return 1;
}

/* rtp:local_address() -> string */
static int rtp_local_address(lua_State *L)
{
  lua_pushstring(L, rtp_check(L)->local_addr);
  return 1;
}

/* rtp:remote() -> address, port | nil (where packets go now) */
static int rtp_remote(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  char buf[INET6_ADDRSTRLEN];
  int port;
  if (!s->have_remote)
    return 0;
  addr_text(&s->remote, buf, sizeof buf, &port);
  lua_pushstring(L, buf);
  lua_pushinteger(L, port);
  return 2;
}

/* rtp:set_remote(address, port) -> true  (re-arms latching: the next valid packet's
 * source becomes the destination -- but not the source latched before, when the address
 * changed: the peer it replaced, another fork, may still be sending) */
static int rtp_set_remote(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  const char *addr = luaL_checkstring(L, 2);
  lua_Integer port = luaL_checkinteger(L, 3);
  struct sockaddr_storage ss;
  socklen_t len;
  if (port < 1 || port > 65535)
    return luaL_error(L, "luasip.rtp:set_remote: port out of range");
  if (parse_addr(addr, (int)port, &ss, &len) < 0)
    return luaL_error(L, "luasip.rtp:set_remote: address must be an IP literal");
  if (ss.ss_family != s->family)
    return luaL_error(L, "luasip.rtp:set_remote: address family differs from the "
                      "local address");
  if (!s->have_signalled || !same_addr(&ss, &s->signalled)) {
    s->have_stale = s->latched && !same_addr(&s->remote, &ss);
    if (s->have_stale)
      s->stale = s->remote;
  }
  s->signalled = ss;
  s->have_signalled = 1;
  s->remote = ss;
  s->remote_len = len;
  s->have_remote = 1;
  s->latched = 0;
  lua_pushboolean(L, 1);
  return 1;
}

static int pt_arg(lua_State *L, int t, const char *key, int *out)
{
  lua_getfield(L, t, key);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return 0;
  }
  if (lua_isboolean(L, -1) && !lua_toboolean(L, -1)) {
    *out = -1;                      /* false: none */
  } else {
    lua_Integer v;
    if (lua_type(L, -1) != LUA_TNUMBER)
      luaL_error(L, "luasip.rtp:set_codecs: %s must be a payload type", key);
    v = (lua_Integer)lua_tonumber(L, -1);
    if (v < 0 || v > 127)
      luaL_error(L, "luasip.rtp:set_codecs: %s must be 0-127", key);
    *out = (int)v;
  }
  lua_pop(L, 1);
  return 1;
}

/* rtp:set_codecs{ send_pt =, send_codec = "PCMU"|"PCMA", recv = { [pt] = name },
 *   te_send_pt = pt|nil, te_recv_pt = pt|nil, direction =, inband =, timeout_ms = }
 *   -> true.  Each call sets the whole configuration (a re-INVITE's answer): keys left
 *   out take their defaults (PT 0 PCMU, recv { [0] = "PCMU", [8] = "PCMA" }, no
 *   telephone-event, sendrecv, inband false, no timeout). */
static int rtp_set_codecs(lua_State *L)
{
  static const char *const keys[] = { "send_pt", "send_codec", "recv", "te_send_pt",
    "te_recv_pt", "direction", "inband", "timeout_ms", NULL };
  lsip_rtp_t *s = rtp_check(L);
  int pt = 0, codec = C_PCMU, have_pt, te_send = -1, te_recv = -1, snd = 1, rcv = 1, inband;
  unsigned char map[128];
  long timeout;
  luaL_checktype(L, 2, LUA_TTABLE);
  check_keys(L, 2, "set_codecs", keys);
  /* everything is read and checked first: a raise changes nothing */
  have_pt = pt_arg(L, 2, "send_pt", &pt);
  if (have_pt && pt < 0)
    return luaL_error(L, "luasip.rtp:set_codecs: send_pt must be 0-127");
  lua_getfield(L, 2, "send_codec");
  if (!lua_isnil(L, -1)) {
    codec = lua_type(L, -1) == LUA_TSTRING ? codec_of(lua_tostring(L, -1)) : C_NONE;
    if (codec == C_NONE)
      return luaL_error(L, "luasip.rtp:set_codecs: send_codec must be PCMU or PCMA");
  } else if (have_pt) {
    codec = pt == 0 ? C_PCMU : pt == 8 ? C_PCMA : C_NONE;
    if (codec == C_NONE)
      return luaL_error(L, "luasip.rtp:set_codecs: send_codec needed for PT %d", pt);
  }
  lua_pop(L, 1);
  memset(map, 0, sizeof map);
  lua_getfield(L, 2, "recv");
  if (!lua_isnil(L, -1)) {
    luaL_checktype(L, -1, LUA_TTABLE);
    lua_pushnil(L);
    while (lua_next(L, -2)) {
      lua_Integer p = lua_type(L, -2) == LUA_TNUMBER ? (lua_Integer)lua_tonumber(L, -2) : -1;
      int c = lua_type(L, -1) == LUA_TSTRING ? codec_of(lua_tostring(L, -1)) : C_NONE;
      if (p < 0 || p > 127 || c == C_NONE)
        return luaL_error(L, "luasip.rtp:set_codecs: recv maps payload types 0-127 to "
                          "PCMU or PCMA");
      map[p] = (unsigned char)c;
      lua_pop(L, 1);
    }
  } else {
    map[0] = C_PCMU;
    map[8] = C_PCMA;
  }
  lua_pop(L, 1);
  pt_arg(L, 2, "te_send_pt", &te_send);
  pt_arg(L, 2, "te_recv_pt", &te_recv);
  lua_getfield(L, 2, "direction");
  if (!lua_isnil(L, -1)) {
    const char *d = lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "";
    if (!strcmp(d, "sendonly"))
      rcv = 0;
    else if (!strcmp(d, "recvonly"))
      snd = 0;
    else if (!strcmp(d, "inactive"))
      snd = rcv = 0;
    else if (strcmp(d, "sendrecv"))
      return luaL_error(L, "luasip.rtp:set_codecs: direction must be sendrecv, sendonly, "
                        "recvonly or inactive");
  }
  lua_pop(L, 1);
  lua_getfield(L, 2, "inband");
  inband = lua_toboolean(L, -1);
  lua_pop(L, 1);
  timeout = (long)opt_num(L, 2, "timeout_ms", 0, 0, 86400000, "set_codecs") / 20;
  if (inband && !s->drx) {
    s->drx = dtmf_rx_init(NULL, NULL, NULL);
    if (!s->drx)
      return luaL_error(L, "luasip.rtp:set_codecs: out of memory");
    /* start and end of each tone: one digit per press, with its length */
    dtmf_rx_set_realtime_callback(s->drx, inband_report, s);
  }
  s->send_pt = pt;
  s->send_codec = codec;
  memcpy(s->recv_codec, map, sizeof map);
  s->te_send_pt = te_send;
  s->te_recv_pt = te_recv;
  s->can_send = snd;
  s->can_recv = rcv;
  s->inband = inband;
  s->timeout_ticks = timeout;
  lua_pushboolean(L, 1);
  return 1;
}

/* starts output o (already filled) with a new id, ending the current one ("stopped") */
static unsigned out_start(lsip_rtp_t *s, out_t *o)
{
  out_end(s, R_STOPPED, NULL);
  o->id = s->next_id++;
  s->out = *o;
  return o->id;
}

/* rtp:play(path | { paths }, { loop = 1, offset_ms = 0 }) -> id | nil, err, code
 * loop 0: for ever.  Every file is opened (and decoded, once per path) before anything
 * plays. */
static int rtp_play(lua_State *L)
{
  static const char *const keys[] = { "loop", "offset_ms", NULL };
  lsip_rtp_t *s = rtp_check(L);
  int t, n, i;
  long offset;
  out_t o;
  char err[256];
  if (lua_type(L, 2) != LUA_TSTRING && !lua_istable(L, 2))
    return luaL_error(L, "luasip.rtp:play: paths must be a string or an array of strings");
  t = opt_table(L, 3, "play", keys);
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  n = lua_istable(L, 2) ? (int)luasip_rawlen(L, 2) : 1;
  if (n < 1)
    return luaL_error(L, "luasip.rtp:play: no file to play");
  for (i = 1; i <= n && lua_istable(L, 2); i++) {
    lua_rawgeti(L, 2, i);
    if (lua_type(L, -1) != LUA_TSTRING)
      return luaL_error(L, "luasip.rtp:play: paths must be a string or an array of strings");
    lua_pop(L, 1);
  }
  memset(&o, 0, sizeof o);
  o.kind = OUT_PLAY;
  o.loops_left = (int)opt_num(L, t, "loop", 1, 0, 1e6, "play");
  offset = (long)opt_num(L, t, "offset_ms", 0, 0, 1e9, "play") * 8;
  o.prompts = calloc((size_t)n, sizeof *o.prompts);
  if (!o.prompts)
    return luasip_fail(L, "out of memory", "memory");
  for (i = 0; i < n; i++) {
    const char *path;
    if (lua_istable(L, 2)) {
      lua_rawgeti(L, 2, i + 1);
      path = lua_tostring(L, -1);
      lua_pop(L, 1);                /* still referenced by the table */
    } else {
      path = lua_tostring(L, 2);
    }
    o.prompts[i] = luasip_prompt_get(path, err, sizeof err);
    if (!o.prompts[i]) {
      out_release(&o);
      return luasip_fail(L, err, "file");
    }
    o.nprompts = i + 1;
  }
  /* the offset skips into the list (first round only) */
  while (offset > 0 && o.cur < o.nprompts) {
    size_t len;
    luasip_prompt_pcm(o.prompts[o.cur], &len);
    if ((size_t)offset < len) {
      o.pos = (size_t)offset;
      break;
    }
    offset -= (long)len;
    o.cur++;
  }
  if (o.cur >= o.nprompts) {        /* past the end: done at once */
    o.cur = 0;
    o.loops_left = 1;
    o.pos = 0;
    out_start(s, &o);
    out_end(s, R_DONE, NULL);
    return push_id(L, s->next_id - 1);
  }
  return push_id(L, out_start(s, &o));
}

/* rtp:tone{ freqs = { f1 [, f2] }, on_ms =, off_ms =, ms =, level = -10 } -> id */
static int rtp_tone(lua_State *L)
{
  static const char *const keys[] = { "freqs", "on_ms", "off_ms", "ms", "level", NULL };
  lsip_rtp_t *s = rtp_check(L);
  out_t o;
  int i;
  double level;
  luaL_checktype(L, 2, LUA_TTABLE);
  check_keys(L, 2, "tone", keys);
  memset(&o, 0, sizeof o);
  o.kind = OUT_TONE;
  lua_getfield(L, 2, "freqs");
  if (lua_type(L, -1) == LUA_TNUMBER) {
    o.nf = 1;
    o.inc[0] = lua_tonumber(L, -1);
  } else if (lua_istable(L, -1)) {
    o.nf = (int)luasip_rawlen(L, -1);
    if (o.nf < 1 || o.nf > 2)
      return luaL_error(L, "luasip.rtp:tone: one or two freqs");
    for (i = 0; i < o.nf; i++) {
      lua_rawgeti(L, -1, i + 1);
      if (lua_type(L, -1) != LUA_TNUMBER)
        return luaL_error(L, "luasip.rtp:tone: freqs must be numbers");
      o.inc[i] = lua_tonumber(L, -1);
      lua_pop(L, 1);
    }
  } else {
    return luaL_error(L, "luasip.rtp:tone: freqs must be a list of 1 or 2 numbers");
  }
  lua_pop(L, 1);
  for (i = 0; i < o.nf; i++) {
    if (!(o.inc[i] > 0 && o.inc[i] < 4000))
      return luaL_error(L, "luasip.rtp:tone: freqs must be within 0-4000 Hz");
    o.inc[i] = 2 * M_PI * o.inc[i] / 8000.0;
  }
  o.on = (long)opt_num(L, 2, "on_ms", 0, 0, 1e7, "tone") * 8;
  o.off = (long)opt_num(L, 2, "off_ms", 0, 0, 1e7, "tone") * 8;
  if (o.off > 0 && o.on <= 0)
    return luaL_error(L, "luasip.rtp:tone: off_ms needs on_ms");
  o.total = (long)opt_num(L, 2, "ms", -1, -1, 1e9, "tone");
  o.total = o.total < 0 ? -1 : o.total * 8;
  level = opt_num(L, 2, "level", -10, -90, 3, "tone");
  /* dBm0 per frequency: 3.14 dBm0 is a full-scale sine (G.711) */
  o.amp = 32767.0 * pow(10.0, (level - 3.14) / 20.0);
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  return push_id(L, out_start(s, &o));
}

/* rtp:silence(ms) -> id */
static int rtp_silence(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  lua_Number ms = luaL_checknumber(L, 2);
  out_t o;
  if (ms < 0)
    return luaL_error(L, "luasip.rtp:silence: ms must be >= 0");
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  memset(&o, 0, sizeof o);
  o.kind = OUT_SILENCE;
  o.total = (long)(ms * 8);
  if (o.total == 0) {
    unsigned id = out_start(s, &o);
    out_end(s, R_DONE, NULL);
    return push_id(L, id);
  }
  return push_id(L, out_start(s, &o));
}

/* rtp:echo() -> id: what arrives goes back, until stopped */
static int rtp_echo(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  out_t o;
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  memset(&o, 0, sizeof o);
  o.kind = OUT_ECHO;
  return push_id(L, out_start(s, &o));
}

/* rtp:stop_output() -> true: the current output ends with reason "stopped" */
static int rtp_stop_output(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  out_end(s, R_STOPPED, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* rtp:send_dtmf(digits, { ms = 100, gap = 80, mode = "rfc4733" | "inband" })
 *   -> id | nil, err, code   (queued after the digits already queued) */
static int rtp_send_dtmf(lua_State *L)
{
  static const char *const keys[] = { "ms", "gap", "mode", NULL };
  lsip_rtp_t *s = rtp_check(L);
  size_t n, i;
  const char *digits = luaL_checklstring(L, 2, &n);
  int t = opt_table(L, 3, "send_dtmf", keys), inband = 0;
  dtmf_job_t *j;
  if (n < 1 || n > DIGITS_MAX)
    return luaL_error(L, "luasip.rtp:send_dtmf: 1 to %d digits", DIGITS_MAX);
  for (i = 0; i < n; i++)
    if (dtmf_code(digits[i]) < 0)
      return luaL_error(L, "luasip.rtp:send_dtmf: %c is not a DTMF digit", digits[i]);
  if (t) {
    lua_getfield(L, t, "mode");
    if (!lua_isnil(L, -1)) {
      const char *m = lua_tostring(L, -1);
      if (m && !strcmp(m, "inband"))
        inband = 1;
      else if (!m || strcmp(m, "rfc4733"))
        return luaL_error(L, "luasip.rtp:send_dtmf: mode must be rfc4733 or inband");
    }
    lua_pop(L, 1);
  }
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  if (!inband && s->te_send_pt < 0)
    return luasip_fail(L, "peer has no telephone-event", "dtmf");
  j = calloc(1, sizeof *j);
  if (!j)
    return luasip_fail(L, "out of memory", "memory");
  for (i = 0; i < n; i++) {
    char c = digits[i];
    j->digits[i] = c >= 'a' && c <= 'd' ? (char)(c - 'a' + 'A') : c;
  }
  j->ms = (int)opt_num(L, t, "ms", 100, 40, 5000, "send_dtmf");
  j->gap = (int)opt_num(L, t, "gap", 80, 0, 5000, "send_dtmf");
  j->inband = inband;
  j->id = s->next_id++;
  dtmf_queue(s, j);
  return push_id(L, j->id);
}

/* rtp:record(path, { max_ms =, silence_ms =, silence_level = -40, append = false })
 *   -> id | nil, err, code: 8 kHz mono 16-bit WAV, one frame per tick, beside any output;
 *   a running recording ends first ("stopped") */
static int rtp_record(lua_State *L)
{
  static const char *const keys[] = { "max_ms", "silence_ms", "silence_level", "append",
    NULL };
  lsip_rtp_t *s = rtp_check(L);
  const char *path = luaL_checkstring(L, 2);
  int t = opt_table(L, 3, "record", keys), append = 0;
  char err[256];
  rec_t r;
  memset(&r, 0, sizeof r);
  r.max_frames = (long)opt_num(L, t, "max_ms", 0, 0, 1e9, "record") / 20;
  r.silence_frames = (long)opt_num(L, t, "silence_ms", 0, 0, 1e9, "record") / 20;
  r.level = power_meter_level_dbm0((float)opt_num(L, t, "silence_level", -40, -90, 3,
                                                  "record"));
  if (t) {
    lua_getfield(L, t, "append");
    append = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  if (s->state != RTP_OPEN)
    return closed_fail(L);
  rec_end(s, R_STOPPED, NULL);
  r.wav = luasip_wav_open(path, append, err, sizeof err);
  if (!r.wav)
    return luasip_fail(L, err, "file");
  r.id = s->next_id++;
  s->rec = r;
  return push_id(L, r.id);
}

/* rtp:stop_record() -> true (reason "stopped") */
static int rtp_stop_record(lua_State *L)
{
  rec_end(rtp_check(L), R_STOPPED, NULL);
  lua_pushboolean(L, 1);
  return 1;
}

/* rtp:bridge(other) -> true | nil, err, code: what arrives on each goes out on the
 * other; outputs wait meanwhile */
static int rtp_bridge(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  lsip_rtp_t *o = (lsip_rtp_t *)luasip_checkobj(L, 2, LUASIP_RTP);
  if (o == s)
    return luaL_error(L, "luasip.rtp:bridge: cannot bridge a stream with itself");
  if (s->state != RTP_OPEN || o->state != RTP_OPEN)
    return closed_fail(L);
  unbridge(s);
  unbridge(o);
  s->peer = o;
  o->peer = s;
  lua_pushboolean(L, 1);
  return 1;
}

/* rtp:unbridge() -> true (both sides) */
static int rtp_unbridge(lua_State *L)
{
  unbridge(rtp_check(L));
  lua_pushboolean(L, 1);
  return 1;
}

/* rtp:events() -> { event, ... } (and clears the queue); see media-api.md */
static int rtp_events(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  size_t i, n = s->nev;
  lua_createtable(L, (int)n, 0);
  for (i = 0; i < n; i++) {
    rtp_event_t *e = &s->ev[i];
    lua_createtable(L, 1, 4);
    switch (e->type) {
    case EV_DIGIT:
      lua_pushliteral(L, "digit");
      lua_rawseti(L, -2, 1);
      lua_pushlstring(L, &e->digit, 1);
      lua_setfield(L, -2, "digit");
      lua_pushstring(L, e->inband ? "inband" : "rfc4733");
      lua_setfield(L, -2, "source");
      lua_pushinteger(L, e->ms);
      lua_setfield(L, -2, "ms");
      break;
    case EV_OUTPUT_DONE:
    case EV_RECORD_DONE:
      lua_pushstring(L, e->type == EV_OUTPUT_DONE ? "output_done" : "record_done");
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, (lua_Integer)e->id);
      lua_setfield(L, -2, "id");
      lua_pushstring(L, REASONS[e->reason]);
      lua_setfield(L, -2, "reason");
      lua_pushinteger(L, e->ms);
      lua_setfield(L, -2, "ms");
      if (e->text[0]) {
        lua_pushstring(L, e->text);
        lua_setfield(L, -2, "error");
      }
      break;
    case EV_DTMF_DONE:
      lua_pushliteral(L, "dtmf_done");
      lua_rawseti(L, -2, 1);
      lua_pushinteger(L, (lua_Integer)e->id);
      lua_setfield(L, -2, "id");
      break;
    case EV_LATCHED:
      lua_pushliteral(L, "latched");
      lua_rawseti(L, -2, 1);
      lua_pushstring(L, e->text);
      lua_setfield(L, -2, "address");
      lua_pushinteger(L, e->port);
      lua_setfield(L, -2, "port");
      break;
    default:
      lua_pushliteral(L, "rtp_timeout");
      lua_rawseti(L, -2, 1);
    }
    lua_rawseti(L, -2, (int)i + 1);
  }
  s->nev = 0;                       /* only now: the table is complete */
  return 1;
}

static void set_num(lua_State *L, const char *k, lua_Number v)
{
  lua_pushnumber(L, v);
  lua_setfield(L, -2, k);
}

static void set_int(lua_State *L, const char *k, unsigned long v)
{
  lua_pushinteger(L, (lua_Integer)v);
  lua_setfield(L, -2, k);
}

/* rtp:stats() -> { packets_sent, packets_received, octets_sent, octets_received, lost,
 *   jitter_ms, strangers, bad_packets, ssrc_changes, late_ticks, send_errors,
 *   events_dropped } */
static int rtp_stats(lua_State *L)
{
  lsip_rtp_t *s = rtp_check(L);
  lua_createtable(L, 0, 12);
  set_int(L, "packets_sent", s->st.packets_sent);
  set_int(L, "packets_received", s->st.packets_received);
  set_int(L, "octets_sent", s->st.octets_sent);
  set_int(L, "octets_received", s->st.octets_received);
  set_int(L, "lost", (unsigned long)lost_now(s));
  set_num(L, "jitter_ms", s->jitter / 8.0);
  set_int(L, "strangers", s->st.strangers);
  set_int(L, "bad_packets", s->st.bad_packets);
  set_int(L, "ssrc_changes", s->st.ssrc_changes);
  set_int(L, "late_ticks", s->st.late_ticks);
  set_int(L, "send_errors", s->st.send_errors);
  set_int(L, "events_dropped", s->st.events_dropped);
  return 1;
}

/* rtp:closed() -> boolean */
static int rtp_closed(lua_State *L)
{
  lsip_rtp_t *s = (lsip_rtp_t *)luasip_testobj(L, 1, LUASIP_RTP);
  if (!s && !luaL_testudata(L, 1, LUASIP_RTP))
    luaL_checkudata(L, 1, LUASIP_RTP);
  lua_pushboolean(L, !s || s->state != RTP_OPEN);
  return 1;
}

/* rtp:close() -> true (idempotent): output and recording end (the file is complete),
 * no events after it */
static int rtp_close(lua_State *L)
{
  lsip_rtp_t *s = (lsip_rtp_t *)luasip_testobj(L, 1, LUASIP_RTP);
  if (!s && !luaL_testudata(L, 1, LUASIP_RTP))
    luaL_checkudata(L, 1, LUASIP_RTP);
  if (s)
    rtp_to(s, RTP_CLOSED, L);
  lua_pushboolean(L, 1);
  return 1;
}

/* core.media_stats([reset]) -> { streams, ticks, late_ticks, skipped_ticks,
 *   max_lateness_us, max_tick_work_us }; reset: the two maxima start again after */
void luasip_media_counts(unsigned long out[4])
{
  out[0] = (unsigned long)eng.n;
  out[1] = eng.ticks;
  out[2] = eng.late;
  out[3] = eng.skipped;
}

int luasip_media_stats(lua_State *L)
{
  lua_createtable(L, 0, 6);
  set_int(L, "streams", eng.n);
  set_int(L, "ticks", eng.ticks);
  set_int(L, "late_ticks", eng.late);
  set_int(L, "skipped_ticks", eng.skipped);
  set_int(L, "max_lateness_us", (unsigned long)eng.max_late_us);
  set_int(L, "max_tick_work_us", (unsigned long)eng.max_work_us);
  if (lua_toboolean(L, 1))
    eng.max_late_us = eng.max_work_us = 0;
  return 1;
}

static const luaL_Reg rtp_methods[] = {
  {"local_port", rtp_local_port},
  {"local_address", rtp_local_address},
  {"remote", rtp_remote},
  {"set_remote", rtp_set_remote},
  {"set_codecs", rtp_set_codecs},
  {"play", rtp_play},
  {"tone", rtp_tone},
  {"silence", rtp_silence},
  {"echo", rtp_echo},
  {"stop_output", rtp_stop_output},
  {"send_dtmf", rtp_send_dtmf},
  {"record", rtp_record},
  {"stop_record", rtp_stop_record},
  {"bridge", rtp_bridge},
  {"unbridge", rtp_unbridge},
  {"events", rtp_events},
  {"stats", rtp_stats},
  {"closed", rtp_closed},
  {"close", rtp_close},
  {NULL, NULL}
};

void luasip_media_open(lua_State *L)
{
  luasip_newclass(L, LUASIP_RTP, rtp_methods, NULL);
}

/* lua_close, after every stream was destroyed */
void luasip_media_close(void)
{
  clock_stop();
  luasip_prompts_free();
  free(eng.s);
  free(eng.notify);
  eng.s = eng.notify = NULL;
  eng.n = eng.cap = eng.notify_cap = 0;
}
