local H = require "spec.helper"

-- The rockspecs: luarocks make installs the module from luasip-scm-1.rockspec into a
-- temporary tree, and the source rock of the release (luasip-0.1.0-1.rockspec, packed by
-- luarocks pack from this checkout: scripts/pack-rock.sh) installs into a clean tree
-- without the network; the installed module works from there in a child interpreter.
-- Under LuaJIT the rocks are built for Lua 5.1 (LuaJIT's ABI).
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
local LUA_VERSION = FLAVOUR == "luajit" and "5.1" or FLAVOUR
local EXTRA = FLAVOUR == "luajit" and { "LUA_INCDIR=/usr/include/luajit-2.1" } or {}
local RELEASE = "0.1.0"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

local has_luarocks = sh("command -v luarocks >/dev/null") == 0
local has_git = sh("command -v git >/dev/null && git rev-parse --git-dir >/dev/null") == 0
-- without a network namespace (not root) the install still needs no network; with one,
-- the spec proves it
local offline = sh("timeout 10 unshare -n true") == 0 and "unshare -n " or ""

local function tmpdir()
  local d = os.tmpname()
  os.remove(d)
  assert(os.execute("mkdir -p " .. H.shquote(d)))
  return d
end

-- requires luasip from `tree` alone in a child interpreter started from /, makes an agent;
-- returns the child's output: "loaded <_VERSION> with <path of luasip.core>"
local function load_from(tree)
  local probe = table.concat({
    ("package.path = %q; package.cpath = %q"):format(
      tree .. "/share/lua/" .. LUA_VERSION .. "/?.lua;"
        .. tree .. "/share/lua/" .. LUA_VERSION .. "/?/init.lua",
      tree .. "/lib/lua/" .. LUA_VERSION .. "/?.so"),
    'local sip = require "luasip"',
    'assert(sip.agent{ listen = { "sip:127.0.0.1:0" } }):close()',
    -- package.searchpath is 5.2+ (and LuaJIT)
    'local so = package.cpath:gsub("%?", "luasip/core")',
    'assert(io.open(so)):close()',
    'print("loaded " .. sip._VERSION .. " with " .. so)',
  }, "\n")
  local rc, out = sh(("cd / && env -u LUA_PATH -u LUA_CPATH -u LUA_PATH_%s -u LUA_CPATH_%s "
    .. "timeout 30 %s -e %s"):format(LUA_VERSION:gsub("%.", "_"), LUA_VERSION:gsub("%.", "_"),
    H.shquote(H.interpreter()), H.shquote(probe)))
  assert.equal(0, rc, out)
  return out
end

local function escaped(s) return (s:gsub("%p", "%%%0")) end

describe("luasip rockspecs", function()
  for _, rockspec in ipairs{ "luasip-scm-1.rockspec", "luasip-" .. RELEASE .. "-1.rockspec" } do
    (has_luarocks and it or pending)(rockspec .. " passes luarocks lint", function()
      local rc, out = sh("timeout 60 luarocks lint " .. rockspec)
      assert.equal(0, rc, out)
    end)
  end

  (has_luarocks and it or pending)("installs with luarocks make into a tree that loads", function()
    local tree = tmpdir()
    finally(function() os.execute("rm -rf " .. H.shquote(tree)) end)
    local rc, out = sh(("timeout 300 luarocks --lua-version %s --tree %s make %s %s"):format(
      LUA_VERSION, H.shquote(tree), "luasip-scm-1.rockspec", table.concat(EXTRA, " ")))
    assert.equal(0, rc, out)
    assert.matches("luasip scm%-1 is now installed", out)
    assert.matches("loaded luasip [%d.]+ with " .. escaped(tree) .. "/lib/lua/"
      .. escaped(LUA_VERSION) .. "/luasip/core%.so", load_from(tree))
  end);

  (has_luarocks and has_git and it or pending)("packs the " .. RELEASE .. " source rock with "
    .. "luarocks pack and installs it into a clean tree, offline", function()
    local dir = tmpdir()
    finally(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    local rc, out = sh(("timeout 120 sh scripts/pack-rock.sh luasip-%s-1.rockspec %s")
      :format(RELEASE, H.shquote(dir)))
    assert.equal(0, rc, out)
    local rock = dir .. "/luasip-" .. RELEASE .. "-1.src.rock"
    assert.matches(escaped(rock), out)
    -- the rock holds the rockspec and the sources, not a build
    local _, list = sh("unzip -l " .. H.shquote(rock))
    assert.matches("luasip%-" .. escaped(RELEASE) .. "%-1%.rockspec", list)
    assert.matches("luasip/csrc/core%.c", list)
    assert.matches("luasip/lua/luasip%.lua", list)
    assert.is_nil(list:find("%.so\n"), list)
    -- installed from another directory, into an empty tree
    local tree = dir .. "/tree"
    rc, out = sh(("cd %s && %stimeout 300 luarocks --lua-version=%s --tree %s install %s"):format(
      H.shquote(dir), offline, LUA_VERSION, H.shquote(tree), H.shquote("./" .. rock:match("[^/]+$"))))
    assert.equal(0, rc, out)
    assert.matches("luasip " .. escaped(RELEASE) .. "%-1 is now installed", out)
    assert.matches("loaded luasip " .. escaped(RELEASE) .. " with " .. escaped(tree)
      .. "/lib/lua/" .. escaped(LUA_VERSION) .. "/luasip/core%.so", load_from(tree))
  end)
end)
