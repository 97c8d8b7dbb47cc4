/* SPDX-License-Identifier: MIT
 * Audio files for luasip.rtp (csrc/media.c): the prompt cache and the WAV recorder.
 * Prompts are decoded once with libsndfile, mixed down to mono and resampled to 8 kHz
 * with speexdsp; one cache entry per path (and mtime) is shared by every stream playing
 * it (reference counted; a stale entry lives until its last player lets go).  The
 * recorder writes 8 kHz mono 16-bit WAV with the header kept valid after every write.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <sndfile.h>
#include <speex/speex_resampler.h>

#include "luasip.h"

#define PROMPT_MAX_SAMPLES (8000L * 3600)   /* one hour at 8 kHz */

struct lsip_prompt {
  lsip_prompt_t *next;      /* cache list */
  char *path;
  struct timespec mtime;
  off_t size;
  int cached;               /* still on the cache list (not replaced by a newer file) */
  int refs;                 /* streams playing it */
  int16_t *pcm;             /* 8 kHz mono */
  size_t n;
};

static lsip_prompt_t *cache;

static void prompt_free(lsip_prompt_t *p)
{
  free(p->pcm);
  free(p->path);
  free(p);
}

static void uncache(lsip_prompt_t *p)
{
  lsip_prompt_t **pp;
  for (pp = &cache; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  p->cached = 0;
}

/* Reads the whole file as 16-bit mono at its own rate; *rate gets that rate. */
static int16_t *read_mono(const char *path, size_t *n, int *rate, char *err, size_t errlen)
{
  SF_INFO info;
  SNDFILE *sf;
  int16_t *pcm = NULL, *buf = NULL;
  size_t got = 0, cap = 0;
  int ch;
  memset(&info, 0, sizeof info);
  sf = sf_open(path, SFM_READ, &info);
  if (!sf) {
    snprintf(err, errlen, "cannot open %s: %s", path, sf_strerror(NULL));
    return NULL;
  }
  ch = info.channels > 0 ? info.channels : 1;
  buf = malloc(sizeof *buf * 1024 * (size_t)ch);
  if (!buf)
    goto nomem;
  for (;;) {
    sf_count_t k = sf_readf_short(sf, buf, 1024), i;
    if (k <= 0)
      break;
    if (got + (size_t)k > cap) {
      int16_t *np;
      cap = cap ? 2 * cap : 16384;
      while (cap < got + (size_t)k)
        cap *= 2;
      if (cap > PROMPT_MAX_SAMPLES * 8) {
        snprintf(err, errlen, "cannot open %s: longer than one hour", path);
        goto fail;
      }
      np = realloc(pcm, cap * sizeof *np);
      if (!np)
        goto nomem;
      pcm = np;
    }
    for (i = 0; i < k; i++) {          /* mix down: the mean of the channels */
      long sum = 0;
      int c;
      for (c = 0; c < ch; c++)
        sum += buf[i * ch + c];
      pcm[got++] = (int16_t)(sum / ch);
    }
  }
  free(buf);
  sf_close(sf);
  *n = got;
  *rate = info.samplerate;
  if (!pcm)
    pcm = calloc(1, sizeof *pcm);      /* an empty file plays as nothing */
  return pcm;
nomem:
  snprintf(err, errlen, "cannot open %s: out of memory", path);
fail:
  free(buf);
  free(pcm);
  sf_close(sf);
  return NULL;
}

static int16_t *resample(int16_t *in, size_t n, int rate, size_t *out_n, char *err,
                         size_t errlen, const char *path)
{
  int e = 0;
  SpeexResamplerState *rs;
  size_t cap = (size_t)((double)n * 8000.0 / rate) + 1024, done = 0, used = 0;
  int16_t *out = malloc(cap * sizeof *out);
  int latency;
  if (!out) {
    snprintf(err, errlen, "cannot open %s: out of memory", path);
    return NULL;
  }
  rs = speex_resampler_init(1, (spx_uint32_t)rate, 8000, SPEEX_RESAMPLER_QUALITY_DEFAULT, &e);
  if (!rs) {
    snprintf(err, errlen, "cannot open %s: resampler: %s", path, speex_resampler_strerror(e));
    free(out);
    return NULL;
  }
  /* the filter delay is dropped at the start and flushed with zeros at the end, so the
   * prompt keeps its length and timing */
  speex_resampler_skip_zeros(rs);
  latency = speex_resampler_get_input_latency(rs);
  while (used < n + (size_t)latency && done < cap) {
    static const int16_t zeros[256];
    spx_uint32_t inl, outl = (spx_uint32_t)(cap - done);
    const int16_t *src;
    if (used < n) {
      inl = (spx_uint32_t)(n - used > 65536 ? 65536 : n - used);
      src = in + used;
    } else {
      inl = (spx_uint32_t)((size_t)latency - (used - n));
      if (inl > 256)
        inl = 256;
      src = zeros;
    }
    speex_resampler_process_int(rs, 0, src, &inl, out + done, &outl);
    used += inl;
    done += outl;
    if (inl == 0 && outl == 0)
      break;
  }
  speex_resampler_destroy(rs);
  *out_n = done;
  return out;
}

/* The decoded prompt for path (a new reference), or NULL with err set
 * ("cannot open <path>: <why>"). */
lsip_prompt_t *luasip_prompt_get(const char *path, char *err, size_t errlen)
{
  struct stat st;
  lsip_prompt_t *p;
  int16_t *pcm;
  size_t n;
  int rate;
  if (stat(path, &st) < 0) {
    snprintf(err, errlen, "cannot open %s: %s", path, strerror(errno));
    return NULL;
  }
  for (p = cache; p; p = p->next) {
    if (!strcmp(p->path, path)) {
      if (p->mtime.tv_sec == st.st_mtim.tv_sec && p->mtime.tv_nsec == st.st_mtim.tv_nsec &&
          p->size == st.st_size) {
        p->refs++;
        return p;
      }
      uncache(p);                      /* changed on disk: players keep the old one */
      if (!p->refs)
        prompt_free(p);
      break;
    }
  }
  pcm = read_mono(path, &n, &rate, err, errlen);
  if (!pcm)
    return NULL;
  if (rate != 8000 && n > 0) {
    int16_t *r;
    if (rate <= 0) {
      snprintf(err, errlen, "cannot open %s: bad sample rate", path);
      free(pcm);
      return NULL;
    }
    r = resample(pcm, n, rate, &n, err, errlen, path);
    free(pcm);
    if (!r)
      return NULL;
    pcm = r;
  }
  p = calloc(1, sizeof *p);
  if (!p || !(p->path = strdup(path))) {
    free(p);
    free(pcm);
    snprintf(err, errlen, "cannot open %s: out of memory", path);
    return NULL;
  }
  p->pcm = pcm;
  p->n = n;
  p->mtime = st.st_mtim;
  p->size = st.st_size;
  p->refs = 1;
  p->cached = 1;
  p->next = cache;
  cache = p;
  return p;
}

void luasip_prompt_release(lsip_prompt_t *p)
{
  if (p && --p->refs <= 0 && !p->cached)
    prompt_free(p);
}

const int16_t *luasip_prompt_pcm(lsip_prompt_t *p, size_t *n)
{
  *n = p->n;
  return p->pcm;
}

/* At lua_close: every stream is gone, so nothing holds a prompt. */
void luasip_prompts_free(void)
{
  while (cache) {
    lsip_prompt_t *p = cache;
    uncache(p);
    if (!p->refs)
      prompt_free(p);
  }
}

/* ---------------------------------------------------------------- recorder */

/* Opens path for recording 8 kHz mono 16-bit WAV (append: after what it holds, which
 * must be the same format).  NULL with err set on failure. */
void *luasip_wav_open(const char *path, int append, char *err, size_t errlen)
{
  SF_INFO info;
  SNDFILE *sf = NULL;
  struct stat st;
  memset(&info, 0, sizeof info);
  if (append && stat(path, &st) == 0 && st.st_size > 0) {
    sf = sf_open(path, SFM_RDWR, &info);
    if (sf && (info.samplerate != 8000 || info.channels != 1 ||
               (info.format & SF_FORMAT_TYPEMASK) != SF_FORMAT_WAV)) {
      sf_close(sf);
      snprintf(err, errlen, "cannot append to %s: not 8 kHz mono WAV", path);
      return NULL;
    }
    if (sf)
      sf_seek(sf, 0, SEEK_END);
  } else {
    info.samplerate = 8000;
    info.channels = 1;
    info.format = SF_FORMAT_WAV | SF_FORMAT_PCM_16;
    sf = sf_open(path, SFM_WRITE, &info);
  }
  if (!sf) {
    snprintf(err, errlen, "cannot open %s: %s", path, sf_strerror(NULL));
    return NULL;
  }
  /* the header is rewritten after each write: the file stays valid if we die */
  sf_command(sf, SFC_SET_UPDATE_HEADER_AUTO, NULL, SF_TRUE);
  return sf;
}

/* 0 | -1 with err set */
int luasip_wav_write(void *h, const int16_t *pcm, size_t n, char *err, size_t errlen)
{
  SNDFILE *sf = h;
  if (sf_writef_short(sf, pcm, (sf_count_t)n) != (sf_count_t)n) {
    snprintf(err, errlen, "write failed: %s", sf_strerror(sf));
    return -1;
  }
  return 0;
}

void luasip_wav_close(void *h)
{
  if (h)
    sf_close((SNDFILE *)h);
}
