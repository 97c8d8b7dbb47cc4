local H = require "spec.helper"
local sip = require "luasip"

-- The runaway-script watchdog (csrc/watchdog.c, issue 11 item 4): Lua that keeps the
-- loop busy past sip.cpu_limit without returning to it is interrupted; the request gets
-- 500 and the loop serves the next one.
local jit = rawget(_G, "jit")
local jit_on = jit and jit.status and jit.status()
local it_interp = jit_on and function(name)
  pending(name .. " -- LuaJIT runs no hooks in compiled loops: the limit is not enforced there")
end or it

describe("sip.cpu_limit", function()
  local uas, uac, previous
  before_each(function()
    uas, uac = H.agent(), H.agent()
    previous = sip.cpu_limit(0.3)
  end)
  after_each(function()
    sip.cpu_limit(previous)
    H.close_agents()
  end)

  local function message(body)
    return H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = body,
        content_type = "text/plain" }
    end)
  end

  it_interp("interrupts a busy handler: 500, the error logged, the next request served", function()
    uas:on("MESSAGE", function(req)
      if req.body == "spin" then
        local x = 0
        while true do x = x + 1 end
      end
      req:reply(200)
    end)
    local logs, restore = H.capture_logs()
    local t0 = sip.now()
    local res, err, code = message("spin")
    restore()
    assert.is_nil(res)
    assert.equal(500, code, err)
    assert.is_true(sip.now() - t0 < 5)
    local text = {}
    for _, l in ipairs(logs) do text[#text + 1] = l.msg end
    text = table.concat(text, "\n")
    assert.matches("interrupted after 0.3%d* s of CPU without returning to the loop", text)
    assert.matches("stack traceback", text, 1, true)
    assert.equal(200, message("hello").status)
  end)

  it("leaves alone a handler that returns to the loop between its pieces of work", function()
    uas:on("MESSAGE", function(req)
      for _ = 1, 4 do
        local t = os.clock()
        while os.clock() - t < 0.1 do end  -- 0.1 s of CPU, then back to the loop
        sip.sleep(0)
      end
      req:reply(200)
    end)
    assert.equal(200, message("pieces").status)
  end)

  it("returns the previous limit and checks its argument", function()
    assert.equal(0.3, sip.cpu_limit())
    assert.equal(0.3, sip.cpu_limit(1.5))
    assert.equal(1.5, sip.cpu_limit(false))
    assert.is_false(sip.cpu_limit(0.3))
    for _, v in ipairs{ 0, -1, 0.01, 1e9, "x" } do
      local ok, e = pcall(sip.cpu_limit, v)
      assert.is_false(ok)
      assert.matches("luasip.cpu_limit", e, 1, true)
    end
  end)
end)

-- The memory cap (csrc/watchdog.c): while a handler runs, the Lua state may not grow
-- past sip.memory_limit; the allocation that would cross it fails in the handler.
describe("sip.memory_limit", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function()
    sip.memory_limit(false)
    H.close_agents()
  end)

  local function message(body)
    return H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = body,
        content_type = "text/plain" }
    end)
  end

  it("fails the handler that crosses it: 500, logged, the next request served", function()
    uas:on("MESSAGE", function(req)
      if req.body == "hog" then
        local t = {}  -- luacheck: ignore 241 (it only grows)
        for i = 1, 1e8 do t[i] = ("x"):rep(64) .. i end    -- ~10 GB unbounded
      end
      req:reply(200)
    end)
    collectgarbage()
    local _, in_use = sip.memory_limit(false)
    assert.equal(0, in_use)                              -- no cap: no counting
    sip.memory_limit(collectgarbage("count") * 1024 + 16 * 1048576)
    local logs, restore = H.capture_logs()
    local _, _, code = message("hog")
    restore()
    assert.equal(500, code)
    local logged = false
    for _, l in ipairs(logs) do logged = logged or l.msg:find("not enough memory", 1, true) ~= nil end
    assert.is_true(logged)
    local _, used, refused = sip.memory_limit()
    assert.is_true(refused >= 1)
    assert.is_true(used > 0)
    collectgarbage()
    assert.equal(200, message("small").status)          -- the garbage went, service goes on
  end)

  it("refuses nothing outside handlers, returns the previous limit, checks its argument", function()
    assert.is_false(sip.memory_limit(2 * 1048576))
    local big = ("y"):rep(8 * 1048576)                   -- not in a handler: allowed
    assert.equal(8 * 1048576, #big)
    assert.equal(2 * 1048576, sip.memory_limit(false))
    assert.has_error(function() sip.memory_limit(1000) end,
      "luasip.memory_limit: bytes must be at least 1 MiB, or false")
    assert.has_error(function() sip.memory_limit("x") end,
      "luasip.memory_limit: bytes must be at least 1 MiB, or false")
  end)
end)
