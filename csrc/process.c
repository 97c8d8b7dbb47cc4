/* SPDX-License-Identifier: MIT
 * Child processes for luasip.cluster: spawn (fork + exec), a non-blocking look at
 * whether one has ended (waitpid WNOHANG, which also reaps it), and signals.  No sofia
 * object is involved.  A child never outlives this process: it asks the kernel for
 * SIGKILL when its parent dies (PR_SET_PDEATHSIG), is a process group of its own (the
 * signals of a terminal go to the parent, which stops it) and closes every inherited
 * descriptor (sockets, the su_root's epoll) before exec.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "luasip.h"

#define MAX_ARGS 64
#define MAX_ENV 32

static const struct { const char *name; int sig; } SIGNAMES[] = {
  { "TERM", SIGTERM }, { "KILL", SIGKILL }, { "INT", SIGINT }, { "HUP", SIGHUP },
  { "USR1", SIGUSR1 }, { "USR2", SIGUSR2 }, { "0", 0 },
};

/* the child's side, between fork and exec: only async-signal-safe calls */
static void child_exec(char **argv, char **env, pid_t parent)
{
  sigset_t none;
  int sig;
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (getppid() != parent)        /* the parent died before the line above */
    _exit(127);
  for (sig = 1; sig < 32; sig++)  /* the parent's handlers are gone after exec anyway */
    if (sig != SIGKILL && sig != SIGSTOP)
      signal(sig, SIG_DFL);
  sigemptyset(&none);
  sigprocmask(SIG_SETMASK, &none, NULL);
  setpgid(0, 0);                  /* a terminal's ^C (or timeout(1)) reaches the parent
                                     alone: it stops its children itself, in order */
  closefrom(3);
  for (; *env; env++)
    putenv(*env);
  execvp(argv[0], argv);
  _exit(127);
}

/* spawn(argv, env) -> pid | nil, err, "spawn": argv a list of words (argv[1] looked up
 * in PATH), env a list of "NAME=value" added to this process's environment */
int luasip_process_spawn(lua_State *L)
{
  char *argv[MAX_ARGS + 1], *env[MAX_ENV + 1];
  int n, i, ne;
  pid_t pid, parent = getpid();
  luaL_checktype(L, 1, LUA_TTABLE);
  n = (int)luasip_rawlen(L, 1);
  ne = lua_istable(L, 2) ? (int)luasip_rawlen(L, 2) : 0;
  if (n < 1 || n > MAX_ARGS)
    return luaL_error(L, "luasip.spawn: 1-%d words expected", MAX_ARGS);
  if (ne > MAX_ENV)
    return luaL_error(L, "luasip.spawn: at most %d environment entries", MAX_ENV);
  /* the strings stay referenced by the two tables (on the stack) until we return */
  for (i = 0; i < n; i++) {
    lua_rawgeti(L, 1, i + 1);
    argv[i] = (char *)luaL_checkstring(L, -1);
    lua_pop(L, 1);
  }
  argv[n] = NULL;
  for (i = 0; i < ne; i++) {
    lua_rawgeti(L, 2, i + 1);
    env[i] = (char *)luaL_checkstring(L, -1);
    lua_pop(L, 1);
  }
  env[ne] = NULL;
  pid = fork();
  if (pid == 0)
    child_exec(argv, env, parent);
  if (pid < 0)
    return luasip_fail(L, strerror(errno), "spawn");
  lua_pushinteger(L, (lua_Integer)pid);
  return 1;
}

/* wait(pid) -> false (still running) | "exit", code | "signal", signo | nil, err:
 * reaps the child when it has ended */
int luasip_process_wait(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  int status = 0;
  pid_t r = waitpid(pid, &status, WNOHANG);
  if (r == 0) {
    lua_pushboolean(L, 0);
    return 1;
  }
  if (r < 0)
    return luasip_fail(L, strerror(errno), "wait");
  if (WIFSIGNALED(status)) {
    lua_pushliteral(L, "signal");
    lua_pushinteger(L, WTERMSIG(status));
  } else {
    lua_pushliteral(L, "exit");
    lua_pushinteger(L, WEXITSTATUS(status));
  }
  return 2;
}

/* kill(pid, name) -> true | nil, err: name "TERM", "KILL", "INT", "HUP", "USR1",
 * "USR2" or "0" (is it there?) */
int luasip_process_kill(lua_State *L)
{
  pid_t pid = (pid_t)luaL_checkinteger(L, 1);
  const char *name = luaL_optstring(L, 2, "TERM");
  size_t i;
  if (pid <= 0)
    return luaL_argerror(L, 1, "luasip.kill: a process id > 0 expected");
  for (i = 0; i < sizeof SIGNAMES / sizeof SIGNAMES[0]; i++)
    if (strcmp(name, SIGNAMES[i].name) == 0)
      break;
  if (i == sizeof SIGNAMES / sizeof SIGNAMES[0])
    return luaL_argerror(L, 2, "luasip.kill: unknown signal name");
  if (kill(pid, SIGNAMES[i].sig) != 0)
    return luasip_fail(L, strerror(errno), "kill");
  lua_pushboolean(L, 1);
  return 1;
}

/* getpid() -> this process's id (the launcher logs it) */
int luasip_process_getpid(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)getpid());
  return 1;
}
