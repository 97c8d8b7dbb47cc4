local H = require "spec.helper"

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function have(cmd)
  local ok = os.execute("command -v " .. cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

local function capture(cmd)
  local p = io.popen(cmd .. " 2>&1; echo rc=$?")
  local out = p:read("*a")
  p:close()
  return out
end

-- loads build/<flavour>/luasip/core.so (built here) in a child `interp`, returning
-- require's error message
local function load_with(flavour, interp)
  local out = capture(("make -s build/%s/luasip/core.so"):format(flavour))
  assert(out:match("rc=0%s*$"), out)
  return capture(("%s -e %s"):format(interp, H.shquote(
    ("package.cpath = 'build/%s/?.so'; local ok, err = pcall(require, 'luasip.core'); "
      .. "io.write(ok and 'loaded' or err, '\\n')"):format(flavour))))
end

-- A core built for one Lua version and loaded by another says so and how to fix it
describe("luasip.core built for the wrong Lua", function()
  local can_51 = have("cc") and have("lua5.4") and exists("/usr/include/lua5.1/lua.h")
  local can_jit = have("cc") and have("luajit") and exists("/usr/include/lua5.4/lua.h")

  ;(can_51 and it or pending)("refuses to load a Lua 5.1 build in Lua 5.4, naming both", function()
    local out = load_with("5.1", "lua5.4")
    assert.matches("luasip.core was built for Lua 5.1 but loaded by Lua 5.4: "
      .. "rebuild with luarocks --lua-version=5.4 make\n", out, 1, true)
  end)

  ;(can_jit and it or pending)("refuses to load a Lua 5.4 build in LuaJIT, naming both", function()
    local out = load_with("5.4", "luajit")
    assert.matches("luasip.core was built for Lua 5.4 but loaded by LuaJIT: "
      .. "rebuild with luarocks --lua-version=5.1 make\n", out, 1, true)
  end)

  ;(have("lua5.4") and it or pending)("loads a Lua 5.4 build in Lua 5.4", function()
    assert.matches("^loaded\n", load_with("5.4", "lua5.4"))
  end)
end)
