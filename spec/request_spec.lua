local H = require "spec.helper"
local sip = H.sip

describe("luasip.request", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  local function send(opts)
    opts.uri = opts.uri or uas:uri("alice")
    return H.run(function() return uac:request(opts) end)
  end

  it("exposes the request line, addresses, tags, Call-ID, CSeq, Via, Contact and body", function()
    local got
    uas:on("MESSAGE", function(req)
      got = {
        method = req.method, uri = req.uri, ruri = req.ruri, from = req.from, to = req.to,
        from_tag = req.from_tag, to_tag = req.to_tag, call_id = req.call_id, cseq = req.cseq,
        cseq_method = req.cseq_method, via = req.via, contact = req.contact, body = req.body,
        content_type = req.content_type, source = req.source, transport = req.transport,
        max_forwards = req.max_forwards, expires = req.expires,
      }
      req:reply(200)
    end)
    assert(send{ method = "MESSAGE", uri = uas:uri("alice") .. ";user=phone",
      body = "hello\0world", content_type = "text/plain",
      headers = { From = '"Bob B" <sip:bob@example.test>;tag=abc;x=1',
                  Contact = "<sip:bob@127.0.0.1:1>;expires=60;q=0.5", Expires = "30",
                  ["Call-ID"] = "call-1@test", CSeq = "42 MESSAGE" } })
    assert.equal("MESSAGE", got.method)
    assert.equal(uas:uri("alice") .. ";user=phone", got.uri)
    assert.same({ scheme = "sip", user = "alice", host = "127.0.0.1",
      port = uas:transports()[1].port, param_string = "user=phone",
      params = { user = "phone" } }, got.ruri)
    assert.equal("Bob B", got.from.display)
    assert.equal("sip:bob@example.test", got.from.uri)
    assert.equal("abc", got.from.tag)
    assert.equal("abc", got.from_tag)
    assert.equal("1", got.from.params.x)
    assert.is_nil(got.to.tag)
    assert.is_nil(got.to_tag)
    assert.equal("call-1@test", got.call_id)
    assert.equal(42, got.cseq)
    assert.equal("MESSAGE", got.cseq_method)
    assert.equal(1, #got.via)
    assert.equal("SIP/2.0/UDP", got.via[1].protocol)
    assert.matches("^z9hG4bK", got.via[1].branch)
    assert.equal("sip:bob@127.0.0.1:1", got.contact[1].uri)
    assert.equal(60, got.contact[1].expires)
    assert.equal(0.5, got.contact[1].q)
    assert.equal("hello\0world", got.body)
    assert.equal("text/plain", got.content_type)
    assert.equal("127.0.0.1", got.source.address)
    assert.equal(uac:transports()[1].port, got.source.port)
    assert.equal("udp", got.source.transport)
    assert.equal("udp", got.transport)
    assert.equal(70, got.max_forwards)
    assert.equal(30, got.expires)
  end)

  it("reads any header by long or compact name, every value of a list", function()
    local got = {}
    uas:on("OPTIONS", function(req)
      got.subject = req:header("Subject")
      got.s = req:header("s")
      got.vias = #req:headers("v")
      got.x = req:headers("X-Multi")
      got.xs = req:header("x-multi")
      got.supported = req:headers("Supported")
      got.ksupported = req:header("k")
      got.missing = req:header("X-None")
      got.none = req:headers("X-None")
      req:reply(200)
    end)
    assert(send{ method = "OPTIONS", headers = {
      "s: hi there", "X-Multi: one", "X-Multi: two", "k: timer, 100rel" } })
    assert.equal("hi there", got.subject)
    assert.equal("hi there", got.s)
    assert.equal(1, got.vias)
    assert.same({ "one", "two" }, got.x)
    assert.equal("one", got.xs)
    assert.same({ "timer", "100rel" }, got.supported)
    assert.equal("timer, 100rel", got.ksupported)
    assert.is_nil(got.missing)
    assert.same({}, got.none)
  end)

  it("replies with reason, headers and body, and refuses a second final response", function()
    local second
    uas:on("INFO", function(req)
      assert(req:reply(299, "Custom", { headers = { ["X-R"] = "1" }, body = "{}",
        content_type = "application/json" }))
      second = { req:reply(200) }
    end)
    local res = assert(send{ method = "INFO" })
    assert.equal(299, res.status)
    assert.equal("Custom", res.reason)
    assert.equal("1", res:header("X-R"))
    assert.equal("{}", res.body)
    assert.equal("application/json", res.content_type)
    assert.is_string(res.to.tag)
    assert.same({ nil, "request already answered", "answered" }, second)
  end)

  it("delivers every SIP method and extension methods to their handlers", function()
    local seen = {}
    for _, m in ipairs{ "BYE", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH",
      "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE", "INVITE", "ACK", "FOO-BAR" } do
      uas:on(m, function(req)
        seen[#seen + 1] = req.method
        if req.method ~= "ACK" then req:reply(m == "REFER" and 202 or 200) end
      end)
    end
    H.run(function()
      for _, m in ipairs{ "BYE", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY", "PUBLISH",
        "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE", "INVITE", "FOO-BAR" } do
        local res, err = uac:request{ method = m, uri = uas:uri("x") }
        assert(res, err)
        assert.equal(m == "REFER" and 202 or 200, res.status)
      end
    end)
    H.run_until(function() return seen[#seen] == "ACK" or seen[13] == "ACK" end)
    table.sort(seen)
    assert.same({ "ACK", "BYE", "FOO-BAR", "INFO", "INVITE", "MESSAGE", "NOTIFY", "OPTIONS",
      "PRACK", "PUBLISH", "REFER", "REGISTER", "SUBSCRIBE", "UPDATE" }, seen)
  end)

  it("answers 416 for a non-SIP Request-URI scheme and 420 for an unknown Require", function()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    local _, _, code, res = send{ method = "OPTIONS", headers = { Require = "foo, bar" } }
    assert.equal(420, code)
    assert.equal("foo, bar", res:header("Unsupported"))
    local tel = H.agent{ supported = { "foo" } }
    tel:on("OPTIONS", function(req) req:reply(200) end)
    assert.equal(200, (H.run(function()
      return uac:request{ method = "OPTIONS", uri = tel:uri("x"), headers = { Require = "foo" } }
    end)).status)
  end)

  it("answers INVITE with the handler's provisional and final responses", function()
    local provisional = {}
    uas:on("INVITE", function(req)
      req:reply(183, { body = "v=0\r\n", content_type = "application/sdp" })
      sip.sleep(0.05)
      req:reply(200, { body = "v=0\r\n", content_type = "application/sdp" })
    end)
    local res = assert(send{ method = "INVITE", on_provisional = function(r)
      provisional[#provisional + 1] = r.status .. " " .. tostring(r.body)
    end })
    assert.equal(200, res.status)
    assert.same({ "183 v=0\r\n" }, provisional)
    assert.equal(uas:contact(), res.contact[1].uri)
  end)

  it("delivers the ACK of a 2xx to the INVITE handler and to the ACK handler", function()
    local ack_in_invite, ack_handler_args
    uas:on("INVITE", function(req)
      req:reply(200)
      local ack = req:wait_ack(5)
      ack_in_invite = ack and ack.method .. " " .. ack.cseq
    end)
    uas:on("ACK", function(ack, inv) ack_handler_args = { ack.method, inv and inv.method } end)
    local res = assert(send{ method = "INVITE" })
    H.run_until(function() return ack_in_invite and ack_handler_args end)
    assert.equal("ACK " .. res.cseq, ack_in_invite)
    assert.same({ "ACK", "INVITE" }, ack_handler_args)
  end)

  it("ends a ringing INVITE with 487 on CANCEL and wakes its handler with 'cancelled'", function()
    local woke, cancel_cb
    uas:on("INVITE", function(req)
      req:on_cancel(function() cancel_cb = true end)
      req:reply(180)
      woke = { sip.sleep(10) }
      assert.is_true(req:cancelled())
      assert.same({ nil, "request cancelled", "cancelled" }, { req:reply(200) })
    end)
    local tx = uac:send{ method = "INVITE", uri = uas:uri("ring") }
    local res, err, code = H.run(function()
      sip.timer(0.1, function() assert(tx:cancel()) end)
      return tx:wait(5)
    end)
    assert.is_nil(res)
    assert.equal(487, code)
    assert.equal("487 Request Terminated", err)
    H.run_until(function() return woke end)
    assert.same({ nil, "cancelled", "cancelled" }, woke)
    assert.is_true(cancel_cb)
  end)
end)
