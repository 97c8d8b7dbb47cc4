/* SPDX-License-Identifier: MIT
 * Shared by the libFuzzer targets of fuzz/harness/: a Lua 5.4 state with luasip (the
 * C core linked into the fuzzer binary, the Lua layer from lua/ of the tree) and a line
 * hook that feeds the Lua lines run into libFuzzer's coverage (extra counters), so the
 * fuzzer is guided by the Lua code as well as by the instrumented C.
 */
#ifndef LUASIP_FUZZ_HARNESS_H
#define LUASIP_FUZZ_HARNESS_H

#include <lua.h>

/* a state with the standard libraries, luasip.core preloaded, package.path on lua/
 * and the coverage hook set; dies with a message on failure */
lua_State *harness_state(void);

/* runs the Lua file fuzz/harness/<name> of the tree and leaves its one result on the
 * stack; dies with the error on failure */
void harness_dofile(lua_State *L, const char *name);

/* calls fn (at stack index idx) with the input as a string; a Lua error is fatal (a
 * finding): the harness's Lua returns an error message for a broken promise and raises
 * for nothing else, so either way this aborts with the message.  Returns the number of
 * results left on the stack (at most nres). */
void harness_call(lua_State *L, int idx, const char *data, size_t size, int nres);

#endif
