/* SPDX-License-Identifier: MIT
 * The bridge: the only code that calls into Lua from sofia callbacks.  Every entry is
 * protected (cpcall around a pcall with a traceback handler), restores the stack, and
 * never lets an error longjmp through sofia frames.  It calls the Lua dispatcher
 * registered by lua/luasip/dispatcher.lua as dispatcher(event, a, b).
 */
#include "luasip.h"

static const char DISPATCHER_KEY = 'd';
static const char THREAD_KEY = 't';

typedef struct bridge_call {
  const char *event;
  lsip_obj_t *a, *b;
} bridge_call_t;

/* Message handler: a table error (error{status=486}) passes through untouched. */
static int bridge_msgh(lua_State *L)
{
  const char *msg;
  if (lua_type(L, 1) == LUA_TTABLE)
    return 1;
  msg = lua_tostring(L, 1);
  luasip_traceback(L, msg ? msg : "(error object is not a string)");
  return 1;
}

static void push_arg(lua_State *L, lsip_obj_t *obj)
{
  if (obj && !obj->born)
    luasip_wrapobj(L, obj);
  else
    luasip_pushobj(L, obj);
}

static int bridge_entry(lua_State *L)
{
  bridge_call_t *c = (bridge_call_t *)lua_touserdata(L, 1);
  lua_settop(L, 0);
  lua_pushcfunction(L, bridge_msgh);
  lua_pushlightuserdata(L, (void *)&DISPATCHER_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isfunction(L, -1))
    return 0;                       /* no Lua layer loaded: nothing listens */
  lua_pushstring(L, c->event);
  push_arg(L, c->a);
  push_arg(L, c->b);
  if (lua_pcall(L, 3, 0, 1) != 0) {
    if (lua_type(L, -1) == LUA_TTABLE)
      luasip_log(1, "dispatcher raised a table for %s", c->event);
    else
      luasip_log(1, "dispatcher failed on %s: %s", c->event, lua_tostring(L, -1));
  }
  return 0;
}

int luasip_bridge(const char *event, lsip_obj_t *a, lsip_obj_t *b)
{
  lua_State *T = luasip_S->T, *L;
  bridge_call_t c;
  int top, status;

  if (!T || luasip_S->closing || !lua_checkstack(T, 4))
    return -1;
  top = lua_gettop(T);
  L = T;
  /* a nested entry (Lua -> sofia -> Lua) gets a thread of its own: T is busy below us */
  if (luasip_S->depth > 0) {
    L = lua_newthread(T);
    if (!L)
      return -1;
  }
  c.event = event;
  c.a = a;
  c.b = b;
  luasip_S->entries++;
  luasip_S->depth++;
  status = luasip_cpcall(L, bridge_entry, &c);
  luasip_S->depth--;
  if (status != 0) {
    luasip_log(1, "cannot enter Lua for %s: %s", event,
               lua_isstring(L, -1) ? lua_tostring(L, -1) : "memory error");
  }
  if (L != T)
    lua_settop(L, 0);
  lua_settop(T, top);
  return status == 0 ? 0 : -1;
}

/* set_dispatcher(fn): the Lua layer's single entry point */
int luasip_set_dispatcher(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_pushlightuserdata(L, (void *)&DISPATCHER_KEY);
  lua_pushvalue(L, 1);
  lua_rawset(L, LUA_REGISTRYINDEX);
  return 0;
}

void luasip_bridge_open(lua_State *L)
{
  lua_pushlightuserdata(L, (void *)&THREAD_KEY);
  luasip_S->T = lua_newthread(L);  /* anchored in the registry for the process */
  lua_rawset(L, LUA_REGISTRYINDEX);
}
