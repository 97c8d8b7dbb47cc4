local H = require "spec.helper"
local sip = H.sip
local redis = require "luasip.redis"
local core = require "luasip.core"

local function have(cmd)
  local ok = os.execute("command -v " .. cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

-- A TCP listener on loopback that never accepts, with a backlog of one: once it is
-- full the kernel drops further SYNs, so a connect to it stays pending (a silent peer)
local SILENT = [[
import socket, sys, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
s.listen(0)
with open(sys.argv[1], "w") as f:
    f.write(str(s.getsockname()[1]))
time.sleep(60)
]]

local read = H.read_file

-- Connecting to Redis never blocks the loop (csrc/stream.c, lua/luasip/redis.lua)
describe("luasip.redis.connect", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)

  it("returns nil, 'connection refused', 'connect' for a closed loopback port", function()
    local port = H.free_port()
    local c, err, code = H.run(function()
      return redis.connect{ host = "127.0.0.1", port = port }
    end)
    assert.is_nil(c)
    assert.equal("connection refused", err)
    assert.equal("connect", code)
  end)

  ;(have("python3") and it or pending)("times out on a silent peer while the loop runs on",
  function()
    local script, portfile = os.tmpname(), os.tmpname()
    os.remove(portfile)
    defer(function() os.remove(script); os.remove(portfile) end)
    local f = assert(io.open(script, "w"))
    f:write(SILENT)
    f:close()
    local peer = H.background({ "python3", script, portfile }, 30)
    defer(peer.kill)
    H.run_until(function() return tonumber(read(portfile) or "") or peer.done() end, 10,
      "silent peer listening")
    local port = assert(tonumber(read(portfile)), peer.log())
    -- fill the accept queue (its connects complete; later ones stay pending)
    local fillers = {}
    for i = 1, 4 do fillers[i] = assert(core.stream_connect("127.0.0.1", port)) end
    defer(function() for _, s in ipairs(fillers) do s:close() end end)
    H.settle(0.2)
    local ticks, t0 = 0, sip.now()
    local res, elapsed, ticks_during
    sip.spawn(function()
      while not res do sip.sleep(0.02); ticks = ticks + 1 end
    end)
    sip.spawn(function()
      res = { redis.connect{ host = "127.0.0.1", port = port, timeout = 0.3 } }
      elapsed, ticks_during = sip.now() - t0, ticks
    end)
    H.run_until(function() return res end, 5, "connect result")
    assert.same({ nil, "timeout", "connect" }, res)
    assert.is_true(elapsed >= 0.25 and elapsed < 2, "waited about the timeout: " .. elapsed)
    assert.is_true(ticks_during >= 5, "the loop ran while connecting: " .. ticks_during)
  end)

  ;(have("redis-server") and it or pending)("talks to a real redis-server over TCP", function()
    local port = H.free_port()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. H.shquote(dir)))
    defer(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    defer(H.redis_server(port, dir).kill)
    local c = assert(H.run(function() return redis.connect{ host = "127.0.0.1", port = port } end))
    H.run(function()
      assert.equal("OK", c:call("SET", "k", "v"))
      assert.equal("v", c:call("GET", "k"))
      c:close()
      local st = assert(sip.store.redis{ host = "127.0.0.1", port = port, prefix = "rc:" })
      assert.is_true(st:set("a", { x = 1 }))
      assert.same({ x = 1 }, st:get("a"))
      st:close()
    end)
  end)

  it("raises on a bad timeout", function()
    assert.has_error(function() redis.connect{ path = "/nonexistent", timeout = 0 } end,
      "luasip.redis.connect: timeout must be a positive number")
  end)
end)
