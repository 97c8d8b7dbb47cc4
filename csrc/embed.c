/* SPDX-License-Identifier: MIT
 * Embedding: the su_root loop as one pollable descriptor for host event loops (cqueues,
 * luv): core.pollfd() and core.timeout().  sofia's epoll port has no public API for its
 * epoll descriptor, so we register a timerfd of our own in the root and find the epoll
 * instance that watches it (/proc/self/fdinfo); the host gets a dup of that descriptor.
 * The timerfd carries sofia's next timer deadline (re-armed after each step) and the
 * "kick" that wakes the host when luasip is used from outside its loop.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "luasip.h"

/* Exported by every sofia-sip since 1.12.5 (also 1.13) but declared only in the
 * uninstalled su_port.h: the ms until the first timer of a queue (truncated), or
 * SU_DURATION_MAX when the queue is empty.  It reads; it fires nothing. */
su_duration_t su_timer_next_expires(su_timer_queue_t const *timers, su_time_t now);

int luasip_embed_armed;             /* pollfd exists and no kick is pending */

static struct {
  int wake_fd;                      /* timerfd registered in the root */
  int wake_reg;                     /* its su_root registration index */
  int poll_fd;                      /* dup of sofia's epoll descriptor, for the host */
  int64_t due;                      /* the armed deadline (CLOCK_MONOTONIC ns), 0: none */
  int64_t due_before_kick;          /* the deadline a kick replaced */
  unsigned long entries;            /* luasip_S->entries at the end of the last step */
  int kicked;                       /* a kick since the last step */
  int idle_kicks;                   /* steps in a row that a kick caused for nothing */
} E = { -1, -1, -1, 0, 0, 0, 0, 0 };

#define KICK_DELAY_MAX_MS 64

/* sofia callback: the timerfd fired (a timer is due, or a kick): drain it.  Runs in a
 * sofia frame, touches no Lua. */
static int wake_event(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  uint64_t n;
  (void)m; (void)w; (void)arg;
  if (read(E.wake_fd, &n, sizeof n) < 0)
    (void)0;                        /* EAGAIN: re-armed since it fired */
  return 0;
}

static int64_t mono_ns(void)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* arms the timerfd at the absolute time due (ns, CLOCK_MONOTONIC; 0 disarms) */
static void wake_set(int64_t due)
{
  struct itimerspec its;
  memset(&its, 0, sizeof its);
  its.it_value.tv_sec = (time_t)(due / 1000000000);
  its.it_value.tv_nsec = (long)(due % 1000000000);
  /* setting a timerfd also clears expirations not yet read: the descriptor is
   * readable again only when this deadline passes */
  timerfd_settime(E.wake_fd, TFD_TIMER_ABSTIME, &its, NULL);
  E.due = due;
}

/* ms until sofia's next timer (plain or deferrable), SU_DURATION_MAX for none */
static su_duration_t next_timer_ms(void)
{
  _su_task_r task = su_root_task(luasip_S->root);
  su_time_t now = su_now();
  su_timer_queue_t *q = su_task_timers(task), *dq = su_task_deferrable(task);
  /* 1.12.11 dereferences the queue's heap without checking it: a queue that never held
   * a timer has none (the queue is one pointer in every version) */
  su_duration_t a = q && *q ? su_timer_next_expires(q, now) : SU_DURATION_MAX;
  su_duration_t b = dq && *dq ? su_timer_next_expires(dq, now) : SU_DURATION_MAX;
  return a < b ? a : b;
}

/* The deadline is armed 1 ms past the truncated ms: never early, so a wakeup finds its
 * timer due (a timer due in 0.3 ms would otherwise make the host step in a loop until
 * it is), and at most 1 ms late, sofia's own resolution. */
static void wake_rearm(void)
{
  su_duration_t ms = next_timer_ms();
  int64_t now = mono_ns(), due = 0;
  if (ms != SU_DURATION_MAX)
    due = now + ((int64_t)ms + 1) * 1000000;
  /* most steps leave the first timer where it was: keep the armed deadline (saves a
   * syscall per step) while it is still ahead, not later than the new one and at most
   * 1 ms earlier, unless a kick made the descriptor readable */
  if (luasip_embed_armed) {
    if (due == 0 && E.due == 0)
      return;
    if (due != 0 && E.due > now && E.due <= due && due - E.due < 1000000)
      return;
  }
  wake_set(due);
  luasip_embed_armed = 1;
}

/* luasip was used from outside its loop (a host callback sent a request, started a
 * timer, dropped an object): sofia may have a new timer or deferred work that the
 * deadline armed after the last step does not cover.  Make the descriptor readable at
 * once, so the host steps and the deadline is computed again.  One syscall per step at
 * most: luasip_embed_armed stays 0 until then. */
void luasip_embed_kick(void)
{
  int64_t due = 1;                  /* long past: readable at once */
  luasip_embed_armed = 0;
  E.kicked = 1;
  E.due_before_kick = E.due;
  /* A host that calls luasip after every step (reads a field, checks a state) would
   * kick after every step and turn its loop for nothing, forever.  After steps that a
   * kick caused and that found nothing to do, the next kick waits 1, 2, 4 ... 64 ms
   * (never past the armed deadline); a step that did work resets it. */
  if (E.idle_kicks > 0) {
    int shift = E.idle_kicks - 1;
    int64_t ms = shift >= 6 ? KICK_DELAY_MAX_MS : (int64_t)1 << shift;
    due = mono_ns() + ms * 1000000;
    if (E.due > 1 && E.due < due)
      due = E.due;
  }
  wake_set(due);
}

/* After every core.step */
void luasip_embed_stepped(void)
{
  int64_t before;
  if (E.poll_fd < 0)
    return;
  before = E.kicked ? E.due_before_kick : 0;
  wake_rearm();
  if (!E.kicked || luasip_S->entries != E.entries ||
      (E.due != 0 && (before == 0 || E.due < before - 1000000)))
    E.idle_kicks = 0;               /* Lua ran, or the kick brought a nearer timer */
  else if (E.idle_kicks < 7)
    E.idle_kicks++;
  E.kicked = 0;
  E.entries = luasip_S->entries;
}

/* 1 when the epoll instance behind fd watches wake_fd */
static int epoll_watches(int fd, int wake_fd)
{
  char path[64], line[256];
  FILE *f;
  int found = 0;
  snprintf(path, sizeof path, "/proc/self/fdinfo/%d", fd);
  f = fopen(path, "re");
  if (!f)
    return 0;
  while (!found && fgets(line, sizeof line, f)) {
    int tfd;
    if (sscanf(line, "tfd: %d", &tfd) == 1 && tfd == wake_fd)
      found = 1;
  }
  fclose(f);
  return found;
}

/* sofia's epoll descriptor: the epoll instance among our descriptors that watches
 * wake_fd (registered in the root just before), or -1 */
static int find_root_epoll(int wake_fd)
{
  DIR *d = opendir("/proc/self/fd");
  struct dirent *de;
  int found = -1;
  if (!d)
    return -1;
  while (found < 0 && (de = readdir(d))) {
    char path[64], link[64];
    ssize_t n;
    int fd;
    if (de->d_name[0] < '0' || de->d_name[0] > '9')
      continue;
    fd = atoi(de->d_name);
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    n = readlink(path, link, sizeof link - 1);
    if (n <= 0)
      continue;
    link[n] = '\0';
    if (strcmp(link, "anon_inode:[eventpoll]") == 0 && epoll_watches(fd, wake_fd))
      found = fd;
  }
  closedir(d);
  return found;
}

static void embed_undo(void)
{
  luasip_embed_armed = 0;
  if (E.wake_reg >= 0)
    su_root_deregister(luasip_S->root, E.wake_reg);   /* also destroys the wait object */
  E.wake_reg = -1;
  if (E.wake_fd >= 0)
    close(E.wake_fd);
  E.wake_fd = -1;
  if (E.poll_fd >= 0)
    close(E.poll_fd);
  E.poll_fd = -1;
}

/* pollfd() -> fd | nil, err, code: readable whenever the loop has work (a message, a
 * due timer, luasip used from outside the loop); step(0) then does it.  One descriptor
 * for the life of the module state: luasip closes it at lua_close. */
int luasip_embed_pollfd(lua_State *L)
{
  su_wait_t wait[1];
  int epfd;
  if (E.poll_fd >= 0) {
    lua_pushinteger(L, E.poll_fd);
    return 1;
  }
  E.wake_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
  if (E.wake_fd < 0)
    return luasip_fail(L, "luasip.pollfd: cannot create a timerfd", "system");
  if (su_wait_create(wait, E.wake_fd, SU_WAIT_IN) < 0) {
    embed_undo();
    return luasip_fail(L, "luasip.pollfd: cannot create a wait object", "system");
  }
  E.wake_reg = su_root_register(luasip_S->root, wait, wake_event, NULL, 0);
  if (E.wake_reg < 0) {
    su_wait_destroy(wait);
    embed_undo();
    return luasip_fail(L, "luasip.pollfd: cannot register in the loop", "system");
  }
  epfd = find_root_epoll(E.wake_fd);
  if (epfd < 0) {
    embed_undo();
    return luasip_fail(L, "luasip.pollfd: sofia's loop is not epoll-based here "
                       "(SU_PORT set, or no /proc): use sip.step(ms) from a host timer",
                       "unsupported");
  }
  /* a dup: a host that closes its descriptor does not close sofia's */
  E.poll_fd = fcntl(epfd, F_DUPFD_CLOEXEC, 3);
  if (E.poll_fd < 0) {
    embed_undo();
    return luasip_fail(L, "luasip.pollfd: cannot duplicate the descriptor", "system");
  }
  wake_rearm();
  lua_pushinteger(L, E.poll_fd);
  return 1;
}

/* timeout() -> seconds until sofia's next timer (never early: 1 ms past the truncated
 * millisecond), or nil when no timer is set */
int luasip_embed_timeout(lua_State *L)
{
  su_duration_t ms = next_timer_ms();
  if (ms == SU_DURATION_MAX)
    lua_pushnil(L);
  else
    lua_pushnumber(L, (lua_Number)(ms + 1) / 1000);
  return 1;
}

/* lua_close: before the root is destroyed */
void luasip_embed_close(void)
{
  if (luasip_S && luasip_S->root)
    embed_undo();
}
