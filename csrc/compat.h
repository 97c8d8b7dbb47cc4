/* SPDX-License-Identifier: MIT
 * Lua version shims: the only file of luasip with #if LUA_VERSION_NUM.
 * Lua 5.1 and LuaJIT use function environments where 5.2+ have user values.
 */
#ifndef LUASIP_COMPAT_H
#define LUASIP_COMPAT_H

#include <stdlib.h>

#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

/* A module built for one Lua and loaded by another fails in dlopen on its first missing
 * symbol ("undefined symbol: lua_pcall"), before luaopen can say why.  The API functions
 * this build uses that other Lua versions lack are weak references instead: the library
 * then loads anywhere, and luaopen refuses a host where one of them is missing
 * (LUASIP_API_MISSING) with a message naming both versions.
 * LUASIP_BUILT_FOR names this build; LUASIP_CHECKVERSION checks the rest (5.2+). */
#define LUASIP_PRAGMA(x) _Pragma(#x)
#define LUASIP_WEAK(f) LUASIP_PRAGMA(weak f)
#define LUASIP_ISNULL(f) (&f == NULL) ||

#if LUA_VERSION_NUM < 502
#define LUASIP_WEAK_API(X) X(luaL_prepbuffer) X(luaL_register) X(lua_call) X(lua_cpcall) \
  X(lua_getfenv) X(lua_insert) X(lua_newuserdata) X(lua_objlen) X(lua_pcall) X(lua_remove) \
  X(lua_replace) X(lua_setfenv) X(lua_tonumber)
#ifdef LUA_JITLIBNAME
#define LUASIP_BUILT_FOR "LuaJIT"
#else
#define LUASIP_BUILT_FOR "Lua 5.1"
#endif
#define LUASIP_CHECKVERSION(L) ((void)(L))
#else
/* 5.2 API that Lua 5.1 lacks (LuaJIT has it) */
#define LUASIP_WEAK_52(X) X(luaL_setfuncs) X(luaL_testudata) X(luaL_traceback) X(lua_copy) \
  X(lua_tonumberx)
#if LUA_VERSION_NUM == 502
#define LUASIP_WEAK_API(X) X(lua_getuservalue) X(lua_newuserdata) X(lua_setuservalue) \
  X(luaL_checkversion_) X(lua_callk) X(lua_pcallk) X(lua_rawlen) LUASIP_WEAK_52(X)
#define LUASIP_BUILT_FOR "Lua 5.2"
#elif LUA_VERSION_NUM == 503
#define LUASIP_WEAK_API(X) X(lua_getuservalue) X(lua_newuserdata) X(lua_setuservalue) \
  X(luaL_checkversion_) X(luaL_prepbuffsize) X(lua_callk) X(lua_pcallk) X(lua_rawlen) \
  X(lua_rotate) X(lua_stringtonumber) X(lua_isinteger) LUASIP_WEAK_52(X)
#define LUASIP_BUILT_FOR "Lua 5.3"
#else
#define LUASIP_WEAK_API(X) X(lua_getiuservalue) X(lua_newuserdatauv) X(lua_setiuservalue) \
  X(luaL_checkversion_) X(luaL_prepbuffsize) X(lua_callk) X(lua_pcallk) X(lua_rawlen) \
  X(lua_rotate) X(lua_stringtonumber) X(lua_isinteger) LUASIP_WEAK_52(X)
#define LUASIP_BUILT_FOR "Lua 5.4"
#endif
#define LUASIP_CHECKVERSION(L) luaL_checkversion(L)
#endif

LUASIP_WEAK_API(LUASIP_WEAK)
#define LUASIP_API_MISSING() (LUASIP_WEAK_API(LUASIP_ISNULL) 0)

/* luasip_pushnumeral(L, s): pushes the number a string of decimal digits is, as tonumber
 * would (an integer where the Lua has them and it fits) */
#if LUA_VERSION_NUM >= 503
#define luasip_pushnumeral(L, s) \
  ((void)(lua_stringtonumber((L), (s)) || (lua_pushnumber((L), strtod((s), NULL)), 0)))
#else
#define luasip_pushnumeral(L, s) lua_pushnumber((L), strtod((s), NULL))
#endif

#if LUA_VERSION_NUM < 502
#define luasip_getuv(L, i) lua_getfenv((L), (i))
#define luasip_setuv(L, i) lua_setfenv((L), (i))
#define luasip_rawlen(L, i) lua_objlen((L), (i))
#define luasip_setfuncs(L, l) luaL_register((L), NULL, (l))
#define luasip_newlib(L, l) (lua_newtable(L), luaL_register((L), NULL, (l)))
#else
#define luasip_getuv(L, i) ((void)lua_getuservalue((L), (i)))
#define luasip_setuv(L, i) lua_setuservalue((L), (i))
#define luasip_rawlen(L, i) lua_rawlen((L), (i))
#define luasip_setfuncs(L, l) luaL_setfuncs((L), (l), 0)
#define luasip_newlib(L, l) luaL_newlib((L), (l))
#endif

#if LUA_VERSION_NUM < 502
static inline void *luasip_testudata(lua_State *L, int i, const char *tname)
{
  void *p = lua_touserdata(L, i);
  if (p && lua_getmetatable(L, i)) {
    luaL_getmetatable(L, tname);
    if (!lua_rawequal(L, -1, -2))
      p = NULL;
    lua_pop(L, 2);
    return p;
  }
  return NULL;
}
#define luaL_testudata(L, i, t) luasip_testudata((L), (i), (t))

/* message handler helper: msg + traceback, via debug.traceback */
static inline void luasip_traceback(lua_State *L, const char *msg)
{
  lua_getglobal(L, "debug");
  if (lua_istable(L, -1)) {
    lua_getfield(L, -1, "traceback");
    lua_remove(L, -2);
    lua_pushstring(L, msg);
    lua_pushinteger(L, 2);
    lua_call(L, 2, 1);
  } else {
    lua_pop(L, 1);
    lua_pushstring(L, msg);
  }
}
#else
#define luasip_traceback(L, msg) luaL_traceback((L), (L), (msg), 1)
#endif

#if LUA_VERSION_NUM >= 504
#define luasip_newuserdata(L, sz) lua_newuserdatauv((L), (sz), 1)
#else
#define luasip_newuserdata(L, sz) lua_newuserdata((L), (sz))
#endif

/* Run f(L) with ud as its only argument in protected mode; returns a lua status.
 * On 5.1/LuaJIT lua_cpcall is the only way that cannot raise outside protection. */
#if LUA_VERSION_NUM < 502
#define luasip_cpcall(L, f, ud) lua_cpcall((L), (f), (ud))
#else
static inline int luasip_cpcall(lua_State *L, lua_CFunction f, void *ud)
{
  lua_pushcfunction(L, f);       /* light C function: no allocation */
  lua_pushlightuserdata(L, ud);
  return lua_pcall(L, 1, 0, 0);
}
#endif

#endif
