local H = require "spec.helper"

-- Session timers (RFC 4028) with short intervals (min_se lowered for the test).
describe("luasip session timers", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  it("negotiates the interval and refresher, and keeps the call up with refreshes", function()
    local server
    uas:on("INVITE", function(req) server = assert(req:answer{ min_se = 1 }) end)
    local d, res = H.run(function()
      return uac:invite{ uri = uas:uri("x"), session_expires = 2, min_se = 1 }
    end)
    assert.equal("2;refresher=uac", res:header("Session-Expires"))
    assert.equal("timer", res:header("Require"))
    assert.equal(2, d.session_expires)
    assert.equal("uac", d.session_refresher)
    H.run_until(function() return server end)
    assert.equal("uac", server.session_refresher)
    H.settle(3.5)                     -- the UAS would give up after 1.33 s unrefreshed
    assert.equal("confirmed", d:state())
    assert.equal("confirmed", server:state())
    H.run(function() d:bye() end)
  end)

  it("sends BYE when the refresher never refreshes", function()
    local server
    uas:on("INVITE", function(req) server = assert(req:answer{ min_se = 1 }) end)
    local reason = H.run(function()
      -- a caller that asks for timers but never refreshes (no session_expires option)
      local d = assert(uac:invite{ uri = uas:uri("x"),
        headers = { ["Session-Expires"] = "2;refresher=uac", Supported = "timer" } })
      return d:wait_end(5)
    end, 8)
    assert.equal("remote bye", reason)
    assert.equal("terminated", server:state())
  end)

  it("answers 422 below Min-SE, and the caller retries with the callee's Min-SE", function()
    local seen = {}
    uas:on("INVITE", function(req)
      seen[#seen + 1] = req:header("Session-Expires")
      req:answer{ min_se = 2 }
    end)
    local d, res = H.run(function()
      return uac:invite{ uri = uas:uri("x"), session_expires = 1, min_se = 1 }
    end)
    assert(d, res)
    assert.same({ "1", "2" }, seen)
    assert.equal(2, d.session_expires)
    H.run(function() d:bye() end)
  end)
end)
