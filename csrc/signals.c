/* SPDX-License-Identifier: MIT
 * Signals a script reacts to on the loop (sip.on_signal): SIGHUP, SIGUSR1, SIGUSR2.
 * The handler only records the signal and writes a byte to a self-pipe the su_root
 * watches; the pipe's wakeup (a loop callback, outside the signal context) enters Lua
 * through the bridge with the event "SIGHUP" (...), whether run() or step() turns the loop.
 * The pipe lives from the first catch to the close of the module state.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "luasip.h"

static const struct { const char *name, *event; int sig; } SIGNALS[] = {
  { "HUP", "SIGHUP", SIGHUP },
  { "USR1", "SIGUSR1", SIGUSR1 },
  { "USR2", "SIGUSR2", SIGUSR2 },
};
#define NSIGNALS (sizeof SIGNALS / sizeof SIGNALS[0])

static volatile sig_atomic_t pending[NSIGNALS];
static struct sigaction previous[NSIGNALS];
static int caught[NSIGNALS];          /* our handler is installed (previous is saved) */
static int sig_pipe[2] = { -1, -1 };
static su_wait_t sig_wait[1];
static int sig_reg = -1;

static void signals_on_signal(int sig)
{
  int e = errno;
  size_t i;
  for (i = 0; i < NSIGNALS; i++)
    if (SIGNALS[i].sig == sig)
      pending[i] = 1;
  if (sig_pipe[1] >= 0 && write(sig_pipe[1], "", 1) < 0)
    (void)0;                        /* full pipe: a wakeup is pending anyway */
  errno = e;
}

/* the loop's side: each pending signal becomes one event (signals that came twice
 * before the loop turned are delivered once) */
static int signals_wakeup(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  char buf[64];
  size_t i;
  (void)m; (void)w; (void)arg;
  while (read(sig_pipe[0], buf, sizeof buf) > 0)
    ;
  for (i = 0; i < NSIGNALS; i++) {
    if (pending[i]) {
      pending[i] = 0;
      luasip_bridge(SIGNALS[i].event, NULL, NULL);
    }
  }
  return 0;
}

/* the self-pipe, once: it stays registered (a Lua hook may turn its signal off from
 * inside the wakeup that runs it) until the module state closes */
static int signals_pipe_open(void)
{
  int i;
  if (sig_reg >= 0)
    return 0;
  if (pipe(sig_pipe) != 0)
    return -1;
  for (i = 0; i < 2; i++) {
    fcntl(sig_pipe[i], F_SETFL, fcntl(sig_pipe[i], F_GETFL) | O_NONBLOCK);
    fcntl(sig_pipe[i], F_SETFD, FD_CLOEXEC);
  }
  if (su_wait_create(sig_wait, sig_pipe[0], SU_WAIT_IN) == 0)
    sig_reg = su_root_register(luasip_S->root, sig_wait, signals_wakeup, NULL, 0);
  if (sig_reg < 0) {
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sig_pipe[0] = sig_pipe[1] = -1;
    return -1;
  }
  return 0;
}

/* catch_signal(name, on) -> true | nil, err, code: on: the signal is delivered to the
 * Lua layer as an event; off: its previous disposition is back */
int luasip_catch_signal(lua_State *L)
{
  const char *name = luaL_checkstring(L, 1);
  int on = lua_toboolean(L, 2);
  size_t i;
  for (i = 0; i < NSIGNALS; i++)
    if (strcmp(name, SIGNALS[i].name) == 0)
      break;
  if (i == NSIGNALS)
    return luaL_error(L, "luasip.on_signal: unknown signal '%s' (HUP, USR1 or USR2)", name);
  if (on && !caught[i]) {
    struct sigaction sa;
    if (signals_pipe_open() != 0)
      return luasip_fail(L, strerror(errno ? errno : EMFILE), "signal");
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = signals_on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART;       /* the pipe wakes the loop; other calls go on */
    if (sigaction(SIGNALS[i].sig, &sa, &previous[i]) != 0)
      return luasip_fail(L, strerror(errno), "signal");
    caught[i] = 1;
  } else if (!on && caught[i]) {
    sigaction(SIGNALS[i].sig, &previous[i], NULL);
    caught[i] = 0;
    pending[i] = 0;
  }
  lua_pushboolean(L, 1);
  return 1;
}

/* at the close of the module state (before its su_root goes): dispositions back,
 * the pipe closed */
void luasip_signals_close(void)
{
  size_t i;
  for (i = 0; i < NSIGNALS; i++) {
    if (caught[i])
      sigaction(SIGNALS[i].sig, &previous[i], NULL);
    caught[i] = 0;
    pending[i] = 0;
  }
  if (sig_reg >= 0 && luasip_S && luasip_S->root)
    su_root_deregister(luasip_S->root, sig_reg);
  sig_reg = -1;
  if (sig_pipe[0] >= 0) {
    close(sig_pipe[0]);
    close(sig_pipe[1]);
    sig_pipe[0] = sig_pipe[1] = -1;
  }
}
