local H = require "spec.helper"
local S = require "spec.peers.sipp"
local sip = H.sip

-- Three luasip agents: C refers A to B.  C calls A (a dialog), then sends the REFER; A
-- accepts it (sip.refer.accept), calls B and reports B's answers back as NOTIFYs.

local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
local has_socket = pcall(require, "socket")

describe("luasip.refer", function()
  local a, b, c
  before_each(function() a, b, c = H.agent(), H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  -- A answers calls; REFERs inside them go to on_refer(req, dialog)
  local a_call
  local function a_answers(on_refer)
    a_call = nil
    a:on("INVITE", function(req)
      local d = assert(req:answer())
      d:on("REFER", on_refer)
      a_call = d
    end)
  end

  -- B rings, then answers with status (200: a call; else that failure)
  local b_calls
  local function b_answers(status)
    b_calls = {}
    b:on("INVITE", function(req)
      b_calls[#b_calls + 1] = req
      req:reply(180)
      if status == 200 then assert(req:answer()) else req:reply(status) end
    end)
  end

  -- C's call to A
  local function call_a()
    local d = H.run(function() return assert(c:invite{ uri = a:uri("alice") }) end)
    H.run_until(function() return a_call end, 5, "A's side of the call")
    return d
  end

  -- A's usual transfer: accept, call the Refer-To target, report B's answers
  local subs
  local function transfer(req)
    local sub = assert(sip.refer.accept(req))
    subs[#subs + 1] = sub
    sub:invite(a)
  end
  before_each(function() subs = {} end)

  it("transfers a call: 202, NOTIFY 100, 180 and the final 200, then the subscription ends", function()
    a_answers(transfer)
    b_answers(200)
    local d = call_a()
    local seen = {}
    local status, line = H.run(function()
      return d:refer(b:uri("bob"), { on_progress = function(st, reason, l)
        seen[#seen + 1] = st .. " " .. reason .. " | " .. l
      end })
    end)
    assert.equal(200, status)
    assert.equal("SIP/2.0 200 OK", line)
    assert.same({ "100 Trying | SIP/2.0 100 Trying", "180 Ringing | SIP/2.0 180 Ringing" }, seen)
    assert.equal(1, #b_calls)
    assert.equal(b:uri("bob"), b_calls[1].uri)
    local sub = subs[1]
    assert.is_true(H.run(function() return sub:wait(5) end))
    assert.equal("terminated", sub:state())
    assert.equal(200, sub.status)
    assert.equal(a_call, sub.dialog)
    -- the REFER's subscription ended, the call it was sent in goes on
    assert.equal("confirmed", d:state())
    assert.equal("confirmed", a_call:state())
    local _, err, code = H.run(function() return sub:progress(180) end)
    assert.equal("subscription terminated", err)
    assert.equal("terminated", code)
    H.run(function() d:bye() end)
  end)

  it("sends message/sipfrag NOTIFYs with Event: refer, ;id= from the second REFER, and Subscription-State", function()
    a_answers(function(req)
      local sub = assert(sip.refer.accept(req, { expires = 30 }))
      sub:progress(180)
      sub:progress(603, "Nope")
    end)
    local d = call_a()
    local notifies = {}
    d:on("NOTIFY", function(req)
      notifies[#notifies + 1] = { event = req:header("Event"), ctype = req:header("Content-Type"),
        state = req:header("Subscription-State"), body = req.body, cseq = req.cseq }
      req:reply(200)
    end)
    local res1 = H.run(function()
      return assert(d:request("REFER", { headers = { ["Refer-To"] = "<" .. b:uri("bob") .. ">" } }))
    end)
    assert.equal(202, res1.status)
    assert.equal("Accepted", res1.reason)
    H.run_until(function() return #notifies == 3 end, 5, "three NOTIFYs")
    local res2 = H.run(function()
      return assert(d:request("REFER", { headers = { ["Refer-To"] = b:uri("carol") } }))
    end)
    H.run_until(function() return #notifies == 6 end, 5, "three more NOTIFYs")
    for i, n in ipairs(notifies) do
      assert.equal("message/sipfrag;version=2.0", n.ctype:gsub("%s", ""))
      if i > 1 then assert.is_true(n.cseq > notifies[i - 1].cseq) end
    end
    assert.equal("refer", notifies[1].event)
    assert.equal("refer;id=" .. res2.cseq, notifies[4].event:gsub("%s", ""))
    for i, want in ipairs{ "SIP/2.0 100 Trying", "SIP/2.0 180 Ringing", "SIP/2.0 603 Nope" } do
      assert.equal(want .. "\r\n", notifies[i].body)
      assert.equal(want .. "\r\n", notifies[i + 3].body)
    end
    assert.matches("^active;expires=%d+$", notifies[1].state)
    local left = tonumber(notifies[1].state:match("expires=(%d+)"))
    assert.is_true(left >= 29 and left <= 30, notifies[1].state)
    assert.matches("^active;expires=%d+$", notifies[2].state)
    assert.equal("terminated;reason=noresource", notifies[3].state)
    assert.equal("terminated;reason=noresource", notifies[6].state)
    H.run(function() d:bye() end)
  end)

  it("takes a REFER outside any dialog: agent:refer gets the reports in the dialog the 202 makes", function()
    local a_subs = {}
    a:on("REFER", sip.refer.handler(function(sub, req)
      a_subs[#a_subs + 1] = sub
      assert.equal(req, sub.request)
      assert.equal("uas", sub.dialog.role)
      sub:invite(a)
    end))
    b_answers(200)
    local seen = {}
    local status, line = H.run(function()
      return c:refer{ uri = a:uri("alice"), refer_to = b:uri("bob"),
        on_progress = function(st) seen[#seen + 1] = st end }
    end)
    assert.equal(200, status)
    assert.equal("SIP/2.0 200 OK", line)
    assert.same({ 100, 180 }, seen)
    local sub = a_subs[1]
    assert.is_true(H.run(function() return sub:wait(5) end))
    -- the dialog existed only for the subscription: both sides forget it
    assert.equal("terminated", sub.dialog:state())
    assert.equal("uas", sub.dialog.role)
  end)

  it("answers 400 to a REFER without Refer-To", function()
    local accepted = {}
    a:on("REFER", function(req) accepted[#accepted + 1] = { sip.refer.accept(req) } end)
    local _, err, code = H.run(function()
      return c:request{ method = "REFER", uri = a:uri("alice") }
    end)
    assert.equal(400, code)
    assert.equal("400 Missing Refer-To", err)
    assert.same({ nil, "missing Refer-To", 400 }, accepted[1])
    -- the same in a dialog, and through dialog:refer's peer
    a_answers(sip.refer.handler(function() error("not reached") end))
    local d = call_a()
    local res = H.run(function() return { d:request("REFER") } end)
    assert.equal(400, res[3])
    assert.equal("confirmed", d:state())
    H.run(function() d:bye() end)
  end)

  ;(has_socket and it or pending)("answers 400 to a REFER with two Refer-To headers", function()
    local socket = require "socket"
    local calls = 0
    a:on("REFER", sip.refer.handler(function() calls = calls + 1 end))
    local u = assert(socket.udp())
    finally(function() u:close() end)
    assert(u:setsockname("127.0.0.1", 0))
    local _, port = u:getsockname()
    local to = a:transports()[1].port
    local function refer(refer_to_lines, call_id)
      local lines = { "REFER sip:alice@127.0.0.1:" .. to .. " SIP/2.0",
        "Via: SIP/2.0/UDP 127.0.0.1:" .. port .. ";branch=z9hG4bK-" .. call_id,
        "Max-Forwards: 70", "From: <sip:c@127.0.0.1>;tag=c1", "To: <sip:alice@127.0.0.1>",
        "Call-ID: " .. call_id, "CSeq: 1 REFER", "Contact: <sip:c@127.0.0.1:" .. port .. ">" }
      for _, l in ipairs(refer_to_lines) do lines[#lines + 1] = l end
      lines[#lines + 1] = "Content-Length: 0\r\n\r\n"
      assert(u:sendto(table.concat(lines, "\r\n"), "127.0.0.1", to))
      u:settimeout(0)
      local got
      H.run_until(function()
        got = u:receive()
        return got and not got:match("^SIP/2.0 1")
      end, 5, "the answer")
      return got:match("^SIP/2.0 (%d+ [^\r\n]*)")
    end
    assert.equal("400 Multiple Refer-To",
      refer({ "Refer-To: <sip:b@127.0.0.1>", "r: <sip:d@127.0.0.1>" }, "two-headers"))
    -- sofia drops a Refer-To it cannot parse (two values in one header): none is left
    assert.equal("400 Missing Refer-To",
      refer({ "Refer-To: <sip:b@127.0.0.1>, <sip:d@127.0.0.1>" }, "two-values"))
    assert.equal(0, calls)
  end)

  it("honours Refer-Sub: false (RFC 4488): 202 with Refer-Sub: false and no NOTIFY", function()
    local a_sub
    a_answers(function(req, dialog)
      a_sub = assert(sip.refer.accept(req))
      assert.is_true(a_sub:progress(180))
      assert.is_true(a_sub:progress(200))
      assert.equal("terminated", a_sub:state())
      -- after any NOTIFY this transfer could have caused
      assert(dialog:request("INFO", { body = "done", content_type = "text/plain" }))
    end)
    local d = call_a()
    local notifies, info = 0, false
    d:on("NOTIFY", function(req) notifies = notifies + 1; req:reply(200) end)
    d:on("INFO", function(req) info = true; req:reply(200) end)
    local status, line = H.run(function() return d:refer(b:uri("bob"), { refer_sub = false }) end)
    assert.equal(202, status)
    assert.is_nil(line)
    H.run_until(function() return info end, 5, "A's INFO")
    assert.equal(0, notifies)
    assert.is_false(a_sub.notify)
    -- out of dialog: no dialog is made at all
    a:on("REFER", sip.refer.handler(function(sub) assert.is_nil(sub.dialog) end))
    status, line = H.run(function()
      return c:refer{ uri = a:uri("alice"), refer_to = b:uri("bob"), refer_sub = false }
    end)
    assert.equal(202, status)
    assert.is_nil(line)
    H.run(function() d:bye() end)
  end)

  it("sends a Refer-To with ?Replaces= and the recipient calls with that Replaces (RFC 3891)", function()
    a_answers(transfer)
    b_answers(200)
    local d = call_a()
    local rep = { call_id = "a%b@127.0.0.1", to_tag = "t-1", from_tag = "f-2" }
    local status = H.run(function() return d:refer(b:uri("bob"), { replaces = rep }) end)
    assert.equal(200, status)
    local sub = subs[1]
    assert.same({ call_id = "a%b@127.0.0.1", to_tag = "t-1", from_tag = "f-2", early_only = false },
      sub.replaces)
    assert.equal(b:uri("bob"), sub.target)
    assert.equal(b:uri("bob") .. "?Replaces=a%25b%40127.0.0.1%3Bto-tag%3Dt-1%3Bfrom-tag%3Df-2",
      sub.refer_to.uri)
    assert.equal("a%b@127.0.0.1;to-tag=t-1;from-tag=f-2", b_calls[1]:header("Replaces"))
    H.run(function() d:bye() end)
  end)

  it("parses Replaces values and Refer-To URIs", function()
    assert.same({ call_id = "425928@bobster.example.org", to_tag = "7743", from_tag = "6472",
      early_only = true },
      sip.refer.parse_replaces("425928@bobster.example.org;to-tag=7743; from-tag=6472;early-only"))
    local r, err, code = sip.refer.parse_replaces("425928@bobster.example.org;from-tag=1")
    assert.is_nil(r)
    assert.equal("no to-tag in Replaces", err)
    assert.equal("syntax", code)
    assert.is_nil((sip.refer.parse_replaces("x;to-tag=1")))
    assert.equal("a@b;to-tag=1;from-tag=2;early-only",
      sip.refer.replaces{ call_id = "a@b", to_tag = "1", from_tag = "2", early_only = true })
    -- RFC 3891 example
    local t = assert(sip.refer.parse_refer_to('"Bob" <sips:bob@bobster.example.org?Replaces='
      .. '12345%40192.168.118.3%3Bto-tag%3D12345%3Bfrom-tag%3D5FFE-3994>;x=1'))
    assert.equal("Bob", t.display)
    assert.equal("sips:bob@bobster.example.org", t.target)
    assert.same({ x = "1" }, t.params)
    assert.same({ call_id = "12345@192.168.118.3", to_tag = "12345", from_tag = "5FFE-3994",
      early_only = false }, t.replaces)
    t = assert(sip.refer.parse_refer_to("sip:carol@example.com;method=INVITE"))
    assert.equal("sip:carol@example.com", t.target)
    assert.is_nil(t.replaces)
    assert.same({ method = "INVITE" }, t.params)
    assert.is_nil((sip.refer.parse_refer_to("not a uri")))
    assert.has_error(function() sip.refer.parse_replaces(nil) end,
      "luasip.refer.parse_replaces: string expected")
    assert.has_error(function() sip.refer.replaces{ call_id = "x" } end,
      "luasip.refer.replaces: to_tag must be a non-empty string")
  end)

  it("passes a failed transfer on: B busy gives the final sipfrag 486, and dialog:refer returns 486", function()
    -- A reports by hand here: agent:invite's provisional responses, then its failure
    a_answers(function(req)
      local sub = assert(sip.refer.accept(req))
      subs[#subs + 1] = sub
      local call, _, code, res = a:invite{ uri = sub.target, on_provisional = function(r)
        if r.status > 100 then assert(sub:progress(r.status, r.reason)) end
      end }
      assert.is_nil(call)
      assert(sub:progress(code, res.reason))
    end)
    b_answers(486)
    local d = call_a()
    local seen = {}
    local status, line = H.run(function()
      return d:refer(b:uri("bob"), { on_progress = function(st) seen[#seen + 1] = st end })
    end)
    assert.equal(486, status)
    assert.equal("SIP/2.0 486 Busy Here", line)
    assert.same({ 100, 180 }, seen)
    assert.equal(486, subs[1].status)
    assert.equal("confirmed", d:state())
    H.run(function() d:bye() end)
  end)

  it("reports 500 when the handler fails, and lapses with reason=timeout when nothing is reported", function()
    local logs, restore = H.capture_logs()
    finally(restore)
    a_answers(sip.refer.handler(function() error("no can do") end))
    local d = call_a()
    local status, line = H.run(function() return d:refer(b:uri("bob")) end)
    assert.equal(500, status)
    assert.equal("SIP/2.0 500 Server Internal Error", line)
    H.run_until(function() return #logs > 0 end, 5, "the handler's error logged")
    assert.matches("no can do", logs[1].msg)
    -- no final report before the subscription expires: terminated;reason=timeout
    a_call:on("REFER", function(req) assert(sip.refer.accept(req, { expires = 0.3 })) end)
    local _, err, code = H.run(function() return d:refer(b:uri("bob")) end)
    assert.equal("terminated", code)
    assert.equal("subscription terminated (timeout) before a final status", err)
    H.run(function() d:bye() end)
  end)

  it("returns nil, timeout after opts.timeout and nil, terminated when the dialog ends", function()
    a_answers(function(req) assert(sip.refer.accept(req)) end)
    local d = call_a()
    local _, err, code = H.run(function() return d:refer(b:uri("bob"), { timeout = 0.3 }) end)
    assert.equal("timeout", err)
    assert.equal("timeout", code)
    a_call:on("REFER", function(req)
      assert(sip.refer.accept(req))
      sip.sleep(0.1)
      a_call:bye()
    end)
    _, err, code = H.run(function() return d:refer(b:uri("bob")) end)
    assert.equal("terminated", err)
    assert.equal("terminated", code)
    _, err, code = H.run(function() return d:refer(b:uri("bob")) end)
    assert.equal("dialog terminated", err)
    assert.equal("terminated", code)
  end)

  it("raises on programmer errors", function()
    a_answers(function(req)
      local sub = assert(sip.refer.accept(req))
      assert.has_error(function() sub:progress(99) end,
        "luasip.refer.subscription:progress: status must be an integer 100-699")
      sub:progress(200)
    end)
    local d = call_a()
    assert.has_error(function() d:refer(nil) end, "luasip.dialog:refer: target must be a URI string")
    assert.has_error(function() d:refer("sip:x@y", { timeout = -1 }) end,
      "luasip.dialog:refer: timeout must be a positive number")
    assert.has_error(function() c:refer{ refer_to = "sip:x@y" } end,
      "luasip.agent:refer: uri must be a string")
    assert.has_error(function() d:refer("sip:x@y") end,
      "not in a luasip coroutine: use sip.spawn (luasip.dialog:refer)")
    assert.equal(200, (H.run(function() return d:refer(b:uri("bob")) end)))
    assert.has_error(function() sip.refer.accept({}) end, "luasip.refer.accept: a REFER request expected")
    H.run(function() d:bye() end)
  end)

  ;(S.available() and it or pending)("takes a REFER from sipp and sends it the 202 and NOTIFYs it checks", function()
    a_answers(transfer)
    b_answers(200)
    local p = S.run{ scenario = "uac_refer", target = "127.0.0.1:" .. a:transports()[1].port,
      extra = { "-key", "refer_to", b:uri("bob") } }
    finally(function() S.stop(p) end)
    assert.equal(0, S.wait(p), p.report())
    assert.equal(1, #b_calls)
    assert.matches("^<sip:sipp@127%.0%.0%.1:%d+>$", b_calls[1]:header("Referred-By"))
    assert.is_true(H.run(function() return subs[1]:wait(5) end))
    H.run_until(function() return a_call:state() == "terminated" end, 5, "sipp's BYE")
  end)

  ;(S.available() and it or pending)("gets a sipp recipient's reports: dialog:refer returns its final 486", function()
    local p = S.run{ scenario = "uas_refer" }
    finally(function() S.stop(p) end)
    S.wait_bound(p)
    local seen = {}
    local status, line = H.run(function()
      local d = assert(c:invite{ uri = "sip:sipp@127.0.0.1:" .. p.port })
      local st, l = d:refer(b:uri("bob"), { on_progress = function(s) seen[#seen + 1] = s end })
      assert.is_true(d:bye())
      return st, l
    end)
    assert.equal(486, status, p.report())
    assert.equal("SIP/2.0 486 Busy Here", line)
    assert.same({ 100 }, seen)
    assert.equal(0, S.wait(p), p.report())
  end)

  it("runs examples/click_to_call.lua: calls A, refers A to B, prints the reports, hangs up", function()
    a_answers(transfer)
    b_answers(200)
    local proc = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", H.interpreter(), "examples/click_to_call.lua",
      "127.0.0.1:" .. H.free_port(), a:uri("alice"), b:uri("bob") }, 30)
    finally(function() proc.kill() end)
    H.run_until(function() return proc.done() end, 25, "examples/click_to_call.lua end")
    local out = proc.log()
    assert.equal(0, proc.done(), out)
    for _, l in ipairs{ "A answered: 200 OK", "progress: 100 Trying", "progress: 180 Ringing",
      "final: SIP/2.0 200 OK", "B is connected to A" } do
      assert.matches(l, out, 1, true)
    end
    H.run_until(function() return a_call:state() == "terminated" end, 5, "the BYE to A")
    assert.equal(1, #b_calls)
  end)
end)
