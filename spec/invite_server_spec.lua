local H = require "spec.helper"
local sip = H.sip

-- INVITE server duties and retransmission handling, against sipp as a raw peer.
describe("luasip INVITE server duties (sipp peer)", function()
  after_each(function() H.close_agents() end)

  local function target(a) return "127.0.0.1:" .. a:transports()[1].port end

  it("retransmits an unacknowledged 2xx, then sends BYE after 64*T1", function()
    local uas = H.agent{ t1 = 0.05 }          -- 64*T1 = 3.2 s
    local ack_result
    uas:on("INVITE", function(req)
      req:reply(200)
      ack_result = { req:wait_ack() }
    end)
    local trace = os.tmpname()
    local p = H.sipp("spec/peers/noack.xml", target(uas), { "-trace_msg", "-message_file", trace })
    finally(function() p.kill(); os.remove(trace) end)
    H.run_until(function() return p.done() end, 15, "sipp end")
    assert.equal(0, p.done(), p.log())
    assert.same({ nil, "timeout", "timeout" }, ack_result)
    local f = assert(io.open(trace))
    local _, received_200 = f:read("*a"):gsub("received [^\n]*\n+SIP/2.0 200 OK", "")
    f:close()
    assert.is_true(received_200 >= 5, "only " .. received_200 .. " copies of the 200")
  end)

  -- an INVITE sent as one raw datagram; the status lines of every answer up to the final
  local function invite(a, user)
    return H.send_raw(a:transports()[1].port, H.raw_request("INVITE",
      "sip:" .. user .. "@127.0.0.1", "Contact: <sip:a@127.0.0.1:9>\r\n"), "udp", 3, true)
  end

  it("sends 100 Trying when the INVITE's handler waits before its first answer", function()
    local uas = H.agent()
    uas:on("INVITE", function(req)
      sip.sleep(0.05)
      req:reply(486)
    end)
    assert.equal("SIP/2.0 100 Trying | SIP/2.0 486 Busy Here", invite(uas, "wait"))
  end)

  it("spares the 100 Trying when the handler answers in its first run (RFC 3261 17.2.1)",
    function()
      local uas = H.agent()
      uas:on("INVITE", function(req)
        req:reply(180)
        sip.sleep(0.05)
        req:reply(486)
      end)
      assert.equal("SIP/2.0 180 Ringing | SIP/2.0 486 Busy Here", invite(uas, "ring"))
      uas:on("INVITE", function(req) req:reply(603) end)
      assert.equal("SIP/2.0 603 Decline", invite(uas, "decline"))
      -- req:reply(100) in the first run sends it (once)
      uas:on("INVITE", function(req)
        req:reply(100)
        req:reply(100)
        sip.sleep(0.05)
        req:reply(486)
      end)
      assert.equal("SIP/2.0 100 Trying | SIP/2.0 486 Busy Here", invite(uas, "hundred"))
    end)

  it("runs the handler once for a retransmitted MESSAGE and resends its 200", function()
    local uas = H.agent()
    local deliveries = 0
    uas:on("MESSAGE", function(req)
      deliveries = deliveries + 1
      sip.sleep(0.05)
      req:reply(200)
    end)
    local p = H.sipp("spec/peers/dupmessage.xml", target(uas))
    finally(p.kill)
    H.run_until(function() return p.done() end, 15, "sipp end")
    assert.equal(0, p.done(), p.log())
    assert.equal(1, deliveries)
  end)
end)
