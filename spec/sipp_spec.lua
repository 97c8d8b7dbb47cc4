local H = require "spec.helper"
local S = require "spec.peers.sipp"
local sip = H.sip

-- luasip against sipp (sip-tester), a SIP implementation nobody here wrote, on loopback:
-- sipp as the caller of an in-process luasip agent, sipp as the callee of agent:request,
-- and examples/uas.lua as a subprocess under sipp's built-in uac.  Scenarios live in
-- spec/peers/sipp/; every process is bounded and stopped when its test ends.
local it_sipp = S.available() and it or pending

local SDP = table.concat({ "v=0", "o=luasip 1 1 IN IP4 127.0.0.1", "s=-",
  "c=IN IP4 127.0.0.1", "t=0 0", "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "" },
  "\r\n")

local defer = H.defer_with(function(f) finally(f) end)

local function target(a) return "127.0.0.1:" .. a:transports()[1].port end

-- runs the scenario against agent a and asserts that every sipp call passed
local function sipp_calls(a, scenario, calls)
  local p = S.run{ scenario = scenario, target = target(a), calls = calls }
  defer(function() S.stop(p) end)
  local rc = S.wait(p)
  assert.equal(0, rc, p.report())
  return p
end

describe("luasip as UAS, called by sipp", function()
  local uas, logs, restore
  before_each(function()
    uas = H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)

  it_sipp("answers OPTIONS 200 with an Allow listing its methods", function()
    local seen
    uas:on("OPTIONS", function(req)
      seen = req.method
      req:reply(200, { headers = { Allow = uas:allow() } })
    end)
    uas:on("MESSAGE", function(req) req:reply(200) end)
    uas:on("INVITE", function(req) req:reply(486) end)
    sipp_calls(uas, "uac_options")
    assert.equal("OPTIONS", seen)
  end)

  it_sipp("answers MESSAGE 200 after its handler got the body", function()
    local got = {}
    uas:on("MESSAGE", function(req)
      got[#got + 1] = { body = req.body, ctype = req.content_type, from = req.from.uri }
      req:reply(200)
    end)
    sipp_calls(uas, "uac_message")
    assert.equal(1, #got)
    assert.matches("^hello from sipp 1", got[1].body)
    assert.equal("text/plain", got[1].ctype)
    assert.matches("^sip:sipp@127%.0%.0%.1:%d+$", got[1].from)
  end)

  it_sipp("completes a call answered with req:answer; the dialog ends on sipp's BYE",
    function()
      local invite, ended
      uas:on("INVITE", function(req)
        invite = { call_id = req.call_id, body = req.body, ctype = req.content_type }
        req:reply(180)
        local call = assert(req:answer{ body = SDP, content_type = "application/sdp" })
        ended = call:wait_end(5)
      end)
      sipp_calls(uas, "uac_invite")
      assert.equal("application/sdp", invite.ctype)
      assert.matches("m=audio", invite.body)
      assert.equal("remote bye", ended)
    end)

  it_sipp("lets a handler answer INVITE with reply(200), get sipp's ACK from wait_ack, "
    .. "and answers sipp's BYE in the dialog reply(200) made", function()
      -- req:reply(2xx) makes the callee's dialog as req:answer does: sipp's BYE is
      -- answered 200 in it (not 481, and not by the agent's out-of-dialog BYE handler)
      local invite, ack, bye_handler
      uas:on("INVITE", function(req)
        invite = { call_id = req.call_id }
        req:reply(180)
        req:reply(200, { body = SDP, content_type = "application/sdp" })
        local a, err = req:wait_ack(5)
        ack = a and { method = a.method, call_id = a.call_id, cseq = a.cseq }
          or { err = err }
      end)
      uas:on("BYE", function(req)
        bye_handler = true
        req:reply(500)
      end)
      sipp_calls(uas, "uac_invite")
      assert.same({ method = "ACK", call_id = invite.call_id, cseq = 1 }, ack)
      assert.is_nil(bye_handler)
    end)

  it_sipp("ends a ringing INVITE with 487 when sipp cancels it; sleep returns cancelled",
    function()
      local slept, cancelled
      uas:on("INVITE", function(req)
        req:reply(180)
        slept = { sip.sleep(10) }
        cancelled = req:cancelled()
      end)
      local t0 = sip.now()
      sipp_calls(uas, "uac_cancel")
      assert.equal(nil, slept[1])
      assert.equal("cancelled", slept[2])
      assert.is_true(cancelled)
      assert.is_true(sip.now() - t0 < 5, "the handler's sleep held the call")
      assert.same({}, logs)          -- no 500 and no "ended without a final response"
    end)

  -- status chosen by the handler for each method (uac_methods.xml expects the same)
  local CHOSEN = {
    { "BYE", 481 }, { "REGISTER", 200 }, { "SUBSCRIBE", 202 }, { "NOTIFY", 481 },
    { "PUBLISH", 412 }, { "REFER", 403 }, { "INFO", 469 }, { "UPDATE", 488 },
    { "PRACK", 400 },
  }

  it_sipp("answers every other method with its handler's status, 405 without a handler, "
    .. "501 with Allow for an unknown method", function()
      local seen, register_contact = {}
      for _, mc in ipairs(CHOSEN) do
        local status = mc[2]
        uas:on(mc[1], function(req)
          seen[#seen + 1] = req.method
          if req.method == "REGISTER" then
            register_contact = req.contact[1]
            return req:reply(status, { headers = { Contact = req.contact[1].value } })
          end
          req:reply(status)
        end)
      end
      sipp_calls(uas, "uac_methods")
      local expected = {}
      for i, mc in ipairs(CHOSEN) do expected[i] = mc[1] end
      assert.same(expected, seen)       -- MESSAGE and FROBNICATE reached no handler
      assert.equal(60, register_contact.expires)
      assert.matches("^sip:sipp@127%.0%.0%.1:%d+$", register_contact.uri)
    end)
end)

describe("luasip as UAC, calling sipp", function()
  local uac
  before_each(function() uac = H.agent() end)
  after_each(function() H.close_agents() end)

  local function sipp_uas(scenario) return S.uas(scenario, { timeout = 15 }) end
  local passed = S.passed

  it_sipp("gets 200 for OPTIONS", function()
    local p, uri = sipp_uas("uas_options")
    local res = H.run(function() return uac:request{ method = "OPTIONS", uri = uri } end)
    assert.equal(200, res.status)
    assert.matches("INVITE", res:header("Allow"))
    passed(p)
  end)

  it_sipp("gets 200 for MESSAGE", function()
    local p, uri = sipp_uas("uas_message")
    local res = H.run(function()
      return uac:request{ method = "MESSAGE", uri = uri, body = "hello sipp",
        content_type = "text/plain" }
    end)
    assert.equal(200, res.status)
    passed(p)
  end)

  it_sipp("gets 200 for INVITE, ACKs it, then ends the call with BYE", function()
    local p, uri = sipp_uas("uas_invite")
    local provisional = {}
    local res, bye = H.run(function()
      local r = assert(uac:request{ method = "INVITE", uri = uri, body = SDP,
        content_type = "application/sdp",
        on_provisional = function(pr) provisional[#provisional + 1] = pr.status end })
      -- in-dialog BYE built by hand from the 200: remote target, tags, Call-ID, CSeq + 1
      local b = uac:request{ method = "BYE", uri = r.contact[1].uri, headers = {
        ["Call-ID"] = r.call_id, From = r:header("From"), To = r:header("To"),
        CSeq = (r.cseq + 1) .. " BYE" } }
      return r, b
    end)
    assert.equal(200, res.status)
    assert.equal("application/sdp", res.content_type)
    assert.is_string(res.to_tag)
    assert.equal(180, provisional[#provisional])    -- nta keeps 100 Trying to itself
    assert.equal(200, bye.status)
    passed(p)                             -- sipp got the ACK before the BYE
  end)

  it_sipp("makes a call with agent:invite and ends it with dialog:bye", function()
    local p, uri = sipp_uas("uas_invite")
    local res, bye_ok = H.run(function()
      local call, r = assert(uac:invite{ uri = uri, body = SDP })
      return r, call:bye()
    end)
    assert.equal(200, res.status)
    assert.is_true(bye_ok)
    passed(p)                             -- sipp checked the To tag of the ACK and BYE
  end)

  it_sipp("cancels a ringing INVITE after 180 and gets 487", function()
    local p, uri = sipp_uas("uas_cancel")
    local cancel_ok
    local res, err, code = H.run(function()
      return uac:request{ method = "INVITE", uri = uri, on_provisional = function(pr, tx)
        if pr.status == 180 then cancel_ok = tx:cancel() end
      end }
    end)
    assert.is_true(cancel_ok)
    assert.is_nil(res)
    assert.equal("487 Request Terminated", err)
    assert.equal(487, code)
    passed(p)                             -- sipp got the CANCEL and the ACK of the 487
  end)

  it_sipp("returns nil, err, 486 for a busy callee and ACKs the 486", function()
    local p, uri = sipp_uas("uas_busy")
    local res, err, code, r = H.run(function()
      return uac:request{ method = "INVITE", uri = uri }
    end)
    assert.is_nil(res)
    assert.equal("486 Busy Here", err)
    assert.equal(486, code)
    assert.equal(486, r.status)
    passed(p)
  end)
end)

describe("examples/uas.lua under sipp", function()
  it_sipp("completes five calls of sipp's built-in uac scenario", function()
    local port = H.free_port()
    local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
    local uas = H.background({ "env",
      "LUA_PATH=" .. (os.getenv("LUA_PATH") or "lua/?.lua;lua/?/init.lua;;"),
      "LUA_CPATH=" .. (os.getenv("LUA_CPATH") or ("build/" .. flavour .. "/?.so;;")),
      H.interpreter(), "examples/uas.lua", "127.0.0.1:" .. port }, 30)
    defer(function() S.stop(uas) end)
    uas.port = port
    S.wait_bound(uas)
    local p = S.run{ sn = "uac", target = "127.0.0.1:" .. port, calls = 5 }
    defer(function() S.stop(p) end)
    assert.equal(0, S.wait(p), p.report() .. "\n--- uas.lua\n" .. uas.log())
    H.run_until(function()
      local _, n = uas.log():gsub("call established", "")
      return n == 5
    end, 5, "five established calls in uas.lua's log")
  end)
end)
