/* SPDX-License-Identifier: MIT
 * The Lua state of the libFuzzer targets (see harness.h).  Coverage of Lua code: a
 * LUA_MASKLINE hook hashes (chunk, previous line, line) into a byte array in the
 * __libfuzzer_extra_counters section, which libFuzzer reads as extra edge counters.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lualib.h>

#include "harness.h"

int luaopen_luasip_core(lua_State *L);

#ifndef LUASIP_ROOT
#define LUASIP_ROOT "."
#endif

#define LUA_COUNTERS (1 << 16)
__attribute__((section("__libfuzzer_extra_counters"), used))
static uint8_t lua_counters[LUA_COUNTERS];
static uintptr_t last_edge;

static void line_hook(lua_State *L, lua_Debug *ar)
{
  uintptr_t here, i;
  if (!lua_getinfo(L, "S", ar))
    return;
  /* ar->source points into the chunk's name string, constant while the chunk lives */
  here = ((uintptr_t)ar->source * 31u) ^ ((uintptr_t)ar->currentline * 0x9e3779b1u);
  i = (here ^ (last_edge >> 1)) & (LUA_COUNTERS - 1);
  if (lua_counters[i] != 255)
    lua_counters[i]++;
  last_edge = here;
}

static const char *root(void)
{
  const char *r = getenv("LUASIP_ROOT");
  return r && *r ? r : LUASIP_ROOT;
}

static void die(lua_State *L, const char *what)
{
  fprintf(stderr, "fuzz harness: %s: %s\n", what, lua_tostring(L, -1));
  abort();
}

lua_State *harness_state(void)
{
  lua_State *L = luaL_newstate();
  if (!L) {
    fprintf(stderr, "fuzz harness: no Lua state\n");
    abort();
  }
  luaL_openlibs(L);
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lua/?.lua;%s/lua/?/init.lua", root(), root());
  lua_setfield(L, -2, "path");
  lua_pushliteral(L, "");
  lua_setfield(L, -2, "cpath");
  lua_getfield(L, -1, "preload");
  lua_pushcfunction(L, luaopen_luasip_core);
  lua_setfield(L, -2, "luasip.core");
  lua_pop(L, 2);
  if (!getenv("FUZZ_NO_LUA_COVERAGE"))
    lua_sethook(L, line_hook, LUA_MASKLINE, 0);
  return L;
}

void harness_dofile(lua_State *L, const char *name)
{
  char path[4096];
  snprintf(path, sizeof path, "%s/fuzz/harness/%s", root(), name);
  if (luaL_loadfile(L, path) != LUA_OK)
    die(L, path);
  lua_pushstring(L, root());
  if (lua_pcall(L, 1, 1, 0) != LUA_OK)
    die(L, path);
}

static int traceback(lua_State *L)
{
  luaL_traceback(L, L, lua_tostring(L, 1), 1);
  return 1;
}

void harness_call(lua_State *L, int idx, const char *data, size_t size, int nres)
{
  int base;
  idx = lua_absindex(L, idx);
  lua_pushcfunction(L, traceback);
  base = lua_gettop(L);
  lua_pushvalue(L, idx);
  lua_pushlstring(L, data, size);
  if (lua_pcall(L, 1, nres, base) != LUA_OK)
    die(L, "Lua error");
  lua_remove(L, base);
}
