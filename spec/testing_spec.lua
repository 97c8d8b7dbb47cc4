local H = require "spec.helper"
local sip = H.sip
local testing = require "luasip.testing"

-- luasip.testing against applications given as functions (in this process); the shipped
-- examples run as scripts in spec/apps_spec.lua.
describe("luasip.testing", function()
  local t
  after_each(function()
    if t then t:close() end
    t = nil
  end)

  -- the error a failing expectation raises
  local function failure(fn)
    local ok, err = pcall(fn)
    assert.is_false(ok, "the expectation should have failed")
    return tostring(err)
  end

  it("drives a call: 180, 200, ACK and BYE, both ways", function()
    local acked, ended
    t = testing.start{ app = function(agent)
      agent:on("INVITE", function(req)
        req:reply(180)
        local d = req:answer{ body = sip.sdp.answer(req.body, { address = "127.0.0.1",
          media = { audio = { port = 40000, codecs = { "PCMU/8000" } } } }) }
        acked = d ~= nil
        ended = d and d:wait_end(5)
      end)
    end }
    local call = t:invite(t:uri("100"))
    assert.equal(180, call:expect(180).status)
    local ok = call:expect(200)
    assert.matches("m=audio 40000", ok.body)
    assert.is_true(call:ack())
    H.run_until(function() return acked end)
    assert.is_true(call:bye())
    H.run_until(function() return ended end)
    assert.equal("remote bye", ended)
  end)

  it("fails an expectation with the response that did arrive", function()
    t = testing.start{ app = function(agent)
      agent:on("INVITE", function(req) req:reply(486) end)
    end }
    local call = t:invite(t:uri("busy"))
    local err = failure(function() call:expect(180) end)
    assert.matches("expected 180 to INVITE sip:busy@127.0.0.1:%d+, got 486 Busy Here", err)
    assert.matches("SIP/2.0 486 Busy Here\r\n", err, 1, true)
    assert.matches("testing_spec.lua:%d+", err)          -- points at the test's line
  end)

  it("fails an expectation that times out, saying what came so far", function()
    t = testing.start{ app = function(agent)
      agent:on("INVITE", function(req) req:reply(180); sip.sleep(3); req:reply(486) end)
    end, timeout = 0.5 }
    local call = t:invite(t:uri("slow"))
    call:expect(180)
    local err = failure(function() call:expect(200) end)
    assert.matches("expected 200 to INVITE sip:slow@127.0.0.1:%d+: nothing arrived within 0.5 s "
      .. "%(responses so far: 180%)", err)
    assert.equal(486, call:expect("4xx", 5).status)
  end)

  it("lets the application call a scripted phone that answers as the test says", function()
    local result
    t = testing.start{ app = function(agent, tt)
      agent:on("MESSAGE", function(req)
        -- the app calls out to bob and reports how it went
        local d, res = agent:invite{ uri = tt.bob.uri, body = req.body,
          content_type = "application/sdp" }
        result = d and res.status or res
        req:reply(200)
        if d then d:wait_end(5) end
      end)
    end }
    t.bob = t:phone("bob")
    local tx = t:message(t:uri(), "v=0\r\n")
    local call = t.bob:expect_call()
    assert.equal("INVITE", call.method)
    call:ring()
    call:answer()
    assert.equal(200, result)
    tx:expect(200)
    call:bye()
  end)

  it("has UAS phones that answer by themselves, and sees the BYE the app sends", function()
    t = testing.start{ app = function(agent, tt)
      agent:on("OPTIONS", function(req)
        local d = agent:invite{ uri = tt.carol.uri }
        req:reply(d and 200 or 500)
        if d then sip.sleep(0.2); d:bye() end
      end)
    end }
    t.carol = t:uas("carol")
    t:options(t:uri()):expect(200)
    local call = t.carol:expect_call()
    assert.is_true(call:expect_bye())
    assert.equal("remote bye", call.ended)
  end)

  it("registers with digest authentication against sip.registrar", function()
    t = testing.start{ app = function(agent)
      local registrar = sip.registrar{ realm = "127.0.0.1",
        authorize = sip.auth.authorizer{ realm = "127.0.0.1",
          password = function(user) return user == "alice" and "pw" or nil end } }
      agent:on("REGISTER", registrar)
    end }
    local alice = t:phone("alice", { password = "pw" })
    local res = alice:register{ expires = 60 }:expect(200)
    assert.matches(alice.uri, res:header("Contact"), 1, true)
    alice:unregister():expect(200)
    local mallory = t:phone("alice", { password = "wrong" })
    mallory:register():expect(401)
    local nobody = t:phone("nobody")
    nobody:register():expect("4xx")
  end)

  it("sends and receives MESSAGE, and answers requests as the test says", function()
    t = testing.start{ app = function(agent, tt)
      agent:on("MESSAGE", function(req)
        local res = agent:request{ method = "MESSAGE", uri = tt.dave.uri, body = req.body:upper(),
          content_type = "text/plain" }
        req:reply(res and res.status or 500)
      end)
    end }
    t.dave = t:phone("dave")
    local tx = t:message(t:uri("dave"), "hello")
    local m = t.dave:expect_request("MESSAGE")
    assert.equal("HELLO", m.body)
    assert.equal("text/plain", m.content_type)
    m:reply(202)
    tx:expect(202)
  end)

  it("subscribes and takes the NOTIFYs of sip.events", function()
    local notifier
    t = testing.start{ app = function(agent)
      local handler
      handler, notifier = sip.events{ package = "presence" }
      agent:on("SUBSCRIBE", handler)
    end }
    local sub = t:subscribe(t:uri("alice"), { event = "presence", expires = 60 })
    local first = sub:expect_notify()
    assert.matches("^active", first:header("Subscription-State"))
    local resource = notifier:subscriptions()[1].resource
    notifier:notify(resource, sip.pidf.build{ entity = resource, status = "open" })
    assert.matches("<basic>open</basic>", sub:expect_notify().body, 1, true)
    assert.is_true(sub:unsubscribe())
  end)

  it("cancels a ringing call and sees the CANCEL on the other side", function()
    t = testing.start{ app = function(agent, tt)
      agent:on("INVITE", function(req) req:proxy(tt.erin.uri) end)
    end }
    t.erin = t:phone("erin")
    local call = t:invite(t:uri("erin"))
    local incoming = t.erin:expect_call()
    incoming:ring()
    call:expect(180)
    call:cancel()
    assert.is_true(incoming:expect_cancel())
    call:expect(487)
  end)

  it("raises for wrong arguments, naming the function", function()
    assert.has_error(function() testing.start{ script = "x", app = function() end } end,
      "luasip.testing.start: give one of script (a path) and app (a function)")
    assert.has_error(function() testing.start{ app = function() end, bogus = 1 } end,
      "luasip.testing.start: unknown option 'bogus'")
    t = testing.start{ app = function() end }
    local call = t:invite(t:uri("x"))
    assert.has_error(function() call:expect("nope") end,
      "luasip.testing call:expect: status must be a number, a class like \"2xx\" or a list of them")
    call:expect(405)
  end)

  describe("with media", function()
    it("hears the tone the application plays and sends it digits", function()
      local digits
      t = testing.start{ app = function(agent)
        agent:on("INVITE", function(req)
          local call = req:answer{ media = true }
          if not call then return end
          call:tone({ freqs = { 440 }, ms = 1500 })
          digits = call:collect{ max = 3, timeout = 5 }
          call:hangup()
        end)
      end }
      local call = t:invite(t:uri("ivr"), { media = true })
      call:expect(200)
      local heard = call:hear(0.5)
      assert.is_false(heard.silence)
      assert.is_true(math.abs(heard.frequency - 440) < 10, "heard " .. tostring(heard.frequency))
      call:send_dtmf("123")
      call:expect_bye()
      assert.equal("123", digits)
    end)

    it("hears two tones at once, and silence", function()
      t = testing.start{ app = function(agent)
        agent:on("INVITE", function(req)
          local call = req:answer{ media = true }
          if call then call:tone("ring") end
        end)
      end }
      local call = t:invite(t:uri("ring"), { media = true })
      call:expect(200)
      local heard = call:hear(1)
      table.sort(heard.frequencies)
      assert.equal(2, #heard.frequencies)
      assert.is_true(math.abs(heard.frequencies[1] - 440) < 10)
      assert.is_true(math.abs(heard.frequencies[2] - 480) < 10)
      local quiet = false                             -- the ring's 4 s pause comes
      for _ = 1, 8 do
        quiet = call:hear(0.5).silence
        if quiet then break end
      end
      assert.is_true(quiet)
      call:bye()
    end)
  end)
end)
