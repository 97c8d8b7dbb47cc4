/* SPDX-License-Identifier: MIT
 * The bridge: the only code that calls into Lua from sofia callbacks.  Every entry is one
 * protected call (cpcall) on an idle thread; everything that can allocate (userdata for
 * new objects, the thread for the next nesting level) happens inside it, so no error can
 * longjmp through sofia frames.  It calls the Lua dispatcher registered by
 * lua/luasip/dispatcher.lua as dispatcher(event, a, b) under a traceback handler.
 * Threads: level 0 is luasip_S->T; a nested entry (Lua -> sofia -> Lua) at depth d runs
 * on luasip_S->nested[d - 1], made by the protected call one level below and anchored in
 * the registry for the process.  Entries are strictly LIFO, so each level's thread is
 * idle whenever it is entered.
 */
#include "luasip.h"

static const char DISPATCHER_KEY = 'd';
static const char THREAD_KEY = 't';

typedef struct bridge_call {
  const char *event;
  lsip_obj_t *a, *b;
  int level;                  /* nesting level this call runs at (0: outermost) */
  int ok;                     /* the dispatcher ran and returned normally */
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

/* Makes the thread of the next nesting level, if it does not exist yet.  Runs inside the
 * protected call, so a memory error fails this entry instead of a later nested one. */
static void ensure_next_level(lua_State *L, int level)
{
  lua_State *N;
  if (level >= LUASIP_BRIDGE_DEPTH || luasip_S->nested[level])
    return;
  lua_pushlightuserdata(L, (void *)&THREAD_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  N = lua_newthread(L);
  lua_rawseti(L, -2, level + 1);    /* anchored for the process */
  lua_pop(L, 1);
  luasip_S->nested[level] = N;
}

static int bridge_entry(lua_State *L)
{
  bridge_call_t *c = (bridge_call_t *)lua_touserdata(L, 1);
  lua_settop(L, 0);
  ensure_next_level(L, c->level);
  lua_pushcfunction(L, bridge_msgh);
  lua_pushlightuserdata(L, (void *)&DISPATCHER_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (!lua_isfunction(L, -1))
    return 0;                       /* no Lua layer loaded: Lua did not run */
  lua_pushstring(L, c->event);
  push_arg(L, c->a);
  push_arg(L, c->b);
  if (lua_pcall(L, 3, 0, 1) == 0) {
    c->ok = 1;
    return 0;
  }
  if (lua_type(L, -1) == LUA_TTABLE)
    luasip_log(1, "dispatcher raised a table for %s", c->event);
  else
    luasip_log(1, "dispatcher failed on %s: %s", c->event, lua_tostring(L, -1));
  return 0;
}

int luasip_bridge(const char *event, lsip_obj_t *a, lsip_obj_t *b)
{
  lua_State *L;
  bridge_call_t c;
  int level, top, status;

  if (!luasip_S || !luasip_S->T || luasip_S->closing)
    return -1;
  level = luasip_S->depth;
  if (level > LUASIP_BRIDGE_DEPTH) {
    luasip_log(1, "cannot enter Lua for %s: nested %d levels deep", event, level);
    return -1;
  }
  L = level == 0 ? luasip_S->T : luasip_S->nested[level - 1];
  if (!L) {
    luasip_log(1, "cannot enter Lua for %s: no thread (out of memory)", event);
    return -1;
  }
  c.event = event;
  c.a = a;
  c.b = b;
  c.level = level;
  c.ok = 0;
  top = lua_gettop(L);              /* 0: the thread of a level is idle when entered */
  luasip_S->entries++;
  luasip_S->depth++;
  status = luasip_cpcall(L, bridge_entry, &c);
  luasip_S->depth--;
  if (status != 0)                  /* only a string is read: converting could allocate */
    luasip_log(1, "cannot enter Lua for %s: %s", event,
               lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1) : "memory error");
  lua_settop(L, top);
  return status == 0 && c.ok ? 0 : -1;
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

/* Called from luaopen (a protected Lua context): the thread table and level 0. */
void luasip_bridge_open(lua_State *L)
{
  lua_pushlightuserdata(L, (void *)&THREAD_KEY);
  lua_newtable(L);
  luasip_S->T = lua_newthread(L);
  lua_rawseti(L, -2, 0);
  lua_rawset(L, LUA_REGISTRYINDEX);
}
