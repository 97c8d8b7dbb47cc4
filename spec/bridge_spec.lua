local H = require "spec.helper"
local sip = H.sip

-- Every bridge rule of STYLE.md, driven with real SIP between two agents on loopback.
describe("luasip bridge", function()
  local uas, uac, logs, restore
  before_each(function()
    uas, uac = H.agent(), H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    assert.equal(2, H.close_agents())
  end)

  local function ask(method, extra)
    return H.run(function()
      local o = { method = method, uri = uas:uri("x") }
      for k, v in pairs(extra or {}) do o[k] = v end
      return uac:request(o)
    end)
  end

  it("answers 500 when a handler raises, logs the traceback, and keeps serving", function()
    uas:on("MESSAGE", function() error("boom") end)
    local res, err, code = ask("MESSAGE", { body = "x", content_type = "text/plain" })
    assert.is_nil(res)
    assert.equal(500, code)
    assert.matches("500", err)
    assert.matches("boom", logs[1].msg)
    assert.matches("traceback", logs[1].msg)
    uas:on("MESSAGE", function(req) req:reply(200) end)
    assert.equal(200, ask("MESSAGE", { body = "y", content_type = "text/plain" }).status)
  end)

  it("answers with the status of error{status=486}", function()
    uas:on("INVITE", function() error({ status = 486, reason = "Busy Here" }) end)
    local res, err, code = ask("INVITE")
    assert.is_nil(res)
    assert.equal(486, code)
    assert.equal("486 Busy Here", err)
  end)

  it("answers 500 and warns when a handler returns without a final response", function()
    uas:on("OPTIONS", function() end)
    local _, _, code = ask("OPTIONS")
    assert.equal(500, code)
    assert.equal("warn", logs[1].level)
    assert.matches("without a final response", logs[1].msg)
  end)

  it("lets a handler yield and reply later", function()
    uas:on("OPTIONS", function(req)
      sip.sleep(0.1)
      req:reply(200, "Later", { headers = { ["X-Waited"] = "yes" } })
    end)
    local res = ask("OPTIONS")
    assert.equal(200, res.status)
    assert.equal("Later", res.reason)
    assert.equal("yes", res:header("X-Waited"))
  end)

  it("answers 405 with an Allow listing the methods that have handlers", function()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    uas:on("INVITE", function(req) req:reply(486) end)
    local res, _, code, r = ask("INFO")
    assert.is_nil(res)
    assert.equal(405, code)
    assert.equal("ACK, CANCEL, INVITE, OPTIONS", r:header("Allow"))
  end)

  it("answers 501 with Allow for an unknown extension method", function()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    local _, _, code, r = ask("FROBNICATE")
    assert.equal(501, code)
    assert.equal("OPTIONS", r:header("Allow"))
  end)

  it("answers 500 for a request whose handler coroutine was abandoned and collected", function()
    uas:on("MESSAGE", function(req)
      -- park forever on a slot nobody fills; only this coroutine refers to req
      coroutine.yield()
      req:reply(200)
    end)
    local res, code
    sip.spawn(function()
      local _
      res, _, code = uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = "x",
        content_type = "text/plain" }
    end)
    H.run_until(function()
      collectgarbage(); collectgarbage()
      return code ~= nil or res ~= nil
    end, 10)
    assert.equal(500, code)
  end)

  it("raises a message naming the function for a wrong argument", function()
    local err
    uas:on("OPTIONS", function(req)
      local _, e = pcall(req.reply, req, 42)
      err = e
      req:reply(200)
    end)
    ask("OPTIONS")
    assert.matches("luasip.request:reply: status must be 100%-699", err)
    assert.has_error(function() uas:on(42, print) end,
      "luasip.agent:on: method must be a SIP method token")
  end)
end)
