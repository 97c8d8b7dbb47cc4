local H = require "spec.helper"
local sip = H.sip

describe("luasip proxy (req:proxy)", function()
  local proxy, uac
  before_each(function()
    proxy = H.agent{ in_dialog = "handler" }
    uac = H.agent()
    -- in-dialog requests and ACKs for 2xx follow the Route to us: pass them on
    proxy:on("ACK", function(ack) ack:forward() end)
    proxy:on("BYE", function(req) req:proxy(req.uri) end)
  end)
  after_each(function() H.close_agents() end)

  it("forwards a call with Record-Route; ACK and BYE come back through the proxy", function()
    local callee = H.agent()
    local seen = {}
    callee:on("INVITE", function(req)
      seen.rr = req:headers("Record-Route")
      seen.vias = #req.via
      seen.mf = req.max_forwards
      local d = assert(req:answer())
      seen.ended = d:wait_end(5)
    end)
    proxy:on("INVITE", function(req)
      seen.proxied = { req:proxy(callee:uri("bob"), { record_route = true }) }
    end)
    local d, res = H.run(function()
      return uac:invite{ uri = "sip:bob@example.test", proxy = proxy:contact() }
    end)
    assert.equal(200, res.status)
    assert.equal(1, #seen.rr)
    assert.matches("^<" .. proxy:contact():gsub("%p", "%%%0") .. ";lr>$", seen.rr[1])
    assert.equal(2, seen.vias)
    assert.equal(69, seen.mf)
    assert.same({ "<" .. proxy:contact() .. ";lr>" }, res:headers("Record-Route"))
    assert.equal(1, #res.via)
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return seen.ended end)
    assert.equal("remote bye", seen.ended)
    assert.equal(200, seen.proxied[1].status)
  end)

  it("puts a double Record-Route (RFC 5658) when a call changes transport, and routes both ways", function()
    -- the proxy on UDP and on TCP; the caller reaches it over TCP, the callee over UDP
    local both = H.agent{ listen = { "sip:127.0.0.1:0", "sip:127.0.0.1:0;transport=tcp" },
      in_dialog = "handler" }
    local tp = both:transports()
    local udp = "sip:127.0.0.1:" .. tp[1].port
    local tcp = "sip:127.0.0.1:" .. tp[2].port .. ";transport=tcp"
    assert.equal("tcp", tp[2].transport:lower())
    local callee, caller = H.agent(), H.agent{ listen = { "sip:127.0.0.1:0;transport=tcp" } }
    local seen, byes = {}, {}
    both:on("INVITE", function(req) req:proxy(callee:uri("bob"), { record_route = true }) end)
    both:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)
    both:on("BYE", function(req)
      byes[#byes + 1] = { transport = req.transport:lower(), routes = req:headers("Route") }
      if req:loose_route() then req:proxy(req.uri) else req:reply(404) end
    end)
    local ended = {}
    callee:on("INVITE", function(req)
      seen.rr = req:headers("Record-Route")
      local d = assert(req:answer())
      seen.dialogs = seen.dialogs or {}
      seen.dialogs[#seen.dialogs + 1] = d
      ended.callee = d:wait_end(5)
    end)
    callee:on("ACK", function() end)
    local d, res = H.run(function()
      return caller:invite{ uri = callee:uri("bob"), proxy = tcp }
    end)
    assert.equal(200, res.status)
    -- the callee's side on top (it sends there), the caller's under it, both marked r2
    assert.same({ "<" .. udp .. ";lr;r2=on>", "<" .. tcp .. ";lr;r2=on>" }, seen.rr)
    assert.same(seen.rr, res:headers("Record-Route"))
    -- the caller hangs up: over TCP to the proxy, which takes both Routes off
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return ended.callee end)
    assert.equal("remote bye", ended.callee)
    assert.equal("tcp", byes[1].transport)
    assert.same({ "<" .. tcp .. ";lr;r2=on>", "<" .. udp .. ";lr;r2=on>" }, byes[1].routes)
    -- a second call, the callee hangs up: over UDP to the proxy, and on to the caller
    d = H.run(function() return assert(caller:invite{ uri = callee:uri("bob"), proxy = tcp }) end)
    local ended_caller
    sip.spawn(function() ended_caller = d:wait_end(5) end)
    H.run_until(function() return seen.dialogs and #seen.dialogs == 2 end)
    H.run(function() assert.is_true(seen.dialogs[2]:bye()) end)
    H.run_until(function() return ended_caller end)
    assert.equal("remote bye", ended_caller)
    assert.equal("udp", byes[2].transport)
    assert.same({ "<" .. udp .. ";lr;r2=on>", "<" .. tcp .. ";lr;r2=on>" }, byes[2].routes)
  end)

  it("puts one Record-Route when the call stays on one transport, and a flow token in it", function()
    local callee = H.agent()
    local rr
    callee:on("INVITE", function(req) rr = req:headers("Record-Route"); req:reply(486) end)
    proxy:on("INVITE", function(req) req:proxy(callee:uri("bob"), { record_route = "ob-7f" }) end)
    local _, _, code = H.run(function()
      return uac:invite{ uri = "sip:bob@example.test", proxy = proxy:contact() }
    end)
    assert.equal(486, code)
    assert.same({ "<" .. proxy:contact():gsub("^sip:", "sip:ob-7f@") .. ";lr>" }, rr)
  end)

  it("forks in parallel: the first 200 wins and the other branch is cancelled", function()
    local a, b = H.agent(), H.agent()
    local b_result
    a:on("INVITE", function(req) req:reply(180); sip.sleep(0.1); req:answer() end)
    b:on("INVITE", function(req) req:reply(180); b_result = { sip.sleep(5) } end)
    local provisional = 0
    proxy:on("INVITE", function(req) req:proxy({ a:uri("x"), b:uri("x") }, { record_route = true }) end)
    local d, res = H.run(function()
      return uac:invite{ uri = "sip:x@example.test", proxy = proxy:contact(),
        on_provisional = function() provisional = provisional + 1 end }
    end)
    assert.equal(200, res.status)
    assert.equal(a:contact(), d:target())
    assert.is_true(provisional >= 1)
    H.run_until(function() return b_result end)
    assert.same({ nil, "cancelled", "cancelled" }, b_result)
    H.run(function() d:bye() end)
  end)

  it("forks sequentially: a 486 moves on to the next target", function()
    local a, b = H.agent(), H.agent()
    local order = {}
    a:on("INVITE", function(req) order[#order + 1] = "a"; req:reply(486) end)
    b:on("INVITE", function(req) order[#order + 1] = "b"; req:answer() end)
    proxy:on("INVITE", function(req)
      req:proxy({ a:uri("x"), b:uri("x") }, { forking = "sequential" })
    end)
    local d, res = H.run(function()
      return uac:invite{ uri = "sip:x@example.test", proxy = proxy:contact() }
    end)
    assert.equal(200, res.status)
    assert.same({ "a", "b" }, order)
    H.run(function() d:bye() end)
  end)

  it("returns the best final response when every branch fails", function()
    local a, b = H.agent(), H.agent()
    a:on("MESSAGE", function(req) req:reply(486) end)
    b:on("MESSAGE", function(req) req:reply(404) end)
    local got
    proxy:on("MESSAGE", function(req)
      got = { req:proxy({ a:uri("x"), b:uri("x") }) }
    end)
    local _, err, code = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:x@example.test", proxy = proxy:contact(),
        body = "hi", content_type = "text/plain" }
    end)
    assert.equal(404, code)
    assert.equal("404 Not Found", err)
    H.run_until(function() return got end)
    assert.equal(404, got[3])
  end)

  it("sends a 500 upstream when the best response is a 503 (RFC 3261 16.7), Lua gets the 503", function()
    local a, b = H.agent(), H.agent()
    a:on("MESSAGE", function(req) req:reply(503, "Overloaded", { headers = { ["Retry-After"] = "30" } }) end)
    b:on("MESSAGE", function(req) req:reply(503, "Overloaded", { headers = { ["Retry-After"] = "30" } }) end)
    local got
    proxy:on("MESSAGE", function(req)
      got = { req:proxy({ a:uri("x"), b:uri("x") }) }
    end)
    local res, err, code, resp = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:x@example.test", proxy = proxy:contact(),
        body = "hi", content_type = "text/plain" }
    end)
    assert.is_nil(res)
    assert.equal(500, code, err)
    assert.equal("500 Server Internal Error", err)
    assert.equal("30", resp and resp:header("Retry-After"))
    H.run_until(function() return got end)
    assert.equal(503, got[3])
    assert.equal("503 Overloaded", got[2])
  end)

  it("propagates CANCEL to a ringing branch", function()
    local callee = H.agent()
    local callee_result
    callee:on("INVITE", function(req) req:reply(180); callee_result = { sip.sleep(5) } end)
    local proxied
    proxy:on("INVITE", function(req) proxied = { req:proxy(callee:uri("x")) } end)
    local tx = uac:send{ method = "INVITE", uri = "sip:x@example.test", proxy = proxy:contact() }
    tx:on_provisional(function() tx:cancel() end)
    local res, _, code = H.run(function() return tx:wait(5) end)
    assert.is_nil(res)
    assert.equal(487, code)
    H.run_until(function() return callee_result and proxied end)
    assert.same({ nil, "cancelled", "cancelled" }, callee_result)
    assert.same({ nil, "cancelled", "cancelled" }, proxied)
  end)

  it("answers 483 when Max-Forwards is 0 and 482 when the request loops", function()
    proxy:on("OPTIONS", function(req) req:proxy(req.uri) end)
    local _, _, code = H.run(function()
      return uac:request{ method = "OPTIONS", uri = proxy:uri("x"), headers = { ["Max-Forwards"] = "0" } }
    end)
    assert.equal(483, code)
    -- a request without To tag that comes back is caught by nta's merge check (482);
    -- an in-dialog one by the branch hash of RFC 3261 16.3 step 4
    local _, _, code2 = H.run(function()
      return uac:request{ method = "OPTIONS", uri = proxy:uri("loop") }
    end)
    assert.equal(482, code2)
    proxy:on("INFO", function(req) req:proxy(req.uri) end)
    local _, err, code3 = H.run(function()
      return uac:request{ method = "INFO", uri = proxy:uri("loop"),
        headers = { To = "<sip:loop@127.0.0.1>;tag=t1" } }
    end)
    assert.equal(482, code3)
    assert.equal("482 Loop Detected", err)
  end)

  it("adds and removes headers on the forwarded request", function()
    local callee = H.agent()
    local got
    callee:on("MESSAGE", function(req)
      got = { req:header("X-Added"), req:header("Subject"), req:header("X-Secret") }
      req:reply(200)
    end)
    proxy:on("MESSAGE", function(req)
      req:proxy(callee:uri("x"), { headers = { ["X-Added"] = "yes", Subject = false, ["X-Secret"] = false } })
    end)
    local res = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:x@example.test", proxy = proxy:contact(),
        headers = { Subject = "hi", ["X-Secret"] = "s3" }, body = "m", content_type = "text/plain" }
    end)
    assert.equal(200, res.status)
    assert.same({ "yes" }, got)
  end)

  it("relays a response with the header lines the caller wrote, not re-encoded", function()
    -- RFC 3261 16.7: a proxy passes a response on unchanged but for its own Via; From,
    -- Call-ID and CSeq come back as written (no <> added, spacing and compact form kept)
    local callee = H.agent()
    callee:on("MESSAGE", function(req) req:reply(200) end)
    proxy:on("MESSAGE", function(req) req:proxy(callee:uri("x")) end)
    local lines = { "f: sip:a@127.0.0.1;tag=odd1", "i:   odd-call-id@raw", "CSeq:  7   MESSAGE" }
    local reply = H.send_raw(proxy:transports()[1].port, table.concat{
      "MESSAGE sip:x@127.0.0.1 SIP/2.0\r\n",
      "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bKrelaytext", os.time(), "\r\n",
      lines[1], "\r\n", "To: <sip:x@127.0.0.1>\r\n", lines[2], "\r\n", lines[3], "\r\n",
      "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n" }, "udp", 3, "reply")
    assert.matches("^SIP/2.0 200 ", reply)
    for _, line in ipairs(lines) do
      assert.truthy(reply:find("\r\n" .. line .. "\r\n", 1, true), line .. " in:\n" .. reply)
    end
  end)

  it("follows a 3xx to its Contacts when asked", function()
    local mover, final = H.agent(), H.agent()
    mover:on("INVITE", function(req)
      req:reply(302, { headers = { Contact = "<" .. final:uri("new") .. ">" } })
    end)
    local reached
    final:on("INVITE", function(req) reached = req.uri; req:answer() end)
    proxy:on("INVITE", function(req) req:proxy(mover:uri("old"), { follow_redirects = true }) end)
    local d, res = H.run(function()
      return uac:invite{ uri = "sip:old@example.test", proxy = proxy:contact() }
    end)
    assert.equal(200, res.status)
    assert.equal(final:uri("new"), reached)
    H.run(function() d:bye() end)
  end)

  it("merges the challenges of every branch into the 401/407 it forwards", function()
    local a, b = H.agent(), H.agent()
    a:on("MESSAGE", function(req)
      req:reply(401, { headers = { ["WWW-Authenticate"] = 'Digest realm="a", nonce="1"' } })
    end)
    b:on("MESSAGE", function(req)
      req:reply(407, { headers = { ["Proxy-Authenticate"] = 'Digest realm="b", nonce="2"' } })
    end)
    proxy:on("MESSAGE", function(req) req:proxy({ a:uri("x"), b:uri("x") }) end)
    local _, _, code, res = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:x@example.test", proxy = proxy:contact(),
        body = "m", content_type = "text/plain" }
    end)
    assert.equal(407, code)
    assert.equal('Digest realm="a", nonce="1"', res:header("WWW-Authenticate"))
    assert.equal('Digest realm="b", nonce="2"', res:header("Proxy-Authenticate"))
  end)

  it("forwards statelessly when asked", function()
    local callee = H.agent()
    callee:on("OPTIONS", function(req) req:reply(200, "Direct") end)
    local forwarded
    proxy:on("OPTIONS", function(req) forwarded = { req:proxy(callee:uri("x"), { stateless = true }) } end)
    local res = H.run(function()
      return uac:request{ method = "OPTIONS", uri = "sip:x@example.test", proxy = proxy:contact() }
    end)
    assert.equal("Direct", res.reason)
    assert.same({ true }, forwarded)
  end)
  it("loose_route: the top Route's host and port, as written, against the agent's", function()
    local uas = H.agent()
    local seen = {}
    uas:on("MESSAGE", function(req) seen[#seen + 1] = req:loose_route(); req:reply(200) end)
    local port = uas:contact():match(":(%d+)$")
    local routes = {
      "<sip:someone@127.0.0.1:" .. port .. ";lr>",   -- a user part is ignored
      "<sips:127.0.0.1:" .. port .. ";lr>",          -- sips with its port written
      "<sip:127.0.0.1;lr>",                          -- no port: 5060, not ours
      "<sip:127.0.0.1:0" .. port .. ";lr>",          -- the port as written
      "<sip:127.0.0.1:" .. port .. ";lr>, <sip:127.0.0.2;lr>",  -- the top one counts
      "<sip:127.0.0.2;lr>, <sip:127.0.0.1:" .. port .. ";lr>",
    }
    H.run(function()
      for _, r in ipairs(routes) do
        uac:request{ method = "MESSAGE", uri = uas:uri(), proxy = uas:uri(), body = "x",
          content_type = "text/plain", headers = { Route = r } }
      end
    end)
    assert.same({ true, true, false, false, true, false }, seen)
  end)
end)
