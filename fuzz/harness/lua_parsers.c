/* SPDX-License-Identifier: MIT
 * libFuzzer target lua_parsers: the parsers luasip applies to what peers send (SDP,
 * PIDF, digest headers in Lua and in C, Refer-To, Replaces, sipfrag, Event), run by
 * fuzz/harness/lua_parsers.lua on each input; the first byte chooses the parser.  A
 * crash, a sanitizer report, or a Lua error where the README promises a fail tuple is
 * a finding (the Lua side returns its message, and we abort with it).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include <lua.h>

#include "harness.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static lua_State *L;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc, (void)argv;
  L = harness_state();
  harness_dofile(L, "lua_parsers.lua");          /* the function at index 1 */
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  harness_call(L, 1, (const char *)data, size, 1);
  if (lua_type(L, -1) == LUA_TSTRING) {
    fprintf(stderr, "lua_parsers: %s\n", lua_tostring(L, -1));
    abort();
  }
  lua_settop(L, 1);
  return 0;
}
