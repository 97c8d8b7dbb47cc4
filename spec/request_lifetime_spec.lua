local H = require "spec.helper"
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

-- A request's life when Lua cannot run for it: the C core answers, at once, and frees it.
-- GC is stopped while these run, so an answer can only come from the core's own path,
-- never from the collection of an abandoned request.
describe("luasip.request lifetime", function()
  local uas, uac, logs, restore
  local defer = H.defer_with(function(f) finally(f) end)

  before_each(function()
    uas, uac = H.agent(), H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    assert.equal(2, H.close_agents())
  end)

  -- a dispatcher that raises for every event of the UAS agent (the UAC, in the same
  -- process, still needs the real one to hear its responses)
  local function raise_for_uas()
    collectgarbage("stop")
    local real = dispatcher.dispatch
    core.set_dispatcher(function(event, a, b)
      if a and a.agent == uas then error("boom") end
      return real(event, a, b)
    end)
    defer(function()
      core.set_dispatcher(require("luasip.dispatcher").dispatch)
      collectgarbage("restart")
    end)
  end

  local function ask(method)
    return H.run(function()
      return uac:request{ method = method, uri = uas:uri("x"), timeout = 3 }
    end, 5)
  end

  it("answers 500 to an OPTIONS at once when the dispatcher raises", function()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    raise_for_uas()
    local t0 = H.sip.now()
    local res, err, code = ask("OPTIONS")
    assert.is_nil(res, "no 2xx expected")
    assert.equal(500, code, err)
    assert.is_true(H.sip.now() - t0 < 1, "answered promptly")
  end)

  it("answers 500 to an INVITE at once when the dispatcher raises, and lives on", function()
    uas:on("INVITE", function(req) req:reply(200) end)
    uas:on("OPTIONS", function(req) req:reply(200) end)
    raise_for_uas()
    local t0 = H.sip.now()
    local res, err, code = ask("INVITE")
    assert.is_nil(res, "no 2xx expected")
    assert.equal(500, code, err)
    assert.is_true(H.sip.now() - t0 < 1, "answered promptly")
    -- and with the real dispatcher back, the agent serves as before
    core.set_dispatcher(dispatcher.dispatch)
    assert.equal(200, ask("OPTIONS").status)
  end)

  it("answers an INVITE whose default reply itself raises (error{reason = CRLF})", function()
    uas:on("INVITE", function() error({ status = 486, reason = "Busy\r\nX-Evil: 1" }) end)
    collectgarbage("stop")
    defer(function() collectgarbage("restart") end)
    local t0 = H.sip.now()
    local res, _, code, r = ask("INVITE")
    assert.is_nil(res)
    -- the dispatcher answers the status and drops the reason unsafe on the wire
    assert.equal(486, code)
    assert.is_nil(r and r:header("X-Evil"))
    assert.is_true(H.sip.now() - t0 < 1, "answered promptly")
    -- the handler's failure is logged once (the bridge's own line goes to stderr)
    local n = 0
    for _, l in ipairs(logs) do
      if l.msg:match("handler failed") then n = n + 1 end
    end
    assert.equal(1, n)
  end)

  it("answers 500 to an in-dialog request at once when the dispatcher raises", function()
    local SDP = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
      .. "m=audio 40000 RTP/AVP 0\r\n"
    uas:on("INVITE", function(req) req:answer{ body = SDP } end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("x"), body = SDP }) end)
    collectgarbage("stop")
    local real = dispatcher.dispatch
    core.set_dispatcher(function(event, a, b)
      if event == "dialog_request" then error("boom") end
      return real(event, a, b)
    end)
    defer(function()
      core.set_dispatcher(require("luasip.dispatcher").dispatch)
      collectgarbage("restart")
    end)
    local t0 = H.sip.now()
    local res, err, code = H.run(function() return d:request("INFO", { timeout = 3 }) end, 5)
    assert.is_nil(res)
    assert.equal(500, code, err)
    assert.is_true(H.sip.now() - t0 < 1, "answered promptly")
  end)
end)
