/* SPDX-License-Identifier: MIT
 * Lua version shims: the only file of luasip with #if LUA_VERSION_NUM.
 * Lua 5.1 and LuaJIT use function environments where 5.2+ have user values.
 */
#ifndef LUASIP_COMPAT_H
#define LUASIP_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

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
