local H = require "spec.helper"

-- luarocks make installs the module from luasip-scm-1.rockspec into a temporary tree
-- (offline: the only dependency is the Lua VM), and the installed module works from there.
-- Under LuaJIT the rock is built for Lua 5.1 against LuaJIT's headers.
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
local LUA_VERSION = FLAVOUR == "luajit" and "5.1" or FLAVOUR
local EXTRA = FLAVOUR == "luajit" and { "LUA_INCDIR=/usr/include/luajit-2.1" } or {}

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

local has_luarocks = sh("command -v luarocks >/dev/null") == 0

describe("luasip-scm-1.rockspec", function()
  (has_luarocks and it or pending)("passes luarocks lint", function()
    local rc, out = sh("timeout 60 luarocks lint luasip-scm-1.rockspec")
    assert.equal(0, rc, out)
  end);

  (has_luarocks and it or pending)("installs with luarocks make into a tree that loads", function()
    local tree = os.tmpname()
    os.remove(tree)
    finally(function() os.execute("rm -rf " .. H.shquote(tree)) end)
    local rc, out = sh(("timeout 300 luarocks --lua-version %s --tree %s make %s %s"):format(
      LUA_VERSION, H.shquote(tree), "luasip-scm-1.rockspec", table.concat(EXTRA, " ")))
    assert.equal(0, rc, out)
    assert.matches("luasip scm%-1 is now installed", out)
    -- only the tree on the paths, run from elsewhere: nothing can come from the work tree
    local probe = table.concat({
      ("package.path = %q; package.cpath = %q"):format(
        tree .. "/share/lua/" .. LUA_VERSION .. "/?.lua;"
          .. tree .. "/share/lua/" .. LUA_VERSION .. "/?/init.lua",
        tree .. "/lib/lua/" .. LUA_VERSION .. "/?.so"),
      'local sip = require "luasip"',
      'assert(sip.agent{ listen = { "sip:127.0.0.1:0" } }):close()',
      'print("loaded " .. sip._VERSION .. " with " .. package.searchpath("luasip.core", package.cpath))',
    }, "\n")
    rc, out = sh(("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_5_4 -u LUA_CPATH_5_4 "
      .. "timeout 30 %s -e %s"):format(H.shquote(H.interpreter()), H.shquote(probe)))
    assert.equal(0, rc, out)
    assert.matches("loaded luasip [%d.]+ with " .. tree:gsub("%p", "%%%0")
      .. "/lib/lua/" .. LUA_VERSION:gsub("%.", "%%.") .. "/luasip/core%.so", out)
  end)
end)
