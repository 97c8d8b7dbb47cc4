local H = require "spec.helper"

-- Reliable provisional responses (RFC 3262), both sides.
describe("luasip 100rel / PRACK", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  local OFFER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=offer\r\n"
  local ANSWER = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=answer\r\n"

  it("sends 18x reliably, waits for each PRACK (with and without SDP) and answers it 200", function()
    local got = {}
    uas:on("INVITE", function(req)
      local p1 = assert(req:reply(183, { reliable = true, body = OFFER, content_type = "application/sdp" }))
      got[#got + 1] = { p1.method, p1.body, p1:header("RAck") }
      local p2 = assert(req:reply(180, { reliable = true }))
      got[#got + 1] = { p2.method, p2.body, p2:header("RAck") }
      req:answer()
    end)
    local seen = {}
    local d, res = H.run(function()
      return uac:invite{ uri = uas:uri("x"), on_provisional = function(r, tx)
        seen[#seen + 1] = { r.status, r:header("Require"), tonumber(r:header("RSeq")) }
        if r.body then tx:prack_body(ANSWER) end
      end }
    end)
    assert.equal(200, res.status)
    assert.equal(2, #seen)
    assert.equal("100rel", seen[1][2])
    assert.equal(seen[1][3] + 1, seen[2][3])
    assert.equal("PRACK", got[1][1])
    assert.equal(ANSWER, got[1][2])
    assert.equal(seen[1][3] .. " " .. res.cseq .. " INVITE", got[1][3])
    assert.is_nil(got[2][2])
    assert.equal(seen[2][3] .. " " .. res.cseq .. " INVITE", got[2][3])
    -- the dialog's CSeq goes on after the two PRACKs
    local info = H.run(function() return d:request("INFO") end)
    assert.equal(res.cseq + 3, info.cseq)
    H.run(function() d:bye() end)
  end)

  it("raises on a PRACK body type sofia cannot parse, and the PRACK still goes", function()
    local got
    uas:on("INVITE", function(req)
      local p = assert(req:reply(183, { reliable = true, body = OFFER, content_type = "application/sdp" }))
      got = p.body
      req:answer()
    end)
    local err
    local d, res = H.run(function()
      return uac:invite{ uri = uas:uri("x"), on_provisional = function(r, tx)
        if r.body then
          err = select(2, pcall(tx.prack_body, tx, ANSWER, "application/sdp\r\nX-Injected: 1"))
          tx:prack_body(ANSWER)
        end
      end }
    end)
    assert.matches("^luasip.client_tx:prack_body: bad content_type", err)
    assert.equal(200, res.status)
    assert.equal(ANSWER, got)
    H.run(function() d:bye() end)
  end)

  it("refuses a reliable response to a caller without 100rel support", function()
    local got
    uas:on("INVITE", function(req)
      got = { req:reply(183, { reliable = true }) }
      req:reply(421, "Extension Required", { headers = { Require = "100rel" } })
    end)
    local _, _, code = H.run(function()
      return uac:request{ method = "INVITE", uri = uas:uri("x"), headers = { Supported = "timer" } }
    end)
    assert.equal(421, code)
    assert.same({ nil, "the caller does not support 100rel", "unsupported" }, got)
  end)

  it("accepts Require: 100rel from a caller (the core supports it)", function()
    uas:on("INVITE", function(req) req:answer() end)
    local d, res = H.run(function()
      return uac:invite{ uri = uas:uri("x"), headers = { Require = "100rel" } }
    end)
    assert.equal(200, res.status)
    H.run(function() d:bye() end)
  end)

  it("retransmits an unPRACKed reliable 183, then ends the INVITE with 504 (sipp peer)", function()
    local fast = H.agent{ t1 = 0.05 }
    local result
    fast:on("INVITE", function(req) result = { req:reply(183, { reliable = true }) } end)
    local p = H.sipp("spec/peers/noprack.xml", "127.0.0.1:" .. fast:transports()[1].port)
    finally(p.kill)
    H.run_until(function() return p.done() end, 15, "sipp end")
    assert.equal(0, p.done(), p.log())
    assert.same({ nil, "timeout", "timeout" }, result)
  end)
end)
