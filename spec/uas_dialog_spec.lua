local H = require "spec.helper"

local SDP = table.concat({ "v=0", "o=luasip 1 1 IN IP4 127.0.0.1", "s=-",
  "c=IN IP4 127.0.0.1", "t=0 0", "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "" },
  "\r\n")

-- req:reply(2xx) to an INVITE makes the callee's dialog in C, as req:answer does: the
-- caller's in-dialog requests find it (no 481), and its ACK ends the 2xx retransmissions.
describe("luasip.request:reply 2xx to an INVITE", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() assert.equal(2, H.close_agents()) end)

  it("gives the callee a dialog: the caller's BYE gets 200, not 481", function()
    local acked_invite
    uas:on("INVITE", function(req)
      req:reply(200, { body = SDP, content_type = "application/sdp" })
    end)
    uas:on("ACK", function(_, inv) acked_invite = inv and inv.method end)
    local d = H.run(function()
      local d, err, code = uac:invite{ uri = uas:uri("x"), body = SDP, timeout = 3 }
      assert(d, tostring(err) .. " " .. tostring(code))
      return d
    end)
    H.run_until(function() return acked_invite end, 2, "ACK matched to its INVITE")
    local out = H.run(function()
      local res, berr, bcode = d:request("BYE", { timeout = 3 })
      return { status = res and res.status, err = berr, code = bcode }
    end)
    assert.equal("INVITE", acked_invite)
    assert.equal(200, out.status, tostring(out.err) .. " " .. tostring(out.code))
  end)

  it("answers the caller's in-dialog OPTIONS 200 after req:reply(200)", function()
    uas:on("INVITE", function(req)
      req:reply(200, { body = SDP, content_type = "application/sdp" })
    end)
    local out = H.run(function()
      local d = assert(uac:invite{ uri = uas:uri("x"), body = SDP, timeout = 3 })
      local res, _, code = d:request("OPTIONS", { timeout = 3 })
      d:bye()
      return res and res.status or code
    end)
    assert.equal(200, out)
  end)

  it("keeps req:answer's own dialog (no second one)", function()
    local uas_d, ended
    uas:on("INVITE", function(req)
      uas_d = req:answer{ body = SDP }
      if uas_d then uas_d:on_end(function(_, why) ended = why end) end
    end)
    local d = H.run(function()
      return assert(uac:invite{ uri = uas:uri("x"), body = SDP, timeout = 3 })
    end)
    H.run_until(function() return uas_d end, 2, "answer returned")
    local out = H.run(function()
      local res, _, code = d:request("BYE", { timeout = 3 })
      return res and res.status or code
    end)
    assert.equal(200, out)
    H.run_until(function() return ended end, 2, "callee's dialog ended")
    assert.equal("remote bye", ended)
  end)

  it("matches each ACK to its own INVITE with 150 calls in flight", function()
    -- under valgrind (make check-memory) everything runs ~20 times slower: fewer calls
    -- (still more than the table's first 64 slots), more time
    local slow = os.getenv("LUASIP_VALGRIND") ~= nil
    local N, T = slow and 80 or 150, slow and 30 or 5
    local acked, wrong, done, ok = 0, 0, 0, 0
    uas:on("INVITE", function(req)
      req:reply(200, { body = SDP, content_type = "application/sdp" })
      local ack = req:wait_ack(T)
      if ack and ack.call_id == req.call_id and ack.cseq == req.cseq then
        acked = acked + 1
      else
        wrong = wrong + 1
      end
    end)
    for _ = 1, N do
      H.sip.spawn(function()
        local d = uac:invite{ uri = uas:uri("x"), body = SDP, timeout = T }
        if d and d:request("BYE", { timeout = T }).status == 200 then ok = ok + 1 end
        done = done + 1
      end)
    end
    H.run_until(function() return done == N and acked + wrong == N end, 4 * T, N .. " calls")
    assert.equal(0, wrong)
    assert.equal(N, acked)
    assert.equal(N, ok)
  end)
end)
