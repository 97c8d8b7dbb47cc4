local H = require "spec.helper"
local sip = H.sip

describe("luasip.agent:request (UAC)", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  it("raises outside a luasip coroutine and on bad arguments, naming the function", function()
    assert.has_error(function() uac:request{ method = "OPTIONS", uri = uas:contact() } end,
      "not in a luasip coroutine: use sip.spawn (luasip.agent:request)")
    H.run(function()
      assert.has_error(function() uac:request{ method = "OPTIONS", uri = "mailto:x" } end,
        "luasip.agent:request: bad uri 'mailto:x' (sip: or sips: expected)")
      assert.has_error(function() uac:request{ method = "ACK", uri = uas:contact() } end,
        "luasip.agent:request: cannot send ACK this way")
      assert.has_error(function()
        uac:request{ method = "OPTIONS", uri = uas:contact(), headers = { "X: a\r\nY: b" } }
      end, "luasip.agent:request: header 'X': the value must not contain CR or LF")
      assert.has_error(function()
        uac:request{ method = "OPTIONS", uri = uas:contact(), timeout = 0 }
      end, "luasip.agent:request: timeout must be a positive number")
      assert.has_error(function()
        uac:request{ method = "OPTIONS", uri = uas:contact(), headers = { ["Bad Name"] = "x" } }
      end, "luasip.agent:request: bad header name 'Bad Name' (a token expected)")
      assert.has_error(function()
        uac:request{ method = "OPTIONS", uri = uas:contact(), headers = { "X Y: z" } }
      end, "luasip.agent:request: bad header name 'X Y' (a token expected)")
      assert.has_error(function()
        uac:request{ method = "MESSAGE", uri = uas:contact(), body = 42, content_type = "text/plain" }
      end, "luasip.agent:request: body must be a string, got number")
      assert.has_error(function()
        uac:send{ method = "MESSAGE", uri = uas:contact(), body = {}, content_type = "text/plain" }
      end, "luasip.agent:send: body must be a string, got table")
    end)
  end)

  it("returns nil, 'timeout' when no final response comes in time", function()
    uas:on("MESSAGE", function(req) sip.sleep(1); req:reply(200) end)
    local t0 = sip.now()
    local res, err, code = H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:contact(), timeout = 0.2,
        body = "x", content_type = "text/plain" }
    end)
    assert.is_nil(res)
    assert.equal("timeout", err)
    assert.equal("timeout", code)
    assert.is_true(sip.now() - t0 < 1)
  end)

  it("cancels an INVITE that times out, so the callee stops ringing", function()
    local callee
    uas:on("INVITE", function(req)
      req:reply(180)
      callee = { sip.sleep(5) }
    end)
    local res, err = H.run(function()
      return uac:request{ method = "INVITE", uri = uas:contact(), timeout = 0.3 }
    end)
    assert.is_nil(res)
    assert.equal("timeout", err)
    H.run_until(function() return callee end, 3)
    assert.same({ nil, "cancelled", "cancelled" }, callee)
  end)

  it("reports an unreachable destination as a 503 from the transport", function()
    local port = H.free_port()
    local res, err, code = H.run(function()
      return uac:request{ method = "OPTIONS", uri = "sip:127.0.0.1:" .. port .. ";transport=tcp" }
    end)
    assert.is_nil(res)
    assert.equal(503, code)
    assert.matches("^503 ", err)
  end)

  it("hands the failure response as fourth value", function()
    uas:on("OPTIONS", function(req)
      req:reply(401, { headers = { ["WWW-Authenticate"] = 'Digest realm="t", nonce="n"' } })
    end)
    local res, err, code, r = H.run(function()
      return uac:request{ method = "OPTIONS", uri = uas:contact() }
    end)
    assert.is_nil(res)
    assert.equal("401 Unauthorized", err)
    assert.equal(401, code)
    assert.equal('Digest realm="t", nonce="n"', r:header("WWW-Authenticate"))
  end)

  it("sends through an outbound proxy URI when asked", function()
    local via_proxy
    local proxy = H.agent()
    proxy:on("OPTIONS", function(req) via_proxy = req.uri; req:reply(200) end)
    local res = H.run(function()
      return uac:request{ method = "OPTIONS", uri = "sip:far@example.invalid", proxy = proxy:contact() }
    end)
    assert.equal(200, res.status)
    assert.equal("sip:far@example.invalid", via_proxy)
  end)

  it("runs two requests concurrently from two coroutines", function()
    uas:on("MESSAGE", function(req) sip.sleep(tonumber(req.body)); req:reply(200, req.body) end)
    local order = {}
    local function go(d)
      sip.spawn(function()
        local res = assert(uac:request{ method = "MESSAGE", uri = uas:contact(), body = d,
          content_type = "text/plain" })
        order[#order + 1] = res.reason
      end)
    end
    go("0.2")
    go("0.05")
    H.run_until(function() return #order == 2 end)
    assert.same({ "0.05", "0.2" }, order)
  end)

  it("works over TCP", function()
    uas:on("OPTIONS", function(req) req:reply(200, req.transport) end)
    local res = H.run(function()
      return uac:request{ method = "OPTIONS", uri = uas:contact() .. ";transport=tcp" }
    end)
    assert.equal("tcp", res.reason)
  end)

  it("cancels an INVITE sent with agent:send when tx:wait times out", function()
    local callee
    uas:on("INVITE", function(req) req:reply(180); callee = { sip.sleep(5) } end)
    local tx = uac:send{ method = "INVITE", uri = uas:contact() }
    assert.is_true(tx.is_invite)
    local res, err = H.run(function() return tx:wait(0.2) end)
    assert.is_nil(res)
    assert.equal("timeout", err)
    H.run_until(function() return callee end, 3)
    assert.same({ nil, "cancelled", "cancelled" }, callee)
  end)

  it("wakes a request waiting on an agent that gets closed", function()
    uas:on("MESSAGE", function(req) sip.sleep(1); req:reply(200) end)
    local got
    sip.spawn(function()
      got = { uac:request{ method = "MESSAGE", uri = uas:contact(), body = "x",
        content_type = "text/plain" } }
    end)
    H.settle(0.05)
    uac:close()
    H.run_until(function() return got end, 2)
    assert.same({ nil, "agent closed", "closed" }, got)
  end)

  it("times a transaction out after 64*T1 of the agent", function()
    local silent = H.agent()
    silent:on("OPTIONS", function() sip.sleep(5) end)
    local fast = H.agent{ t1 = 0.01 }
    local t0 = sip.now()
    local _, _, code = H.run(function()
      return fast:request{ method = "OPTIONS", uri = silent:contact() }
    end)
    assert.equal(408, code)
    assert.is_true(sip.now() - t0 < 3)
  end)
end)
