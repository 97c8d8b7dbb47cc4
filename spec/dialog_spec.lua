local H = require "spec.helper"
local sip = H.sip

describe("luasip.dialog", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  local SDP_A = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=a\r\n"
  local SDP_B = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=b\r\n"

  it("sets up a call both ways: answer waits for the ACK, invite returns the dialog", function()
    local server
    uas:on("INVITE", function(req)
      server = assert(req:answer{ body = SDP_A, content_type = "application/sdp" })
      server:wait_end(5)
    end)
    local d, res = H.run(function() return uac:invite{ uri = uas:uri("bob"), body = SDP_B } end)
    assert.equal(200, res.status)
    assert.equal(SDP_A, res.body)
    H.run_until(function() return server end)
    assert.equal("uac", d.role)
    assert.equal("uas", server.role)
    assert.equal(d.local_tag, server.remote_tag)
    assert.equal(d.remote_tag, server.local_tag)
    assert.equal(uas:contact(), d:target())
    assert.equal(uac:contact(), server:target())
    assert.equal(SDP_B, server.remote_sdp)
    assert.equal("confirmed", d:state())
    H.run(function() assert.is_true(d:bye()) end)
    assert.equal("terminated", d:state())
    H.run_until(function() return server:state() == "terminated" end)
  end)

  -- RFC 3261 12.2, RFC 3311: a Contact in a target refresh (here UPDATE) or in its 2xx
  -- is the remote target from then on: the BYE goes there
  it("follows a target refresh: the Contact of an UPDATE, and of the 2xx to one", function()
    local moved = sip.agent{ listen = "sip:127.0.0.1:0", in_dialog = "handler" }
    finally(function() moved:close() end)
    local byes = {}
    moved:on("BYE", function(req) byes[#byes + 1] = req.from_tag; req:reply(200) end)
    local server
    uas:on("INVITE", function(req)
      server = assert(req:answer{ body = SDP_A, content_type = "application/sdp" })
      server:on("UPDATE", function(r)
        r:reply(200, { headers = { Contact = "<" .. moved:contact() .. ">" } })
      end)
    end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("x"), body = SDP_B }) end)
    H.run_until(function() return server end)
    -- the callee's 2xx to our UPDATE names a new target: our BYE goes there
    local res = H.run(function() return d:request("UPDATE") end)
    assert.equal(200, res.status)
    assert.equal(moved:contact(), d:target())
    -- our UPDATE names a new Contact: the callee's requests go there
    local d2_server
    uas:on("INVITE", function(req)
      d2_server = assert(req:answer{ body = SDP_A, content_type = "application/sdp" })
    end)
    local d2 = H.run(function() return assert(uac:invite{ uri = uas:uri("y"), body = SDP_B }) end)
    H.run_until(function() return d2_server end)
    H.run(function()
      return assert(d2:request("UPDATE", { headers = { Contact = "<" .. moved:contact() .. ">" } }))
    end)
    assert.equal(moved:contact(), d2_server:target())
    H.run(function() d2_server:bye() end)
    H.run_until(function() return #byes == 1 end, 3, "the callee's BYE at the new target")
    assert.same({ d2_server.local_tag }, byes)
    H.run(function() d:bye() end)
    H.run_until(function() return #byes == 2 end, 3, "our BYE at the new target")
    assert.equal(d.local_tag, byes[2])
  end)

  it("carries INFO both ways and answers INFO with no listener 200", function()
    local server, got = nil, {}
    uas:on("INVITE", function(req)
      server = assert(req:answer())
      server:on("INFO", function(r, dd)
        got[#got + 1] = r.body .. " " .. tostring(dd == server)
        r:reply(200, "Server Got It")
      end)
    end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("x") }) end)
    H.run_until(function() return server end)
    local r1 = H.run(function() return d:request("INFO", { body = "ping", content_type = "text/plain" }) end)
    assert.equal("Server Got It", r1.reason)
    assert.same({ "ping true" }, got)
    local r2 = H.run(function() return server:request("INFO", { body = "pong", content_type = "text/plain" }) end)
    assert.equal(200, r2.status)
    H.run(function() d:bye() end)
  end)

  it("refreshes the session with a re-INVITE, answered with the current SDP by default", function()
    local server
    uas:on("INVITE", function(req) server = assert(req:answer{ body = SDP_A, content_type = "application/sdp" }) end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("x"), body = SDP_B }) end)
    local res = H.run(function() return d:request("INVITE", { body = SDP_B, content_type = "application/sdp" }) end)
    assert.equal(200, res.status)
    assert.equal(SDP_A, res.body)
    server:on("INVITE", function(req) req:reply(488) end)
    local _, err, code = H.run(function()
      return d:request("INVITE", { body = SDP_B, content_type = "application/sdp" })
    end)
    assert.equal(488, code)
    assert.matches("^488", err)
    assert.equal("confirmed", d:state())
    H.run(function() d:bye() end)
  end)

  it("ends on a BYE from the callee and wakes what waits on the dialog", function()
    local server, bye_result
    uas:on("INVITE", function(req)
      server = assert(req:answer())
      sip.sleep(0.1)
      bye_result = { server:bye() }
    end)
    local reason = H.run(function()
      local d = assert(uac:invite{ uri = uas:uri("x") })
      return d:wait_end(5)
    end)
    assert.equal("remote bye", reason)
    H.run_until(function() return bye_result end)
    assert.same({ true }, bye_result)
    local _, err = H.run(function() return server:request("INFO") end)
    assert.equal("dialog terminated", err)
  end)

  it("answers a hold re-INVITE (sendonly) with recvonly by default", function()
    local offer = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
      .. "m=audio 4000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n"
    uas:on("INVITE", function(req) assert(req:answer{ body = offer }) end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("x"), body = offer }) end)
    local res = H.run(function()
      return d:request("INVITE", { body = sip.sdp.hold(offer), content_type = "application/sdp" })
    end)
    assert.equal("recvonly", sip.sdp.parse(res.body).media[1].direction)
    H.run(function() d:bye() end)
  end)

  it("answers 500 to an in-dialog request with a lower CSeq", function()
    uas:on("INVITE", function(req) assert(req:answer()) end)
    local d, res = H.run(function() return assert(uac:invite{ uri = uas:uri("x") }) end)
    assert.equal(200, H.run(function() return d:request("INFO") end).status)
    local _, _, code = H.run(function()
      return uac:request{ method = "INFO", uri = uas:contact(), headers = {
        ["Call-ID"] = res.call_id, From = res.from.value, To = res.to.value, CSeq = "1 INFO" } }
    end)
    assert.equal(500, code)
    H.run(function() d:bye() end)
  end)

  it("answers 481 to an in-dialog request for an unknown dialog, or hands it over when asked", function()
    uas:on("BYE", function(req) req:reply(200, "Handler") end)
    local headers = { From = "<sip:a@127.0.0.1>;tag=a1", To = "<sip:b@127.0.0.1>;tag=nope" }
    local _, err, code = H.run(function()
      return uac:request{ method = "BYE", uri = uas:contact(), headers = headers }
    end)
    assert.equal(481, code)
    assert.equal("481 Call/Transaction Does Not Exist", err)
    local open = H.agent{ in_dialog = "handler" }
    open:on("BYE", function(req) req:reply(200, "Handler") end)
    local res = H.run(function()
      return uac:request{ method = "BYE", uri = open:contact(), headers = headers }
    end)
    assert.equal("Handler", res.reason)
  end)

  it("carries UPDATE in an early dialog (RFC 3311), then confirms the same dialog", function()
    local uas_early, uas_update
    uas:on("INVITE", function(req)
      uas_early = req:early()
      uas_early:on("UPDATE", function(u, d)
        uas_update = { d:state(), u.body }
        u:reply(200, { body = SDP_A, content_type = "application/sdp" })
      end)
      assert(req:reply(183, { reliable = true, body = SDP_A, content_type = "application/sdp" }))
      sip.sleep(0.2)
      local d = req:answer()
      assert.equal(uas_early, d)
    end)
    local update_res, early_state
    local tx = uac:send{ method = "INVITE", uri = uas:uri("x"), dialog = true }
    tx:on_provisional(function(_, t)
      local d = t:dialog()
      early_state = d:state()
      t:prack_body(SDP_B)
      require("luasip.dialog").init(d)
      sip.spawn(function()
        sip.sleep(0.05)
        update_res = d:request("UPDATE", { body = SDP_B, content_type = "application/sdp" })
      end)
    end)
    local res = H.run(function() return tx:wait(5) end)
    assert.equal(200, res.status)
    assert.equal("early", early_state)
    assert.same({ "early", SDP_B }, uas_update)
    assert.equal(SDP_A, update_res.body)
    local d = tx:dialog()
    assert.equal("confirmed", d:state())
    H.run(function() d:bye() end)
  end)

  it("ends an early dialog when the INVITE fails", function()
    local early
    uas:on("INVITE", function(req)
      early = req:early()
      req:reply(180)
      req:reply(486)
    end)
    local _, _, code = H.run(function() return uac:invite{ uri = uas:uri("x") } end)
    assert.equal(486, code)
    assert.equal("terminated", early:state())
  end)
end)
