local H = require "spec.helper"
local sip = H.sip

local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"

-- a script that listens and runs the loop, then reports how run() ended
local SCRIPT = [[
local sip = require "luasip"
local a = assert(sip.agent{ listen = { "sip:127.0.0.1:0" } })
a:on("OPTIONS", function(req) req:reply(200) end)
local f = assert(io.open(arg[1], "w")); f:write("ready\n"); f:close()
-- the shutdown hook runs on the loop: it may send a request and wait for its answer
sip.on_shutdown(function(signal)
  local res = a:request{ method = "OPTIONS", uri = a:uri(), timeout = 2 }
  print("shutdown hook " .. signal .. " " .. tostring(res and res.status))
end)
local ok, why = sip.run()
print("run returned " .. tostring(ok) .. " " .. tostring(why))
a:close()
os.exit(0)
]]

describe("luasip.run and signals", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)

  local read = H.read_file

  -- runs source as a child script (arg[1]: a file it writes "ready\n" to); returns
  -- the background process and its pid once the file says ready
  local function launch(source)
    local script = os.tmpname()
    local ready, pidfile = os.tmpname(), os.tmpname()
    os.remove(ready)
    defer(function() os.remove(script); os.remove(ready); os.remove(pidfile) end)
    local f = assert(io.open(script, "w"))
    f:write(source)
    f:close()
    local cmd = ("echo $$ > %s; LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
      .. "LUA_CPATH='build/%s/?.so;;' exec %s %s %s"):format(H.shquote(pidfile), FLAVOUR,
      H.shquote(H.interpreter()), H.shquote(script), H.shquote(ready))
    local p = H.background({ "sh", "-c", cmd }, 20)
    defer(p.kill)
    H.run_until(function() return read(ready) == "ready\n" or p.done() end, 10, "child ready")
    assert.is_nil(p.done(), p.log())
    return p, assert(tonumber(read(pidfile)), "child pid")
  end

  local function stops_on(signal)
    local p, pid = launch(SCRIPT)
    assert(os.execute(("kill -%s %d"):format(signal, pid)))
    H.run_until(function() return p.done() end, 5, "child exit after " .. signal)
    assert.equal(0, p.done(), p.log())
    assert.matches("run returned true SIG" .. signal, p.log(), 1, true)
    assert.matches("shutdown hook SIG" .. signal .. " 200", p.log(), 1, true)
  end

  it("stops on the first SIGINT and returns true, 'SIGINT'", function() stops_on("INT") end)
  it("stops on the first SIGTERM and returns true, 'SIGTERM'", function() stops_on("TERM") end)

  it("dies of a second SIGTERM while Lua holds the loop", function()
    -- a timer callback that never returns, with the runaway-script limit off (as it is,
    -- in effect, for a loop LuaJIT compiled)
    local p, pid = launch([[
local sip = require "luasip"
sip.cpu_limit(false)
sip.timer(0.01, function()
  local g = assert(io.open(arg[1], "w")); g:write("ready\n"); g:close()
  local x = 0
  while true do x = x + 1 end
end)
sip.run()
print("run returned")
]])
    assert(os.execute(("kill -TERM %d"):format(pid)))
    -- the first is only recorded (the loop would stop at its next turn)
    assert(os.execute(("kill -TERM %d"):format(pid)))
    H.run_until(function() return p.done() end, 5, "child killed by the second SIGTERM")
    assert.equal(143, p.done(), p.log())
    assert.is_nil(p.log():find("run returned", 1, true))
  end)

  it("returns just true after sip.stop()", function()
    sip.spawn(function() sip.sleep(0.01); sip.stop() end)
    local function count(...) return select("#", ...), ... end
    local n, ok = count(sip.run())
    assert.equal(1, n)
    assert.is_true(ok)
  end)
end)
