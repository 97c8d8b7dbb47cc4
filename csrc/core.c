/* SPDX-License-Identifier: MIT
 * luasip.core: module entry, the su_root event loop (run/step/stop), timers, the object
 * box shared by every userdata type, deferred destruction and logging.
 * Uses su_root (single-threaded) and su_timer.  The module state lives for the process.
 */
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sofia-sip/su_log.h>
#include <sofia-sip/su_md5.h>

#include "luasip.h"

extern su_log_t nta_log[];
extern su_log_t tport_log[];

lsip_state_t *luasip_S = NULL;

static int log_level = 2; /* 0 none, 1 errors, 2 warnings, 3 info, 4 debug */
static const char OBJECTS_KEY = 'o'; /* registry: weak table lightuserdata -> userdata */

/* ---------------------------------------------------------------- log */

/* C log lines go to the Lua logger (sip.set_logger) through the function the Lua layer
 * registers with core.set_log_handler.  luasip_log may run inside a sofia frame, where
 * Lua must not be entered unprotected: it only queues the formatted line; the queue is
 * delivered at safe points (luasip_log_flush: after each loop step) by protected calls.
 * Without a handler (or when it raises) lines go to stderr. */
static const char LOG_HANDLER_KEY = 'l';  /* registry: the Lua log handler */
static const char *const LOG_LEVEL_NAMES[] = { "error", "error", "warn", "info", "debug" };
#define LOG_QUEUE_MAX 1000

typedef struct log_line {
  struct log_line *next;
  int level;
  const char *call_id;              /* in text, after the line's NUL; NULL: none */
  char text[1];
} log_line_t;

static log_line_t *log_head, **log_tail = &log_head;
static size_t log_queued;
static unsigned long log_dropped;
static int log_handler_set;         /* a Lua handler is registered in the open state */

static void log_stderr(const char *text)
{
  fputs("luasip: ", stderr);
  fputs(text, stderr);
  fputc('\n', stderr);
}

/* Copies text into out (size outsz) with control bytes other than LF and TAB written as
 * \xNN: log lines carry values from the network, and a raw ESC or CR would reach the
 * operator's terminal. */
static void log_escape(char *out, size_t outsz, const char *text)
{
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (; *text && o + 5 < outsz; text++) {
    unsigned char c = (unsigned char)*text;
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      out[o++] = '\\';
      out[o++] = 'x';
      out[o++] = hex[c >> 4];
      out[o++] = hex[c & 15];
    } else {
      out[o++] = (char)c;
    }
  }
  out[o] = '\0';
}

static void log_queue(int level, const char *call_id, const char *fmt, va_list ap)
{
  char raw[1024], buf[1024], cid[256];
  log_line_t *line;
  size_t n, nc = 0;
  vsnprintf(raw, sizeof raw, fmt, ap);
  log_escape(buf, sizeof buf, raw);
  if (call_id) {
    log_escape(cid, sizeof cid, call_id);
    nc = strlen(cid) + 1;
  }
  if (!log_handler_set || !luasip_S || luasip_S->closing) {
    if (call_id) {
      char both[1300];
      snprintf(both, sizeof both, "[%s] %s", cid, buf);
      log_stderr(both);
    } else {
      log_stderr(buf);
    }
    return;
  }
  if (log_queued >= LOG_QUEUE_MAX) {
    log_dropped++;
    return;
  }
  n = strlen(buf);
  line = malloc(sizeof *line + n + nc);
  if (!line) {
    log_stderr(buf);
    return;
  }
  line->next = NULL;
  line->level = level < 1 ? 1 : level > 4 ? 4 : level;
  memcpy(line->text, buf, n + 1);
  line->call_id = NULL;
  if (call_id) {
    memcpy(line->text + n + 1, cid, nc);
    line->call_id = line->text + n + 1;
  }
  *log_tail = line;
  log_tail = &line->next;
  log_queued++;
}

void luasip_log(int level, const char *fmt, ...)
{
  va_list ap;
  if (level > log_level)
    return;
  va_start(ap, fmt);
  log_queue(level, NULL, fmt, ap);
  va_end(ap);
}

void luasip_log_call(int level, sip_t const *sip, const char *fmt, ...)
{
  va_list ap;
  if (level > log_level)
    return;
  va_start(ap, fmt);
  log_queue(level, sip && sip->sip_call_id ? sip->sip_call_id->i_id : NULL, fmt, ap);
  va_end(ap);
}

static log_line_t *log_pop(void)
{
  log_line_t *line = log_head;
  if (line) {
    log_head = line->next;
    if (!log_head)
      log_tail = &log_head;
    log_queued--;
  }
  return line;
}

/* queued lines to stderr (no Lua to deliver them to) */
static void log_spill(void)
{
  log_line_t *line;
  while ((line = log_pop())) {
    log_stderr(line->text);
    free(line);
  }
  if (log_dropped) {
    fprintf(stderr, "luasip: %lu log lines dropped (queue full)\n", log_dropped);
    log_dropped = 0;
  }
}

/* Runs protected (luasip_cpcall): hands each queued line to the handler, each call
 * protected again so one failure costs only its line.  Lines logged meanwhile wait for
 * the next flush (the handler cannot make this loop endless). */
static int log_deliver(lua_State *L)
{
  size_t n = log_queued;
  lua_settop(L, 0);
  lua_pushlightuserdata(L, (void *)&LOG_HANDLER_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  if (log_dropped) {
    char buf[64];
    snprintf(buf, sizeof buf, "%lu log lines dropped (queue full)", log_dropped);
    log_dropped = 0;
    lua_pushvalue(L, 1);
    lua_pushstring(L, "warn");
    lua_pushstring(L, buf);
    if (lua_pcall(L, 2, 0, 0) != 0)
      lua_pop(L, 1);
  }
  while (n-- > 0 && log_head) {
    log_line_t *line;
    lua_pushvalue(L, 1);
    lua_pushstring(L, LOG_LEVEL_NAMES[log_head->level]);
    lua_pushstring(L, log_head->text);
    if (log_head->call_id)
      lua_pushstring(L, log_head->call_id);
    else
      lua_pushnil(L);
    line = log_pop();               /* only now: the pushes above may raise */
    if (lua_pcall(L, 3, 0, 0) != 0) {
      fprintf(stderr, "luasip: log handler failed: %s\n",
              lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error object)");
      log_stderr(line->text);
      lua_pop(L, 1);
    }
    free(line);
  }
  return 0;
}

/* Delivers the queued C log lines to the Lua handler.  Call only where Lua may be
 * entered (outside sofia frames, or inside the bridge's protection); never raises. */
void luasip_log_flush(lua_State *L)
{
  if (!log_head && !log_dropped)
    return;
  if (!log_handler_set || !luasip_S || luasip_S->closing || !lua_checkstack(L, 5)) {
    log_spill();
    return;
  }
  if (luasip_cpcall(L, log_deliver, NULL) != 0) {
    lua_pop(L, 1);
    log_spill();
  }
}

/* set_log_handler(fn(level, message, call_id) | nil): where C log lines go (nil: stderr).
 * Levels are "error", "warn", "info", "debug"; core.log_level filters before. */
static int core_set_log_handler(lua_State *L)
{
  if (!lua_isnoneornil(L, 1))
    luaL_checktype(L, 1, LUA_TFUNCTION);
  lua_settop(L, 1);
  lua_pushlightuserdata(L, (void *)&LOG_HANDLER_KEY);
  lua_pushvalue(L, 1);
  lua_rawset(L, LUA_REGISTRYINDEX);
  if (lua_isnil(L, 1))
    log_spill();
  log_handler_set = !lua_isnil(L, 1);
  return 0;
}

int luasip_in_callback(void)
{
  return luasip_S && luasip_S->depth > 0;
}

lua_State *luasip_L(void)
{
  return luasip_S->T;
}

/* ---------------------------------------------------------------- objects */

/* Gives an existing struct its userdata (on top of the stack).  Used for objects born
 * in sofia callbacks: the struct is malloc'd there, the userdata only inside the bridge's
 * protected call. */
void luasip_wrapobj(lua_State *L, lsip_obj_t *obj)
{
  lsip_obj_t **box = (lsip_obj_t **)luasip_newuserdata(L, sizeof *box);
  *box = NULL;
  luaL_getmetatable(L, obj->tname);
  lua_setmetatable(L, -2);
  /* the field cache, presized: a handler reads a few fields of each request, and
   * growing an empty table 1 -> 2 -> 4 costs an allocation each time */
  lua_createtable(L, 0, 4);
  luasip_setuv(L, -2);
  lua_pushlightuserdata(L, (void *)&OBJECTS_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, obj);
  lua_pushvalue(L, -3);
  lua_rawset(L, -3);
  lua_pop(L, 1);
  *box = obj;                       /* only now: every allocation above succeeded */
  obj->alive = 1;
  obj->born = 1;
}

/* Live C objects per class, for core.stats() (leak checks in specs and benchmarks): a
 * growable array, one slot per class name, looked up by pointer first (class names are
 * string constants) and by content second.  It lives for the process: counts stay exact
 * across lua_States.  When it cannot grow, counts go to `lost` (reported as "?"). */
typedef struct { const char *tname; long live; } class_count_t;
static class_count_t *counts;
static size_t ncounts, counts_cap;
static long lost;

static long *count_of(const char *tname)
{
  size_t i;
  for (i = 0; i < ncounts; i++)
    if (counts[i].tname == tname)
      return &counts[i].live;
  for (i = 0; i < ncounts; i++)
    if (!strcmp(counts[i].tname, tname))
      return &counts[i].live;
  if (ncounts == counts_cap) {
    size_t cap = counts_cap ? 2 * counts_cap : 16;
    class_count_t *n = realloc(counts, cap * sizeof *n);
    if (!n)
      return &lost;
    counts = n;
    counts_cap = cap;
  }
  counts[ncounts].tname = tname;
  counts[ncounts].live = 0;
  return &counts[ncounts++].live;
}

void luasip_freeobj(lsip_obj_t *obj)
{
  (*count_of(obj->tname))--;
  free(obj);
}

/* md5(s) -> lowercase hex digest (for digest authentication, RFC 2617) */
static int core_md5(lua_State *L)
{
  size_t n;
  const char *s = luaL_checklstring(L, 1, &n);
  su_md5_t ctx;
  char hex[2 * SU_MD5_DIGEST_SIZE + 1];
  su_md5_init(&ctx);
  su_md5_update(&ctx, s, n);
  su_md5_hexdigest(&ctx, hex);
  su_md5_deinit(&ctx);
  lua_pushlstring(L, hex, 2 * SU_MD5_DIGEST_SIZE);
  return 1;
}

/* random_hex(nbytes) -> hex string of nbytes random bytes (nonces, tags, ETags) */
static int core_random_hex(lua_State *L)
{
  lua_Integer n = luaL_checkinteger(L, 1);
  static const char digits[] = "0123456789abcdef";
  unsigned char buf[64];
  char hex[129];
  int i;
  if (n < 1 || n > 64)
    return luaL_argerror(L, 1, "luasip.random_hex: 1-64 bytes");
  su_randmem(buf, (size_t)n);
  for (i = 0; i < n; i++) {           /* (snprintf per byte cost ~170 instructions) */
    hex[2 * i] = digits[buf[i] >> 4];
    hex[2 * i + 1] = digits[buf[i] & 15];
  }
  lua_pushlstring(L, hex, (size_t)(2 * n));
  return 1;
}

/* stats() -> { ["luasip.request"] = live count, ... }: every class that ever had an
 * object in this process */
static int core_stats(lua_State *L)
{
  size_t i;
  lua_createtable(L, 0, (int)ncounts);
  for (i = 0; i < ncounts; i++) {
    lua_pushinteger(L, counts[i].live);
    lua_setfield(L, -2, counts[i].tname);
  }
  if (lost) {
    lua_pushinteger(L, lost);
    lua_setfield(L, -2, "?");
  }
  return 1;
}

void luasip_initobj(lsip_obj_t *obj, const char *tname, lsip_destroy_f *destroy)
{
  (*count_of(tname))++;
  obj->destroy = destroy;
  obj->tname = tname;
  obj->anchor = LUA_NOREF;
}

void *luasip_newobj(lua_State *L, size_t size, const char *tname, lsip_destroy_f *destroy)
{
  lsip_obj_t *obj = calloc(1, size);
  if (!obj)
    luaL_error(L, "%s: out of memory", tname);
  luasip_initobj(obj, tname, destroy);
  LUASIP_EMBED_TOUCH();
  /* on a memory error inside wrap the struct leaks, but nothing dangles */
  luasip_wrapobj(L, obj);
  return obj;
}

/* The box of the object at idx if it is of class tname, else NULL: luaL_testudata, with
 * the metatable compared by address when tname is the pointer the class was made with. */
static lsip_obj_t **test_box(lua_State *L, int idx, const char *tname)
{
  void *p = lua_touserdata(L, idx);
  int i, n = luasip_S ? luasip_S->nclasses : 0;
  for (i = 0; i < n; i++) {
    if (luasip_S->classes[i].tname == tname) {
      int same;
      if (!p || !lua_getmetatable(L, idx))
        return NULL;
      same = lua_topointer(L, -1) == luasip_S->classes[i].mt;
      lua_pop(L, 1);
      return same ? (lsip_obj_t **)p : NULL;
    }
  }
  return (lsip_obj_t **)luaL_testudata(L, idx, tname);
}

lsip_obj_t *luasip_testobj(lua_State *L, int idx, const char *tname)
{
  lsip_obj_t **box = test_box(L, idx, tname);
  LUASIP_EMBED_TOUCH();
  return box ? *box : NULL;
}

lsip_obj_t *luasip_checkobj(lua_State *L, int idx, const char *tname)
{
  lsip_obj_t **box = test_box(L, idx, tname);
  if (!box)
    box = (lsip_obj_t **)luaL_checkudata(L, idx, tname);   /* raises the usual error */
  LUASIP_EMBED_TOUCH();
  if (!*box)
    luaL_error(L, "attempt to use a closed %s", tname);
  return *box;
}

/* Pushes the userdata of obj, or nil when it has been collected. */
int luasip_pushobj(lua_State *L, lsip_obj_t *obj)
{
  if (!obj || !obj->alive) {
    lua_pushnil(L);
    return 0;
  }
  if (obj->anchor != LUA_NOREF) {
    lua_rawgeti(L, LUA_REGISTRYINDEX, obj->anchor);
    return 1;
  }
  lua_pushlightuserdata(L, (void *)&OBJECTS_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  lua_pushlightuserdata(L, obj);
  lua_rawget(L, -2);
  lua_remove(L, -2);
  return !lua_isnil(L, -1);
}

void luasip_anchor(lua_State *L, lsip_obj_t *obj, int idx)
{
  if (obj->anchor != LUA_NOREF)
    return;
  lua_pushvalue(L, idx);
  obj->anchor = luaL_ref(L, LUA_REGISTRYINDEX);
}

void luasip_unanchor(lua_State *L, lsip_obj_t *obj)
{
  if (obj->anchor == LUA_NOREF)
    return;
  luaL_unref(L, LUA_REGISTRYINDEX, obj->anchor);
  obj->anchor = LUA_NOREF;
}

void luasip_defer(lsip_obj_t *obj)
{
  if (obj->queued)
    return;
  LUASIP_EMBED_TOUCH();
  obj->queued = 1;
  obj->next = luasip_S->deferred;
  luasip_S->deferred = obj;
}

/* Destroys what __gc queued.  Called only outside sofia frames (after su_root_step). */
void luasip_drain(void)
{
  lsip_obj_t *obj;
  while ((obj = luasip_S->deferred)) {
    luasip_S->deferred = obj->next;
    obj->queued = 0;
    obj->destroy(obj);
  }
}

/* __gc of every class: never raises, never calls sofia, never calls Lua. */
int luasip_obj__gc(lua_State *L)
{
  lsip_obj_t **box = (lsip_obj_t **)lua_touserdata(L, 1);
  if (box && *box) {
    (*box)->alive = 0;
    luasip_defer(*box);
    *box = NULL;
  }
  return 0;
}

/* The uservalue of every object is its cache of computed fields (the message is
 * immutable), and holds under OBJSTATE_KEY the private state table of the Lua layer
 * (core.state).  Users never write to an object: fields are read-only, and their own
 * values go in obj.data. */
static const char OBJSTATE_KEY = 's';

/* __index: methods, then Lua getters of the class, then cached fields, then computed
 * fields (cached). */
static int obj__index(lua_State *L)
{
  lua_CFunction fields = lua_tocfunction(L, lua_upvalueindex(3));
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(1));
  if (!lua_isnil(L, -1))
    return 1;
  lua_pop(L, 1);
  lua_pushvalue(L, 2);
  lua_rawget(L, lua_upvalueindex(2));
  if (!lua_isnil(L, -1)) {          /* a getter of the Lua layer: getter(obj) */
    lua_pushvalue(L, 1);
    lua_call(L, 1, 1);
    return 1;
  }
  lua_pop(L, 1);
  luasip_getuv(L, 1);
  if (lua_isnil(L, -1) || lua_type(L, 2) != LUA_TSTRING)
    return 1;
  lua_pushvalue(L, 2);
  lua_rawget(L, -2);
  if (!lua_isnil(L, -1) || !fields)
    return 1;
  lua_settop(L, 3);                 /* ud key uv */
  /* called directly, not through lua_call: a fields function reads only its arguments
   * 1 and 2 (ud, key), which are ours too, and pushes its result (~300 instructions
   * less per field computed) */
  if (fields(L) < 1) {
    lua_settop(L, 3);
    lua_pushnil(L);
  }
  if (!lua_isnil(L, -1)) {          /* cache: the message is immutable */
    lua_pushvalue(L, 2);
    lua_pushvalue(L, -2);
    lua_rawset(L, 3);
  }
  return 1;
}

/* Objects are read-only for their users: a write is a programmer error. */
static int obj__newindex(lua_State *L)
{
  const char *tname;
  lua_getfield(L, lua_upvalueindex(1), "__name");
  tname = lua_tostring(L, -1);
  if (lua_type(L, 2) == LUA_TSTRING)
    return luaL_error(L, "%s: field '%s' is read-only (keep your own values in "
                      "obj.data)", tname, lua_tostring(L, 2));
  return luaL_error(L, "%s: fields are read-only (keep your own values in obj.data)",
                    tname);
}

/* state(obj [, create]) -> the private state table of obj for the Lua layer, created on
 * first use unless create is false (then nil until something made it) */
static int core_state(lua_State *L)
{
  luaL_checktype(L, 1, LUA_TUSERDATA);
  luasip_getuv(L, 1);
  if (!lua_istable(L, -1)) {
    lua_pushnil(L);
    return 1;
  }
  lua_pushlightuserdata(L, (void *)&OBJSTATE_KEY);
  lua_rawget(L, -2);
  if (lua_isnil(L, -1) && !(lua_isboolean(L, 2) && !lua_toboolean(L, 2))) {
    lua_pop(L, 1);
    lua_newtable(L);
    lua_pushlightuserdata(L, (void *)&OBJSTATE_KEY);
    lua_pushvalue(L, -2);
    lua_rawset(L, -4);
  }
  return 1;
}

static int obj__tostring(lua_State *L)
{
  lsip_obj_t **box = (lsip_obj_t **)lua_touserdata(L, 1);
  lua_getfield(L, lua_upvalueindex(1), "__name");
  if (box && *box)
    lua_pushfstring(L, "%s: %p", lua_tostring(L, -1), (void *)*box);
  else
    lua_pushfstring(L, "%s (closed)", lua_tostring(L, -1));
  return 1;
}

void luasip_newclass(lua_State *L, const char *tname, const luaL_Reg *methods,
                     lua_CFunction fields)
{
  luaL_newmetatable(L, tname);
  if (luasip_S && luasip_S->nclasses < LUASIP_CLASSES) {
    luasip_S->classes[luasip_S->nclasses].tname = tname;
    luasip_S->classes[luasip_S->nclasses].mt = lua_topointer(L, -1);
    luasip_S->nclasses++;
  }
  lua_pushstring(L, tname);
  lua_setfield(L, -2, "__name");
  lua_pushcfunction(L, luasip_obj__gc);
  lua_setfield(L, -2, "__gc");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, obj__tostring, 1);
  lua_setfield(L, -2, "__tostring");
  lua_pushvalue(L, -1);
  lua_pushcclosure(L, obj__newindex, 1);
  lua_setfield(L, -2, "__newindex");
  lua_newtable(L);
  luasip_setfuncs(L, methods);
  lua_pushvalue(L, -1);
  lua_setfield(L, -3, "methods");
  lua_newtable(L);                  /* the C methods, untouched by the Lua layer */
  luasip_setfuncs(L, methods);
  lua_setfield(L, -3, "cmethods");
  lua_newtable(L);                  /* getters, filled by the class's Lua module */
  lua_pushvalue(L, -1);
  lua_setfield(L, -4, "getters");
  if (fields)
    lua_pushcfunction(L, fields);
  else
    lua_pushnil(L);
  lua_pushcclosure(L, obj__index, 3);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}

/* Adds functions to the methods table of an existing class. */
void luasip_add_methods(lua_State *L, const char *tname, const luaL_Reg *l)
{
  luaL_getmetatable(L, tname);
  lua_getfield(L, -1, "methods");
  luasip_setfuncs(L, l);
  lua_getfield(L, -2, "cmethods");
  luasip_setfuncs(L, l);
  lua_pop(L, 3);
}

/* class(tname) -> methods, getters, cmethods: the tables of a class, for the one Lua
 * module that owns the class (lua/luasip/<class>.lua); cmethods are the C functions as
 * registered, so the module can rebuild its methods table on every (re)load */
static int core_class(lua_State *L)
{
  luaL_getmetatable(L, luaL_checkstring(L, 1));
  if (!lua_istable(L, -1))
    return luaL_error(L, "luasip.core.class: no class %s", lua_tostring(L, 1));
  lua_getfield(L, -1, "methods");
  lua_getfield(L, -2, "getters");
  lua_getfield(L, -3, "cmethods");
  return 3;
}

/* The fail tuple: nil, message, code. */
int luasip_fail(lua_State *L, const char *msg, const char *code)
{
  lua_pushnil(L);
  lua_pushstring(L, msg);
  lua_pushstring(L, code ? code : msg);
  return 3;
}

/* ---------------------------------------------------------------- loop */

static void check_not_in_callback(lua_State *L, const char *fname)
{
  if (luasip_S->depth > 0)
    luaL_error(L, "%s: called from a handler (the loop is already running)", fname);
}

/* step(ms) -> ms to the next timer (or -1) */
static int core_step(lua_State *L)
{
  lua_Integer ms = luaL_optinteger(L, 1, 0);
  su_duration_t next;
  check_not_in_callback(L, "luasip.step");
  luasip_watchdog_arm();
  luasip_drain();
  next = su_root_step(luasip_S->root, ms < 0 ? 0 : (su_duration_t)ms);
  luasip_drain();
  luasip_log_flush(L);
  luasip_embed_stepped();
  lua_pushinteger(L, next == SU_WAIT_FOREVER ? -1 : (lua_Integer)next);
  return 1;
}

/* SIGINT and SIGTERM stop run() on the first signal (a second one, while the first is
 * still pending, has its default action): while run() turns the loop, their
 * handler records the signal and writes a byte to a pipe the su_root watches, so the
 * wait returns at once (no window between checking the flag and waiting). */
static volatile sig_atomic_t run_signal;
static int run_pipe[2] = { -1, -1 };

static void run_on_signal(int sig)
{
  int e = errno;
  if (run_signal) {
    /* a second signal before the loop took the first (Lua stuck in a loop the
     * watchdog cannot interrupt, e.g. one LuaJIT compiled): the default action */
    signal(sig, SIG_DFL);
    raise(sig);
    return;
  }
  run_signal = sig;
  if (run_pipe[1] >= 0 && write(run_pipe[1], "", 1) < 0)
    (void)0;                        /* full pipe: a wakeup is pending anyway */
  errno = e;
}

static int run_wakeup(su_root_magic_t *m, su_wait_t *w, su_wakeup_arg_t *arg)
{
  char buf[64];
  (void)m; (void)w; (void)arg;
  while (read(run_pipe[0], buf, sizeof buf) > 0)
    ;
  return 0;
}

typedef struct run_signals {
  struct sigaction old_int, old_term;
  su_wait_t wait[1];
  int reg;
} run_signals_t;

static void run_signals_on(run_signals_t *rs)
{
  struct sigaction sa;
  rs->reg = -1;
  run_signal = 0;
  if (pipe(run_pipe) == 0) {
    int i;
    for (i = 0; i < 2; i++) {
      fcntl(run_pipe[i], F_SETFL, fcntl(run_pipe[i], F_GETFL) | O_NONBLOCK);
      fcntl(run_pipe[i], F_SETFD, FD_CLOEXEC);
    }
    if (su_wait_create(rs->wait, run_pipe[0], SU_WAIT_IN) == 0)
      rs->reg = su_root_register(luasip_S->root, rs->wait, run_wakeup, NULL, 0);
  }
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = run_on_signal;
  sigemptyset(&sa.sa_mask);
  sa.sa_flags = 0;                  /* no SA_RESTART: a blocked wait returns EINTR */
  /* a signal the process was started ignoring (a background job's SIGINT) stays
   * ignored, as shells and most daemons expect */
  sigaction(SIGINT, NULL, &rs->old_int);
  sigaction(SIGTERM, NULL, &rs->old_term);
  if (rs->old_int.sa_handler != SIG_IGN)
    sigaction(SIGINT, &sa, NULL);
  if (rs->old_term.sa_handler != SIG_IGN)
    sigaction(SIGTERM, &sa, NULL);
}

static void run_signals_off(run_signals_t *rs)
{
  sigaction(SIGINT, &rs->old_int, NULL);
  sigaction(SIGTERM, &rs->old_term, NULL);
  if (rs->reg >= 0)
    su_root_deregister(luasip_S->root, rs->reg);
  if (run_pipe[0] >= 0) {
    close(run_pipe[0]);
    close(run_pipe[1]);
    run_pipe[0] = run_pipe[1] = -1;
  }
}

/* run() -> true (after stop()) | true, "SIGINT" | true, "SIGTERM": steps until stop()
 * or the first SIGINT/SIGTERM; the previous signal handlers are back when it returns */
static int core_run(lua_State *L)
{
  run_signals_t rs;
  int sig;
  check_not_in_callback(L, "luasip.run");
  if (luasip_S->running)
    return luaL_error(L, "luasip.run: already running");
  luasip_S->running = 1;
  luasip_S->stopping = 0;
  run_signals_on(&rs);
  luasip_watchdog_arm();
  while (!luasip_S->stopping && !run_signal) {
    struct timespec t0, t1;
    su_duration_t next;
    unsigned long entries = luasip_S->entries;
    luasip_drain();
    clock_gettime(CLOCK_MONOTONIC, &t0);
    next = su_root_step(luasip_S->root, 1000);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    luasip_drain();
    luasip_log_flush(L);
    /* su_root rounds timer waits down to whole milliseconds: a timer due in under 1 ms
     * makes it poll with a zero timeout until the timer is due, spinning a core
     * (seen as ~13,000 empty epoll_wait calls per second with nta's transaction timers).
     * When a step did nothing (no Lua event, under 20 us) and a timer is that close,
     * sleep that fraction instead; a step that handled a message never sleeps. */
    if (next == 0 && entries == luasip_S->entries && !run_signal &&
        (t1.tv_sec - t0.tv_sec) * 1000000000L + (t1.tv_nsec - t0.tv_nsec) < 20000) {
      struct timespec nap = { 0, 200000 };
      nanosleep(&nap, NULL);
    }
  }
  sig = run_signal;
  run_signal = 0;
  run_signals_off(&rs);
  luasip_drain();
  luasip_log_flush(L);
  luasip_S->running = 0;
  luasip_S->stopping = 0;
  lua_pushboolean(L, 1);
  if (!sig)
    return 1;
  lua_pushstring(L, sig == SIGINT ? "SIGINT" : "SIGTERM");
  return 2;
}

static int core_stop(lua_State *L)
{
  luasip_S->stopping = 1;
  lua_pushboolean(L, 1);
  return 1;
}

/* time() -> wall-clock seconds since the epoch, with fractions (shared between
 * processes, unlike now()) */
static int core_time(lua_State *L)
{
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

/* allocator() -> "jemalloc" | "mimalloc" | "tcmalloc" | "glibc": whose malloc the
 * process runs on (sofia-sip allocates through it; README: Memory allocator) */
static int core_allocator(lua_State *L)
{
  static const struct { const char *sym, *name; } probes[] = {
    { "mallctl", "jemalloc" }, { "mi_malloc", "mimalloc" }, { "tc_malloc", "tcmalloc" },
  };
  const char *name = "glibc";
  size_t i;
  for (i = 0; i < sizeof probes / sizeof probes[0]; i++)
    if (dlsym(RTLD_DEFAULT, probes[i].sym)) {
      name = probes[i].name;
      break;
    }
  lua_pushstring(L, name);
  return 1;
}

/* call_id_hash(s) -> integer: the slot hash of agent:spread and luasip.cluster */
static int core_call_id_hash(lua_State *L)
{
  lua_pushinteger(L, (lua_Integer)luasip_spread_hash(luaL_checkstring(L, 1)));
  return 1;
}

/* copy_value(v) -> a deep copy of a serialisable value (strings, numbers, booleans and
 * tables of them keyed by strings or numbers, nested at most COPY_DEPTH deep) | nil, why:
 * the memory store's copy in and out (luasip.store.memory), ~4x faster than in Lua */
#define COPY_DEPTH 32
typedef struct {
  const char *why;  /* a format with one %s (a type name) or none */
  const char *type;
} copy_err;

/* pushes a copy of the value at absolute index idx, or pushes nothing and fills e */
static int copy_value(lua_State *L, int idx, int depth, copy_err *e)
{
  int t = lua_type(L, idx), c;
  if (t == LUA_TSTRING || t == LUA_TNUMBER || t == LUA_TBOOLEAN) {
    lua_pushvalue(L, idx);
    return 1;
  }
  if (t != LUA_TTABLE) {
    e->why = "values must be strings, numbers, booleans or tables, got %s";
    e->type = lua_typename(L, t);
    return 0;
  }
  if (depth > COPY_DEPTH) {
    e->why = "value nested too deep (a cycle?)";
    return 0;
  }
  luaL_checkstack(L, 6, "luasip.store: value nested too deep");
  {
    /* sized up front: growing a table key by key rehashes it at every power of two */
    int narr = (int)luasip_rawlen(L, idx), nrec = 0;
    lua_pushnil(L);
    while (lua_next(L, idx)) {
      nrec++;
      lua_pop(L, 1);
    }
    lua_createtable(L, narr, nrec > narr ? nrec - narr : 0);
  }
  c = lua_gettop(L);
  lua_pushnil(L);
  while (lua_next(L, idx)) {            /* c, key, value */
    int kt = lua_type(L, -2);
    if (kt != LUA_TSTRING && kt != LUA_TNUMBER) {
      e->why = "table keys must be strings or numbers, got %s";
      e->type = lua_typename(L, kt);
      lua_settop(L, c - 1);
      return 0;
    }
    lua_pushvalue(L, c + 1);            /* c, key, value, key */
    if (!copy_value(L, c + 2, depth + 1, e)) {
      lua_settop(L, c - 1);
      return 0;
    }
    lua_rawset(L, c);                   /* c, key, value (key, copy set) */
    lua_pop(L, 1);
  }
  return 1;
}

static int core_copy_value(lua_State *L)
{
  copy_err e = {NULL, NULL};
  luaL_checkany(L, 1);
  lua_settop(L, 1);
  if (copy_value(L, 1, 1, &e))
    return 1;
  lua_pushnil(L);
  lua_pushfstring(L, e.why, e.type);
  return 2;
}

/* now() -> seconds (monotonic, with fractions) */
static int core_now(lua_State *L)
{
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  lua_pushnumber(L, (lua_Number)ts.tv_sec + (lua_Number)ts.tv_nsec / 1e9);
  return 1;
}

static int core_log_level(lua_State *L)
{
  int old = log_level;
  if (!lua_isnoneornil(L, 1))
    log_level = (int)luaL_checkinteger(L, 1);
  lua_pushinteger(L, old);
  return 1;
}

/* ---------------------------------------------------------------- timers */

typedef struct lsip_timer {
  lsip_obj_t obj;
  su_timer_t *t;
} lsip_timer_t;

static void timer_destroy(lsip_obj_t *obj)
{
  lsip_timer_t *t = (lsip_timer_t *)obj;
  if (t->t)
    su_timer_destroy(t->t);
  luasip_freeobj(&t->obj);
}

static void timer_fired(su_root_magic_t *magic, su_timer_t *st, su_timer_arg_t *arg)
{
  lsip_timer_t *t = (lsip_timer_t *)arg;
  (void)magic; (void)st;
  /* the anchor is dropped after the call, so the callback still sees the object */
  luasip_bridge("timer", &t->obj, NULL);
  luasip_unanchor(luasip_S->T, &t->obj);
}

/* timer(seconds) -> timer: fires once, calling the dispatcher with ("timer", t) */
static int core_timer(lua_State *L)
{
  lua_Number s = luaL_checknumber(L, 1);
  lsip_timer_t *t;
  if (s < 0)
    return luaL_argerror(L, 1, "luasip.timer: seconds must be >= 0");
  t = luasip_newobj(L, sizeof *t, LUASIP_TIMER, timer_destroy);
  t->t = su_timer_create(su_root_task(luasip_S->root), 0);
  if (!t->t || su_timer_set_interval(t->t, timer_fired, t, (su_duration_t)(s * 1000)) < 0)
    return luaL_error(L, "luasip.timer: cannot create timer");
  luasip_anchor(L, &t->obj, -1);
  return 1;
}

/* timer:cancel() -> true (idempotent) */
static int timer_cancel(lua_State *L)
{
  lsip_timer_t *t = (lsip_timer_t *)luasip_testobj(L, 1, LUASIP_TIMER);
  if (!t && !luaL_testudata(L, 1, LUASIP_TIMER))
    luaL_checkudata(L, 1, LUASIP_TIMER);
  if (t && t->t && t->obj.anchor != LUA_NOREF) {
    su_timer_reset(t->t);
    luasip_unanchor(L, &t->obj);
  }
  lua_pushboolean(L, 1);
  return 1;
}

static int timer_pending(lua_State *L)
{
  lsip_timer_t *t = (lsip_timer_t *)luasip_testobj(L, 1, LUASIP_TIMER);
  lua_pushboolean(L, t && t->obj.anchor != LUA_NOREF);
  return 1;
}

static const luaL_Reg timer_methods[] = {
  {"cancel", timer_cancel},
  {"pending", timer_pending},
  {NULL, NULL}
};

/* ---------------------------------------------------------------- module */

static const luaL_Reg core_funcs[] = {
  {"step", core_step},
  {"pollfd", luasip_embed_pollfd},
  {"timeout", luasip_embed_timeout},
  {"run", core_run},
  {"stop", core_stop},
  {"now", core_now},
  {"allocator", core_allocator},
  {"time", core_time},
  {"timer", core_timer},
  {"log_level", core_log_level},
  {"set_log_handler", core_set_log_handler},
  {"set_dispatcher", luasip_set_dispatcher},
  {"agent", luasip_agent_new},
  {"class", core_class},
  {"state", core_state},
  {"stats", core_stats},
  {"spawn", luasip_process_spawn},
  {"wait", luasip_process_wait},
  {"kill", luasip_process_kill},
  {"getpid", luasip_process_getpid},
  {"md5", core_md5},
  {"call_id_hash", core_call_id_hash},
  {"copy_value", core_copy_value},
  {"uri_parse", luasip_uri_parse},
  {"uri_aor", luasip_uri_aor},
  {"uri_user", luasip_uri_user},
  {"uri_equal", luasip_uri_equal},
  {"sdp_parse", luasip_sdp_parse},
  {"sdp_build", luasip_sdp_build},
  {"random_hex", core_random_hex},
  {"stream_connect", luasip_stream_connect},
  {"dns_resolve", luasip_dns_resolve},
  {"rtp_open", luasip_rtp_open},
  {"media_stats", luasip_media_stats},
  {"metrics_listen", luasip_metrics_listen},
  {"metrics_text", luasip_metrics_text},
  {"metrics_extra", luasip_metrics_extra},
  {"metrics_handler", luasip_metrics_handler},
  {"cpu_limit", luasip_cpu_limit},
  {"memory_limit", luasip_memory_limit},
  {"resume_begin", luasip_resume_begin},
  {"resume_end", luasip_resume_end},
  {"catch_signal", luasip_catch_signal},
  {NULL, NULL}
};

/* The module state is one per process (sofia's su_root is driven by one loop) and
 * belongs to the lua_State that opened it, recognised by the sentinel userdata it keeps
 * in its registry.  Another lua_State may open the module only after that one is closed. */
static const char STATE_KEY = 's';  /* registry: the sentinel userdata */
static void *state_owner;           /* that sentinel: identifies the owning lua_State */

/* at the close of the state: the counters go too when nothing is left to count */
static void counts_free(void)
{
  size_t i;
  for (i = 0; i < ncounts; i++)
    if (counts[i].live)
      return;
  free(counts);
  counts = NULL;
  ncounts = counts_cap = 0;
}

static void state_free(void)
{
  if (luasip_S->root)
    su_root_destroy(luasip_S->root);
  su_home_deinit(luasip_S->home);
  free(luasip_S);
  luasip_S = NULL;
  state_owner = NULL;
  su_deinit();
  counts_free();
}

/* Finalizer of the sentinel (lua_close): created before any luasip object, so it runs
 * after all of theirs.  Destroys what they queued, then the loop.  The one place where a
 * __gc calls sofia: at lua_close no sofia frame can be active. */
static int state__gc(lua_State *L)
{
  if (!luasip_S || lua_touserdata(L, 1) != state_owner)
    return 0;
  luasip_S->closing = 1;
  luasip_watchdog_disarm();
  luasip_signals_close();
  luasip_drain();
  luasip_media_close();             /* the prompt cache: no stream is left */
  log_spill();                      /* Lua is going away: what is left goes to stderr */
  log_handler_set = 0;
  luasip_embed_close();
  state_free();
  luasip_memcap_close();
  return 0;
}

/* 1 when L's registry holds the sentinel of the open module state */
static int state_owned_by(lua_State *L)
{
  void *p;
  lua_pushlightuserdata(L, (void *)&STATE_KEY);
  lua_rawget(L, LUA_REGISTRYINDEX);
  p = lua_touserdata(L, -1);
  lua_pop(L, 1);
  return p && p == state_owner;
}

/* Opens the loop and pushes nothing; returns the sentinel (owner once all is set up) */
static void *state_open(lua_State *L)
{
  void *sentinel;
  if (su_init() != 0)
    luaL_error(L, "luasip.core: su_init failed");
  luasip_S = calloc(1, sizeof *luasip_S);
  if (!luasip_S) {
    su_deinit();
    luaL_error(L, "luasip.core: out of memory");
  }
  su_home_init(luasip_S->home);
  luasip_S->root = su_root_create(NULL);
  if (!luasip_S->root) {
    state_free();
    luaL_error(L, "luasip.core: cannot create su_root");
  }
  su_root_threading(luasip_S->root, 0);
  /* sofia's own debug output stays quiet unless NTA_DEBUG / TPORT_DEBUG ask for it;
   * luasip reports failures through return values and its logger */
  su_log_soft_set_level(nta_log, 0);
  su_log_soft_set_level(tport_log, 0);
  /* the sentinel: its __gc at lua_close ends the module state */
  sentinel = lua_newuserdata(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, state__gc);
  lua_setfield(L, -2, "__gc");
  lua_setmetatable(L, -2);
  lua_pushlightuserdata(L, (void *)&STATE_KEY);
  lua_pushvalue(L, -2);
  lua_rawset(L, LUA_REGISTRYINDEX);
  lua_pop(L, 1);
  return sentinel;
}

/* The Lua that loaded us, told by the API symbols only it exports ("Lua 5.4"), and the
 * --lua-version luarocks wants for it. */
static const char *host_lua(const char **rocks)
{
  static const struct { const char *sym, *name, *rocks; } probes[] = {
    { "luaJIT_setmode", "LuaJIT", "5.1" },
    { "lua_newuserdatauv", "Lua 5.4", "5.4" },
    { "lua_rotate", "Lua 5.3", "5.3" },
    { "lua_version", "Lua 5.2", "5.2" },
    { "lua_objlen", "Lua 5.1", "5.1" },
  };
  void *self = dlopen(NULL, RTLD_LAZY);
  size_t i;
  *rocks = "<your Lua version>";
  if (!self)
    return "another Lua";
  for (i = 0; i < sizeof probes / sizeof probes[0]; i++) {
    if (dlsym(self, probes[i].sym)) {
      *rocks = probes[i].rocks;
      dlclose(self);
      return probes[i].name;
    }
  }
  dlclose(self);
  return "another Lua";
}

/* Refuses a host Lua this build cannot work with, before touching any of its API but
 * luaL_error (the same in every version). */
static void check_lua_version(lua_State *L)
{
  if (LUASIP_API_MISSING()) {
    const char *rocks, *host = host_lua(&rocks);
    luaL_error(L, "luasip.core was built for " LUASIP_BUILT_FOR " but loaded by %s: "
               "rebuild with luarocks --lua-version=%s make", host, rocks);
  }
  LUASIP_CHECKVERSION(L);
}

__attribute__((visibility("default"))) int luaopen_luasip_core(lua_State *L);

/* Idempotent in one lua_State: busted and package.loaded resets may require the module
 * again; the loop, the bridge thread and the object table are created once per state.
 * A second lua_State is refused while the first is open (the state is per process). */
int luaopen_luasip_core(lua_State *L)
{
  check_lua_version(L);
  if (luasip_S && state_owner && !state_owned_by(L))
    return luaL_error(L, "luasip.core: already loaded by another Lua state in this "
                      "process; luasip supports one Lua state per process");
  if (luasip_S && !state_owner)
    state_free();                   /* a previous open failed half-way */
  if (!luasip_S) {
    void *sentinel = state_open(L);
    lua_pushlightuserdata(L, (void *)&OBJECTS_KEY);
    lua_newtable(L);
    lua_newtable(L);
    lua_pushliteral(L, "v");
    lua_setfield(L, -2, "__mode");
    lua_setmetatable(L, -2);
    lua_rawset(L, LUA_REGISTRYINDEX);
    luasip_newclass(L, LUASIP_TIMER, timer_methods, NULL);
    luasip_bridge_open(L);
    luasip_message_open(L);
    luasip_agent_open(L);
    luasip_request_open(L);
    luasip_client_open(L);
    luasip_dialog_open(L);
    luasip_proxy_open(L);
    luasip_front_open(L);
    luasip_stream_open(L);
    luasip_dns_open(L);
    luasip_media_open(L);
    luasip_metrics_open(L);
    /* only now: a memory error above leaves the state unowned, and the next require
     * (in any lua_State) starts afresh */
    state_owner = sentinel;
  }
  luasip_newlib(L, core_funcs);
  lua_pushstring(L, nta_agent_version(NULL) ? nta_agent_version(NULL) : "unknown");
  lua_setfield(L, -2, "sofia_version");
  return 1;
}
