/*
 * The runaway-script watchdog: a handler (or any Lua the loop runs) that keeps the loop
 * thread busy for more than a CPU-time limit without returning to the loop is interrupted
 * with an error; the dispatcher then answers its request 500 and logs the traceback, and
 * the loop goes on serving everyone else.
 *
 * No cost per Lua instruction: a POSIX timer on the loop thread's CPU clock
 * (CLOCK_THREAD_CPUTIME_ID, signal delivered to that thread) ticks every PERIOD_MS of
 * CPU the thread uses; the tick counts how long one bridge entry (luasip_S->entries, a
 * sofia callback running Lua) has lasted and, past the limit, sets a count hook on the
 * running bridge thread and on the handler coroutine the dispatcher resumed
 * (lua_sethook is async-signal-safe); the hook raises at the next Lua instruction.
 *
 * Limits: Lua that runs inside a coroutine the handler itself resumed is interrupted when
 * it yields back; LuaJIT checks hooks only in the interpreter, so a loop the JIT compiled
 * into a trace is not interrupted; user code that catches the error with pcall and loops
 * on is interrupted again after each further limit.
 *
 * The memory cap (sip.memory_limit): the Lua state's allocator is wrapped (only once a
 * limit is set: no cost otherwise) by one that counts the bytes in use and, while a
 * handler coroutine runs (between resume_begin and resume_end), refuses an allocation
 * that would take them over the limit: Lua raises "not enough memory" in the handler
 * (5.2+ first run an emergency collection and retry), and the dispatcher answers 500 as
 * for any error.  Outside handlers nothing is refused, so that answer can be sent.  The
 * wrapper is removed, and its counter freed, when the module state closes.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdlib.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/syscall.h>

#include "luasip.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

#define PERIOD_MS 50
#define RUNNING_MAX 64

static double limit_s = 2.0;          /* 0: off */
static int armed;                     /* the timer exists and ticks */
static int signo;
static timer_t cpu_timer;
static struct sigaction old_action;

static volatile sig_atomic_t kill_pending;
static unsigned long seen_entries;
static int ticks;
static double killed_after;

/* the handler coroutines being resumed (dispatcher step), innermost last */
static lua_State *running[RUNNING_MAX];
static int nrunning;

static void runaway_hook(lua_State *L, lua_Debug *ar)
{
  int i;
  (void)ar;
  lua_sethook(L, NULL, 0, 0);
  if (!kill_pending)
    return;
  kill_pending = 0;
  /* the other thread armed with it must not raise too when it runs on */
  if (luasip_S) {
    lua_State *T = luasip_S->T;
    if (T && T != L)
      lua_sethook(T, NULL, 0, 0);
    for (i = 0; i < LUASIP_BRIDGE_DEPTH; i++)
      if (luasip_S->nested[i] && luasip_S->nested[i] != L)
        lua_sethook(luasip_S->nested[i], NULL, 0, 0);
  }
  for (i = 0; i < nrunning; i++)
    if (running[i] != L)
      lua_sethook(running[i], NULL, 0, 0);
  {
    char msg[160];
    snprintf(msg, sizeof msg, "luasip: interrupted after %.2f s of CPU without returning "
             "to the loop (sip.cpu_limit)", killed_after);
    luaL_error(L, "%s", msg);
  }
}

static void on_tick(int sig)
{
  lsip_state_t *S = luasip_S;
  int e = errno;
  lua_State *T;
  (void)sig;
  if (!S || S->depth == 0 || limit_s <= 0) {
    ticks = 0;
    goto out;
  }
  if (S->entries != seen_entries) {
    seen_entries = S->entries;
    ticks = 0;
    goto out;
  }
  if (++ticks * (PERIOD_MS / 1000.0) < limit_s || kill_pending)
    goto out;
  killed_after = ticks * (PERIOD_MS / 1000.0);
  ticks = 0;
  kill_pending = 1;
  T = S->depth == 1 ? S->T : S->nested[S->depth - 2];
  if (T)
    lua_sethook(T, runaway_hook, LUA_MASKCOUNT, 1);
  if (nrunning > 0 && nrunning <= RUNNING_MAX)
    lua_sethook(running[nrunning - 1], runaway_hook, LUA_MASKCOUNT, 1);
out:
  errno = e;
}

/* Starts the ticks on the calling thread (the loop's) when a limit is set; run() and
 * step() call it, so nothing is installed for a script that never turns the loop. */
void luasip_watchdog_arm(void)
{
  struct sigaction sa;
  struct sigevent sev;
  struct itimerspec its;
  if (armed || limit_s <= 0)
    return;
  signo = SIGRTMIN + 7;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = on_tick;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  if (sigaction(signo, &sa, &old_action) < 0)
    return;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = signo;
  sev.sigev_notify_thread_id = (pid_t)syscall(SYS_gettid);
  if (timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &cpu_timer) < 0) {
    luasip_log(2, "cpu_limit: timer_create: %s (no runaway-script limit)", strerror(errno));
    sigaction(signo, &old_action, NULL);
    return;
  }
  memset(&its, 0, sizeof its);
  its.it_value.tv_nsec = its.it_interval.tv_nsec = PERIOD_MS * 1000000L;
  timer_settime(cpu_timer, 0, &its, NULL);
  armed = 1;
}

void luasip_watchdog_disarm(void)
{
  if (!armed)
    return;
  timer_delete(cpu_timer);
  sigaction(signo, &old_action, NULL);
  armed = 0;
  kill_pending = 0;
  ticks = 0;
}

/* cpu_limit([seconds | false]) -> previous (seconds or false) */
int luasip_cpu_limit(lua_State *L)
{
  double prev = limit_s;
  if (!lua_isnone(L, 1)) {
    if (lua_isboolean(L, 1) && !lua_toboolean(L, 1)) {
      limit_s = 0;
      luasip_watchdog_disarm();
    } else {
      double s = lua_type(L, 1) == LUA_TNUMBER ? lua_tonumber(L, 1) : -1;
      if (!(s >= 0.05 && s <= 3600))
        return luaL_error(L, "luasip.cpu_limit: seconds must be 0.05-3600 or false");
      limit_s = s;
      if (luasip_S && luasip_S->running)
        luasip_watchdog_arm();
    }
  }
  if (prev > 0)
    lua_pushnumber(L, prev);
  else
    lua_pushboolean(L, 0);
  return 1;
}

/* ---------------------------------------------------------------- the memory cap */

typedef struct {
  lua_Alloc orig;
  void *ud;
  lua_State *L;                       /* the state whose allocator this wraps */
  size_t total;                       /* bytes in use, as the allocator saw them */
  size_t limit;                       /* 0: none */
  unsigned long refused;
} memcap_t;

static memcap_t *memcap;

static void *capped_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
  memcap_t *m = ud;
  size_t old = ptr ? osize : 0;       /* without ptr, osize is a type tag (5.2+) */
  void *p;
  if (nsize > old && m->limit && nrunning > 0 && m->total + (nsize - old) > m->limit) {
    m->refused++;
    return NULL;
  }
  p = m->orig(m->ud, ptr, osize, nsize);
  if (p || nsize == 0)
    m->total = (m->total >= old ? m->total - old : 0) + nsize;
  return p;
}

/* memory_limit([bytes | false]) -> previous (bytes or false), in use (bytes), refused */
int luasip_memory_limit(lua_State *L)
{
  size_t prev = memcap ? memcap->limit : 0;
  if (!lua_isnone(L, 1)) {
    size_t limit = 0;
    if (!(lua_isboolean(L, 1) && !lua_toboolean(L, 1))) {
      double b = lua_type(L, 1) == LUA_TNUMBER ? lua_tonumber(L, 1) : -1;
      if (!(b >= 1048576.0 && b <= 1e15))
        return luaL_error(L, "luasip.memory_limit: bytes must be at least 1 MiB, or false");
      limit = (size_t)b;
    }
    if (limit && !memcap) {
      memcap_t *m = calloc(1, sizeof *m);
      if (!m)
        return luaL_error(L, "luasip.memory_limit: out of memory");
      m->orig = lua_getallocf(L, &m->ud);
      m->L = L;
      m->total = (size_t)lua_gc(L, LUA_GCCOUNT, 0) * 1024 + (size_t)lua_gc(L, LUA_GCCOUNTB, 0);
      lua_setallocf(L, capped_alloc, m);
      memcap = m;
    }
    if (memcap)
      memcap->limit = limit;
  }
  if (prev)
    lua_pushnumber(L, (lua_Number)prev);
  else
    lua_pushboolean(L, 0);
  lua_pushnumber(L, memcap ? (lua_Number)memcap->total : 0);
  lua_pushnumber(L, memcap ? (lua_Number)memcap->refused : 0);
  return 3;
}

/* state close: the state's own allocator back (the blocks freed after this go to it
 * directly, which is where they came from) */
void luasip_memcap_close(void)
{
  if (!memcap)
    return;
  lua_setallocf(memcap->L, memcap->orig, memcap->ud);
  free(memcap);
  memcap = NULL;
}

/* resume_begin(co) / resume_end(): the dispatcher brackets each resume of a handler
 * coroutine, so a tick knows which thread to interrupt */
/* over the memory cap before or after a handler's turn: a full collection first (Lua 5.1
 * and LuaJIT collect nothing when an allocation fails; the garbage of a handler the cap
 * stopped would fail the next one) */
static void memcap_collect(lua_State *L)
{
  if (memcap && memcap->limit && memcap->total > memcap->limit - memcap->limit / 8)
    lua_gc(L, LUA_GCCOLLECT, 0);
}

int luasip_resume_begin(lua_State *L)
{
  lua_State *co = lua_tothread(L, 1);
  memcap_collect(L);
  if (nrunning < RUNNING_MAX)
    running[nrunning] = co;
  nrunning++;
  return 0;
}

int luasip_resume_end(lua_State *L)
{
  if (nrunning > 0) {
    nrunning--;
    if (nrunning < RUNNING_MAX)
      running[nrunning] = NULL;
  }
  memcap_collect(L);
  return 0;
}
