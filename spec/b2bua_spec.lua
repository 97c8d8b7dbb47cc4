local H = require "spec.helper"
local S = require "spec.peers.sipp"
local sip = H.sip
local dispatcher = require "luasip.dispatcher"

-- sip.b2bua: caller agent A -> B2BUA agent -> callee agent C, all luasip on loopback;
-- then sipp -> B2BUA -> sipp, and examples/b2bua.lua as a process between two sipps.
local it_sipp = S.available() and it or pending

local function sdp(name)
  return table.concat({ "v=0", "o=" .. name .. " 1 1 IN IP4 127.0.0.1", "s=" .. name,
    "c=IN IP4 127.0.0.1", "t=0 0", "m=audio 4000 RTP/AVP 0", "" }, "\r\n")
end
local SDP_A, SDP_C, EARLY = sdp("alice"), sdp("carol"), sdp("early")
local CT = "application/sdp"

local defer = H.defer_with(function(f) finally(f) end)

describe("sip.b2bua between luasip agents", function()
  local a, bx, c, result
  before_each(function()
    a, bx, c = H.agent(), H.agent(), H.agent()
    result = nil
  end)
  after_each(function() H.close_agents() end)

  -- the B2BUA bridges every INVITE to targets (default: C, same user) with opts
  local function b2bua(targets, opts)
    bx:on("INVITE", function(req)
      local t = targets or c:uri(req.ruri.user)
      result = { sip.b2bua(req, t, opts) }
    end)
  end

  -- C answers every INVITE after 183 with early media and 180; returns { dialog, req }
  local function answering_callee()
    local callee = {}
    c:on("INVITE", function(req)
      callee.req = { body = req.body, ctype = req.content_type, from = req.from,
        user = req.ruri.user, mf = req.max_forwards, x = req:header("X-Leg") }
      req:reply(183, { body = EARLY, content_type = CT })
      req:reply(180)
      callee.dialog = assert(req:answer{ body = SDP_C, content_type = CT })
    end)
    return callee
  end

  -- A calls the B2BUA -> A's dialog, the response, the provisional responses A got
  local function call(user, extra)
    local prov = {}
    local d, res = H.run(function()
      local o = { uri = bx:uri(user or "carol"), body = SDP_A,
        from = '"Alice A." <sip:alice@127.0.0.1>',
        on_provisional = function(r) prov[#prov + 1] = { r.status, r.reason, r.body } end }
      for k, v in pairs(extra or {}) do o[k] = v end
      return assert(a:invite(o))
    end)
    H.run_until(function() return result end, 5, "sip.b2bua returned")
    return d, res, prov
  end

  -- A sends an INVITE (no dialog) to user at the B2BUA -> res | nil, err, code, res
  local function try(user)
    return H.run(function()
      return a:request{ method = "INVITE", uri = bx:uri(user), body = SDP_A, content_type = CT }
    end)
  end

  it("bridges a call: SDP both ways, 18x with their bodies, From kept; returns both dialogs",
    function()
      b2bua()
      local callee = answering_callee()
      local d, res, prov = call("carol")
      assert.equal(200, res.status)
      assert.equal(SDP_C, res.body)
      assert.equal(CT, res.content_type)
      assert.same({ { 183, "Session Progress", EARLY }, { 180, "Ringing" } }, prov)
      assert.equal(SDP_A, callee.req.body)
      assert.equal(CT, callee.req.ctype)
      assert.equal("carol", callee.req.user)
      assert.equal("sip:alice@127.0.0.1", callee.req.from.uri)
      assert.equal("Alice A.", callee.req.from.display)
      assert.equal(69, callee.req.mf)                 -- a hop, for loop protection
      local la, lb = result[1], result[2]
      assert.equal("uas", la.role)
      assert.equal("uac", lb.role)
      assert.equal(d.local_tag, la.remote_tag)
      assert.equal(callee.dialog.local_tag, lb.remote_tag)
      assert.equal(SDP_A, la.remote_sdp)
      assert.equal(SDP_C, lb.remote_sdp)
      assert.are_not.equal(res.call_id, callee.dialog.remote_tag)
      H.run(function() assert.is_true(d:bye()) end)
    end)

  it("ends the callee's leg on a BYE from the caller", function()
    b2bua()
    local callee = answering_callee()
    local d = call()
    local ended
    sip.spawn(function() ended = callee.dialog:wait_end(5) end)
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return ended end, 5, "callee's dialog ended")
    assert.equal("remote bye", ended)
    assert.equal("terminated", result[1]:state())
    assert.equal("terminated", result[2]:state())
  end)

  it("ends the caller's leg on a BYE from the callee", function()
    b2bua()
    local callee = answering_callee()
    local d = call()
    sip.spawn(function() callee.dialog:bye() end)
    assert.equal("remote bye", H.run(function() return d:wait_end(5) end))
    H.run_until(function() return result[1]:state() == "terminated" end)
    assert.equal("terminated", result[2]:state())
  end)

  it("relays a re-INVITE and INFO either way with status, reason, body and content type",
    function()
      b2bua()
      local callee = answering_callee()
      local d = call()
      local cd, seen = callee.dialog, {}
      cd:on("INVITE", function(r)
        seen.reinvite = r.body
        if r.body:find("reject") then return r:reply(488, "Not Here") end
        r:reply(200, { body = sdp("carol2"), content_type = CT })
      end)
      local res = H.run(function()
        return d:request("INVITE", { body = sdp("alice2"), content_type = CT })
      end)
      assert.equal(200, res.status)
      assert.equal(sdp("carol2"), res.body)
      assert.equal(sdp("alice2"), seen.reinvite)
      assert.equal(sdp("carol2"), result[1].local_sdp)
      local _, err, code = H.run(function()
        return d:request("INVITE", { body = sdp("reject"), content_type = CT })
      end)
      assert.equal(488, code)
      assert.equal("488 Not Here", err)
      assert.equal("confirmed", d:state())
      d:on("INFO", function(r)
        seen.info = { r.body, r.content_type }
        r:reply(200, "Got It", { body = "thanks", content_type = "text/plain" })
      end)
      res = H.run(function()
        return cd:request("INFO", { body = "Signal=5\r\nDuration=160\r\n",
          content_type = "application/dtmf-relay" })
      end)
      assert.same({ "Signal=5\r\nDuration=160\r\n", "application/dtmf-relay" }, seen.info)
      assert.equal("Got It", res.reason)
      assert.equal("thanks", res.body)
      assert.equal("text/plain", res.content_type)
      res = H.run(function()
        return d:request("UPDATE", { body = sdp("alice3"), content_type = CT })
      end)
      -- C's default answer: its current session, the one its re-INVITE answer set
      assert.equal(200, res.status)
      assert.equal(sdp("carol2"), res.body)
      H.run(function() d:bye() end)
    end)

  it("relays a reliable 183 reliably and answers after the caller's PRACK (RFC 3262)",
    function()
      b2bua()
      local callee = {}
      c:on("INVITE", function(req)
        local prack, err = req:reply(183, { reliable = true, body = EARLY, content_type = CT })
        callee.prack = prack and prack.method or err
        callee.dialog = assert(req:answer{ body = SDP_C, content_type = CT })
      end)
      local prov = {}
      local d, res = H.run(function()
        return assert(a:invite{ uri = bx:uri("carol"), body = SDP_A, on_provisional = function(r)
          prov[#prov + 1] = { r.status, r.body, r:header("RSeq") ~= nil, r:header("Require") }
        end })
      end)
      assert.equal(200, res.status)
      assert.same({ { 183, EARLY, true, "100rel" } }, prov)
      assert.equal("PRACK", callee.prack)      -- the B2BUA's own PRACK on leg B
      H.run_until(function() return result end)
      assert.equal("confirmed", result[1]:state())
      H.run(function() d:bye() end)
    end)

  it("relays an UPDATE in the early dialogs, before the answer (RFC 3311)", function()
    b2bua()
    local callee, ringing = {}, nil
    c:on("INVITE", function(req)
      local early = req:early()
      ringing = dispatcher.new_slot("spec")
      early:on("UPDATE", function(u, d)
        callee.update = { d:state(), u.body }
        u:reply(200, { body = sdp("carol-upd"), content_type = CT })
        dispatcher.fill(ringing, true)
      end)
      assert(req:reply(183, { reliable = true, body = EARLY, content_type = CT }))
      dispatcher.wait(ringing, 5)                  -- rings until the UPDATE came
      callee.dialog = assert(req:answer{ body = SDP_C, content_type = CT })
    end)
    local update
    local tx = a:send{ method = "INVITE", uri = bx:uri("carol"), dialog = true, body = SDP_A,
      content_type = CT }
    tx:on_provisional(function(_, t)
      local d = require("luasip.dialog").init(t:dialog())
      sip.spawn(function()
        local state = d:state()
        update = { state, d:request("UPDATE", { body = sdp("alice-upd"), content_type = CT }) }
      end)
    end)
    local res = H.run(function() return tx:wait(5) end)
    assert.equal(200, res.status)
    assert.same({ "early", sdp("alice-upd") }, callee.update)
    assert.equal("early", update[1])
    assert.equal(sdp("carol-upd"), update[2].body)
    H.run_until(function() return result end)
    assert.equal(callee.dialog.local_tag, result[2].remote_tag)
    H.run(function() tx:dialog():bye() end)
    H.run_until(function() return callee.dialog:state() == "terminated" end)
  end)

  it("passes a CANCEL from the caller to the ringing callee; the caller gets 487", function()
    b2bua()
    local callee = {}
    c:on("INVITE", function(req)
      req:reply(180)
      callee.slept = { sip.sleep(10) }
      callee.cancelled = req:cancelled()
    end)
    local t0 = sip.now()
    local res, err, code = H.run(function()
      return a:request{ method = "INVITE", uri = bx:uri("carol"), body = SDP_A,
        content_type = CT, on_provisional = function(pr, tx)
          if pr.status == 180 then tx:cancel() end
        end }
    end)
    assert.is_nil(res)
    assert.equal(487, code, err)
    H.run_until(function() return callee.cancelled ~= nil and result end, 5)
    assert.same({ nil, "cancelled" }, { callee.slept[1], callee.slept[2] })
    assert.is_true(callee.cancelled)
    assert.same({ nil, "cancelled", "cancelled" }, result)
    assert.is_true(sip.now() - t0 < 3)
  end)

  it("passes the callee's failure to the caller: status, reason, Retry-After", function()
    b2bua()
    c:on("INVITE", function(req)
      req:reply(486, "Gone Fishing", { headers = { ["Retry-After"] = "60" } })
    end)
    local _, err, code, res = try("carol")
    assert.equal(486, code)
    assert.equal("486 Gone Fishing", err)
    assert.equal("60", res:header("Retry-After"))
    H.run_until(function() return result end)
    assert.equal(486, result[3])
    assert.equal("486 Gone Fishing", result[2])
    assert.equal(486, result[4].status)
  end)

  it("tries a list of targets in turn until one answers; a 6xx ends the hunt", function()
    local tried = {}
    c:on("INVITE", function(req)
      local user = req.ruri.user
      tried[#tried + 1] = user
      if user == "off" then return req:reply(480) end
      if user == "busy" then return req:reply(486) end
      if user == "decline" then return req:reply(603) end
      assert(req:answer{ body = SDP_C, content_type = CT })
    end)
    b2bua({ c:uri("off"), c:uri("busy"), c:uri("on"), c:uri("never") })
    local d, res = call()
    assert.equal(200, res.status)
    assert.same({ "off", "busy", "on" }, tried)
    H.run(function() d:bye() end)
    tried, result = {}, nil
    b2bua({ c:uri("busy"), c:uri("decline"), c:uri("on") })
    local _, _, code = try("x")
    assert.equal(603, code)
    assert.same({ "busy", "decline" }, tried)
    tried, result = {}, nil
    b2bua({ c:uri("off"), c:uri("busy") })   -- all failed: the lowest class, the first of it
    _, _, code = try("x")
    assert.equal(480, code)
  end)

  it("cancels a callee that rings past the timeout: 480 to the caller (408 without a 18x)",
    function()
      b2bua(nil, { timeout = 0.3 })
      local callee = {}
      c:on("INVITE", function(req)
        req:reply(180)
        callee.slept = { sip.sleep(10) }
      end)
      local t0 = sip.now()
      local _, err, code = try("carol")
      assert.equal(480, code)
      assert.equal("480 No Answer", err)
      H.run_until(function() return callee.slept end, 5)
      assert.equal("cancelled", callee.slept[2])
      assert.is_true(sip.now() - t0 < 3)
      c:on("INVITE", function() sip.sleep(10) end)    -- not even ringing: 408
      _, err, code = try("carol")
      assert.equal(408, code, err)
    end)

  it("answers a digest challenge of the callee with opts.auth, from opts.agent", function()
    local out = H.agent()
    b2bua(nil, { agent = out, auth = { username = "trunk", password = "s3cret" } })
    local users = {}
    c:on("INVITE", function(req)
      local user, status = sip.auth.check(req, { realm = "carrier", password = function(u)
        return u == "trunk" and "s3cret" or nil
      end })
      users[#users + 1] = user or status
      if not user then return end
      users.via = req:header("Via")
      assert(req:answer{ body = SDP_C, content_type = CT })
    end)
    local d, res = call()
    assert.equal(200, res.status)
    assert.same({ 401, "trunk" }, { users[1], users[2] })
    assert.matches(":" .. out:transports()[1].port .. ";", users.via)
    H.run(function() d:bye() end)
  end)

  it("lets the script change headers and SDP both ways, or refuse the call", function()
    local seen = {}
    b2bua(nil, {
      headers = { ["X-Leg"] = "b" },
      on_request = function(req, o, leg)
        seen[#seen + 1] = "request " .. req.method .. " from " .. leg
        if req.ruri and req.ruri.user == "nobody" then return 404 end
        o.body = o.body:gsub("m=audio 4000", "m=audio 5000")
      end,
      on_answer = function(res, o, leg)
        seen[#seen + 1] = "answer " .. res.status .. " from " .. leg
        if o.body then return (o.body:gsub("m=audio 4000", "m=audio 6000")) end
      end })
    local callee = answering_callee()
    local d, res, prov = call()
    assert.equal("b", callee.req.x)
    assert.matches("m=audio 5000", callee.req.body)
    assert.matches("m=audio 6000", res.body)
    assert.matches("m=audio 6000", prov[1][3])
    assert.same({ "request INVITE from a", "answer 183 from b", "answer 180 from b",
      "answer 200 from b" }, seen)
    H.run(function() d:bye() end)
    result = nil
    local _, err, code = try("nobody")
    assert.equal(404, code)
    assert.equal("404 Not Found", err)
    H.run_until(function() return result end)
    assert.same({ nil, "rejected by on_request", 404 }, result)
  end)

  it("raises for programmer errors", function()
    local errs = {}
    bx:on("OPTIONS", function(req)
      errs[1] = select(2, pcall(sip.b2bua, req, c:uri("x")))
      req:reply(200)
    end)
    bx:on("INVITE", function(req)
      errs[2] = select(2, pcall(sip.b2bua, req, {}))
      errs[3] = select(2, pcall(sip.b2bua, req, c:uri("x"), { timeout = -1 }))
      errs[4] = select(2, pcall(sip.b2bua, "req", c:uri("x")))
      req:reply(603)
    end)
    H.run(function()
      a:request{ method = "OPTIONS", uri = bx:uri("x") }
      a:request{ method = "INVITE", uri = bx:uri("x") }
    end)
    assert.matches("luasip.b2bua: only an INVITE can be bridged", errs[1])
    assert.matches("luasip.b2bua: targets must be a URI or a non%-empty list", errs[2])
    assert.matches("luasip.b2bua: timeout must be a positive number", errs[3])
    assert.matches("luasip.b2bua: luasip.request expected, got string", errs[4])
  end)
end)

describe("sip.b2bua between two sipps", function()
  local bx, result
  before_each(function()
    bx = H.agent()
    result = nil
  end)
  after_each(function() H.close_agents() end)

  local function target(a) return "127.0.0.1:" .. a:transports()[1].port end

  -- sipp UAS (scenario or built-in) -> proc, bound
  local function sipp_uas(o)
    local p = S.run(o)
    defer(function() S.stop(p) end)
    S.wait_bound(p)
    return p
  end

  local function bridge_to(uas)
    bx:on("INVITE", function(req)
      result = { sip.b2bua(req, "sip:" .. req.ruri.user .. "@127.0.0.1:" .. uas.port) }
      if result[1] then result.ended = result[1]:wait_end(10) end
    end)
  end

  local function passed(p, other)
    assert.equal(0, S.wait(p), p.report() .. "\n=== other sipp\n" .. other.report())
  end

  it_sipp("bridges a sipp call to sipp: SDP, 180, ACK, INFO and BYE pass through", function()
    local uas = sipp_uas{ scenario = "../b2bua/uas" }
    bridge_to(uas)
    local uac = S.run{ scenario = "../b2bua/uac", target = target(bx) }
    defer(function() S.stop(uac) end)
    passed(uac, uas)
    passed(uas, uac)
    assert.equal("userdata", type(result[1]))
    H.run_until(function() return result.ended end, 5, "leg A ended")
    assert.equal("remote bye", result.ended)          -- the uac hung up
    assert.equal("terminated", result[2]:state())
  end)

  it_sipp("passes sipp's CANCEL to the ringing sipp; both see 487 and its ACK", function()
    local uas = sipp_uas{ scenario = "uas_cancel" }
    bridge_to(uas)
    local uac = S.run{ scenario = "uac_cancel", target = target(bx) }
    defer(function() S.stop(uac) end)
    passed(uac, uas)
    passed(uas, uac)
    assert.same({ nil, "cancelled", "cancelled" }, result)
  end)

  it_sipp("ends with ACK and BYE a callee's 200 that crossed the caller's CANCEL", function()
    local uas = sipp_uas{ scenario = "../b2bua/uas_cancel_200" }
    bridge_to(uas)
    local uac = S.run{ scenario = "uac_cancel", target = target(bx) }
    defer(function() S.stop(uac) end)
    passed(uac, uas)
    passed(uas, uac)                      -- it got the ACK and the BYE
    assert.same({ nil, "cancelled", "cancelled" }, result)
  end)

  it_sipp("passes the callee sipp's 486 to the caller sipp", function()
    local uas = sipp_uas{ scenario = "uas_busy" }
    bridge_to(uas)
    local uac = S.run{ scenario = "../b2bua/uac_busy", target = target(bx) }
    defer(function() S.stop(uac) end)
    passed(uac, uas)
    passed(uas, uac)
    assert.equal(486, result[3])
  end)

  it_sipp("runs examples/b2bua.lua between two sipps for three calls", function()
    local uas = sipp_uas{ scenario = "../b2bua/uas", calls = 3 }
    local port = H.free_port()
    local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
    local b2b = H.background({ "env",
      "LUA_PATH=" .. (os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;"),
      "LUA_CPATH=" .. (os.getenv("LUA_CPATH") or ("build/" .. flavour .. "/?.so;;")),
      H.interpreter(), "examples/b2bua.lua", "127.0.0.1:" .. port,
      "127.0.0.1:" .. uas.port }, 30)
    defer(function() S.stop(b2b) end)
    b2b.port = port
    S.wait_bound(b2b)
    local uac = S.run{ scenario = "../b2bua/uac", target = "127.0.0.1:" .. port, calls = 3 }
    defer(function() S.stop(uac) end)
    assert.equal(0, S.wait(uac), uac.report() .. "\n--- b2bua.lua\n" .. b2b.log())
    assert.equal(0, S.wait(uas), uas.report() .. "\n--- b2bua.lua\n" .. b2b.log())
    H.run_until(function()
      local _, n = b2b.log():gsub("call ended: the caller hung up", "")
      return n == 3
    end, 5, "three ended calls in b2bua.lua's log")
    local log = b2b.log()
    assert.matches("listening on sip:127%.0%.0%.1:" .. port, log)
    assert.matches("INVITE sip:service@127%.0%.0%.1:%d+ from sip:sipp@127%.0%.0%.1:%d+ %-> "
      .. "sip:service@127%.0%.0%.1:" .. uas.port, log)
    assert.matches("B: 180 Ringing", log)
    assert.matches("bridged", log)
  end)
end)
