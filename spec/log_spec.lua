local H = require "spec.helper"
local sip = H.sip
local core = require "luasip.core"

-- C log lines (luasip_log) reach the logger set by sip.set_logger, at a safe point
describe("luasip logging", function()
  after_each(function() H.close_agents() end)

  -- a request whose handler coroutine was abandoned: the C core answers 500 when the
  -- request is collected and logs it
  local function abandon_a_request()
    local uas, uac = H.agent(), H.agent()
    uas:on("MESSAGE", function(req)
      coroutine.yield()             -- parked forever; only this coroutine refers to req
      req:reply(200)
    end)
    local code
    sip.spawn(function()
      code = select(3, uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = "x",
        content_type = "text/plain" })
    end)
    H.run_until(function()
      collectgarbage(); collectgarbage()
      return code ~= nil
    end, 10)
    return code
  end

  it("hands C-originated lines to the Lua logger", function()
    local logs, restore = H.capture_logs()
    local code = abandon_a_request()
    H.settle(0.05)
    restore()
    assert.equal(500, code)
    local found
    for _, l in ipairs(logs) do
      if l.msg == "MESSAGE request collected without a final response: 500" then
        found = l
      end
    end
    assert.is_truthy(found, "C log line captured")
    assert.equal("warn", found.level)
  end)

  it("filters C lines with the logger's level", function()
    local logs = {}
    local old = sip.set_logger(function(level, msg) logs[#logs + 1] = { level, msg } end,
      "error")
    local ok, err = pcall(abandon_a_request)
    H.settle(0.05)
    sip.set_logger(old, "warn")
    assert(ok, err)
    for _, l in ipairs(logs) do
      assert.not_matches("collected without a final response", l[2])
    end
  end)

  it("keeps the process alive when the logger raises (the line goes to stderr)", function()
    local calls = 0
    local old = sip.set_logger(function() calls = calls + 1; error("logger down") end)
    local ok, err = pcall(abandon_a_request)
    H.settle(0.05)
    sip.set_logger(old)
    assert(ok, err)
    assert.is_true(calls >= 1)
  end)

  it("accepts only a function or nil as the core's log handler", function()
    assert.has_error(function() core.set_log_handler(42) end)
  end)
end)
