local H = require "spec.helper"

-- The module state is one per process: a second lua_State is refused while the first is
-- open, and accepted once it is closed.  Checked with a tiny C host compiled here.
local HOST = [[
#include <stdio.h>
#include <string.h>
#include <lua.h>
#include <lauxlib.h>
#include <lualib.h>

static int run(lua_State *L, const char *code)
{
  if (luaL_dostring(L, code) != 0) {
    printf("error: %s\n", lua_tostring(L, -1));
    lua_pop(L, 1);
    return -1;
  }
  return 0;
}

int main(void)
{
  lua_State *a = luaL_newstate(), *b = luaL_newstate();
  luaL_openlibs(a);
  luaL_openlibs(b);
  if (run(a, "core = require 'luasip.core'; assert(core.step(0))") != 0)
    return 1;
  if (run(a, "package.loaded['luasip.core'] = nil; assert(require('luasip.core').step(0))"))
    return 2;                                 /* same state: idempotent */
  if (run(b, "require 'luasip.core'") == 0)   /* prints the error */
    return 3;
  lua_close(a);
  if (run(b, "local sip = require 'luasip'\n"
             "local a = assert(sip.agent{ listen = { 'sip:127.0.0.1:0' } })\n"
             "a:on('OPTIONS', function(req) req:reply(200) end)\n"
             "local res\n"
             "sip.spawn(function() res = a:request{ method = 'OPTIONS', uri = a:contact() } end)\n"
             "local t0 = sip.now()\n"
             "while not res and sip.now() - t0 < 5 do sip.step(10) end\n"
             "assert(res and res.status == 200, 'no 200 in the second state')\n"
             "a:close()\n"
             "print('second state: ' .. res.status)") != 0)
    return 4;
  lua_close(b);
  return 0;
}
]]

local function capture(cmd)
  local p = io.popen(cmd .. " 2>&1; echo rc=$?")
  local out = p:read("*a")
  p:close()
  return out
end

local function can_build()
  return os.execute("command -v cc >/dev/null 2>&1 && pkg-config --exists lua5.4") and true
end

describe("luasip.core module state", function()
  (can_build() and it or pending)("refuses a second lua_State until the first is closed",
  function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. H.shquote(dir)))
    local ok, err = pcall(function()
      local f = assert(io.open(dir .. "/host.c", "w"))
      f:write(HOST)
      f:close()
      local out = capture(("cc -o %s/host %s/host.c $(pkg-config --cflags --libs lua5.4)")
        :format(H.shquote(dir), H.shquote(dir)))
      assert.matches("rc=0%s*$", out)
      out = capture(("env -u LUA_PATH_5_4 -u LUA_CPATH_5_4 LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
        .. "LUA_CPATH='build/5.4/?.so;;' timeout 30 %s/host"):format(H.shquote(dir)))
      assert.matches("error: [^\n]*luasip.core: already loaded by another Lua state in this "
        .. "process; luasip supports one Lua state per process", out)
      assert.matches("second state: 200", out, 1, true)
      assert.matches("rc=0%s*$", out)
    end)
    os.execute("rm -rf " .. H.shquote(dir))
    assert(ok, err)
  end)
end)
