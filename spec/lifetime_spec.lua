local H = require "spec.helper"
local sip = H.sip

-- Userdata lifetime rules (STYLE.md): objects sofia no longer needs are freed once Lua
-- drops them, whatever path the transaction took.
describe("luasip object lifetimes", function()
  after_each(function() H.close_agents() end)

  local function live()
    collectgarbage()
    collectgarbage()
    sip.step(0)
    local s = sip.stats()
    return (s["luasip.request"] or 0) + (s["luasip.response"] or 0)
      + (s["luasip.client_tx"] or 0) + (s["luasip.timer"] or 0)
  end

  it("frees requests, responses, transactions and timers after 100 mixed exchanges", function()
    local uas, uac = H.agent(), H.agent()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    uas:on("MESSAGE", function(req) sip.sleep(0.001); req:reply(202) end)
    uas:on("INFO", function() error("boom") end)
    uas:on("INVITE", function(req)
      req:reply(180)
      if req.ruri.user == "ring" then return sip.sleep(5) end
      req:reply(200)
      req:wait_ack(2)
    end)
    uas:on("BYE", function(req) req:reply(200) end)
    local _, restore = H.capture_logs()
    local base = live()
    H.run(function()
      for i = 1, 20 do
        assert(uac:request{ method = "OPTIONS", uri = uas:contact() })
        assert(uac:request{ method = "MESSAGE", uri = uas:contact(), body = "m" .. i,
          content_type = "text/plain" })
        assert.equal(500, select(3, uac:request{ method = "INFO", uri = uas:contact() }))
        assert(uac:request{ method = "INVITE", uri = uas:uri("call") })
        assert.equal("timeout", select(2, uac:request{ method = "INVITE",
          uri = uas:uri("ring"), timeout = 0.02 }))
      end
    end, 30)
    H.settle(0.3)                      -- let the cancelled INVITEs finish (487/ACK)
    restore()
    H.run_until(function() return live() <= base end, 5, "objects freed")
    assert.is_true(live() <= base)
  end)

  it("keeps an agent usable while a dropped request's 2xx still waits for its ACK", function()
    local uas, uac = H.agent(), H.agent()
    uas:on("INVITE", function(req) req:reply(200) end)   -- nobody waits for the ACK
    local res = H.run(function() return uac:request{ method = "INVITE", uri = uas:contact() } end)
    assert.equal(200, res.status)
    collectgarbage(); collectgarbage()
    H.settle(0.1)
    assert.is_false(uas:closed())
  end)
end)
