local H = require "spec.helper"
local B = require "spec.peers.baresip.peer"

-- examples/pbx.lua as a process, with real SIP phones nobody here wrote as its users:
-- headless baresip (Debian's baresip-core 1.0.0) instances on 127.0.0.1, each in its own
-- temporary config directory, driven over ctrl_tcp by spec/peers/baresip/ctrl.py.  Accounts
-- are added with `uanew` once the control connection is up, so the REGISTER_OK event is
-- seen; every SIP message a phone sends or receives is in its log (baresip -s).  Each test
-- starts its own PBX and phones, bounded by timeout(1), and stops them all in one finally;
-- they run in a private network namespace when unshare allows it (baresip binds its RTP
-- and DNS sockets to 0.0.0.0), else on the host's loopback.
local available, why_not = B.available()
local it_baresip = available and it or function(name) pending(name .. " -- " .. why_not) end

local PW = { alice = "alice-secret", bob = "bob-secret", carol = "carol-secret" }

describe("examples/pbx.lua with baresip phones", function()
  local running = {}             -- stop functions of this test's processes, in start order

  local function stop_all()
    local list = running
    running = {}
    for i = #list, 1, -1 do pcall(list[i]) end  -- phones (they unregister), PBX, namespace
  end

  local ns, pbx, port

  -- starts the PBX on a free loopback port (in a private network namespace when the
  -- machine allows it); must come first in a test
  local function start_pbx()
    running = {}
    finally(stop_all)
    ns = B.netns(90)
    running[#running + 1] = ns.stop
    port = H.free_port()
    local recordings = os.tmpname()          -- voicemail, removed with the processes
    os.remove(recordings)
    running[#running + 1] = function() os.execute("rm -rf " .. H.shquote(recordings)) end
    pbx = H.background(ns.wrap{ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      "IVR_RECORDINGS=" .. recordings,
      H.interpreter(), "examples/pbx.lua", "127.0.0.1:" .. port }, 60)
    running[#running + 1] = pbx.kill
    H.run_until(function() return pbx.log():find("listening on") or pbx.done() end, 10,
      "pbx listening")
    assert.is_nil(pbx.done(), pbx.log())
  end

  -- phone(name, user [, password, answermode]) -> a baresip phone with user's account added
  local function phone(name, user, password, answermode)
    local p = B.start{ name = name, trace = true, ns = ns,
      context = function() return "--- pbx log\n" .. pbx.log() end }
    running[#running + 1] = p.stop
    p.ready()
    p.command("uanew", B.account(user, password or PW[user], "127.0.0.1:" .. port, answermode))
    return p
  end

  local function registered(p)
    local ev = p.wait_event("REGISTER_OK")
    assert.equal("200 OK", ev.param, p.report())
    return p
  end

  -- the SIP messages p received from the PBX whose start line matches pattern
  local function from_pbx(p, pattern)
    local t = {}
    for _, m in ipairs(p.messages()) do
      if m.src == "127.0.0.1:" .. port and m.start:match(pattern) then t[#t + 1] = m end
    end
    return t
  end

  local function aor(user) return "sip:" .. user .. "@127.0.0.1" end

  it_baresip("registers baresip phones with digest auth and refuses a wrong password", function()
    start_pbx()
    local alice, bob = phone("alice", "alice"), phone("bob", "bob")
    local mallory = phone("mallory", "carol", "guess")
    registered(alice)
    registered(bob)
    -- 401, or 403 once baresip's retries with the wrong password have run into the PBX's
    -- limit on failed digests (examples/pbx.lua: sip.auth failures)
    local fail = mallory.wait_event("REGISTER_FAIL").param
    assert.is_truthy(fail == "401 Unauthorized" or fail == "403 Too Many Failed Attempts", fail)
    assert.matches(aor("alice") .. "%s+OK%s+luasip%-pbx", alice.command("reginfo"))
    assert.matches(aor("bob") .. "%s+OK%s+luasip%-pbx", bob.command("reginfo"))
    assert.matches(aor("carol") .. "%s+ERR", mallory.command("reginfo"))
    -- the first REGISTER is challenged, the second carries the digest response
    local sent = {}
    for _, m in ipairs(alice.messages()) do
      if m.dst == "127.0.0.1:" .. port then sent[#sent + 1] = m end
    end
    assert.matches("^REGISTER ", sent[2].start)
    assert.matches('\nAuthorization: Digest username="alice", realm="127.0.0.1"', sent[2].text)
    local log = pbx.log()
    assert.matches("REGISTER " .. aor("alice") .. " 401\n.-REGISTER " .. aor("alice") .. " 200\n",
      log)
    assert.matches("REGISTER " .. aor("bob") .. " 200\n", log)
    assert.not_matches("REGISTER " .. aor("carol") .. " 200", log)
  end)

  it_baresip("connects alice's call to bob through the record-routing proxy; either side hangs up", function()
    start_pbx()
    local alice, bob = registered(phone("alice", "alice")), registered(phone("bob", "bob"))
    local t0 = H.sip.now()
    alice.command("dial", aor("bob"))
    local out = alice.wait_event("CALL_ESTABLISHED")
    local inc = bob.wait_event("CALL_ESTABLISHED")
    assert.same({ "outgoing", aor("bob") }, { out.direction, out.peeruri })
    assert.same({ "incoming", aor("alice") }, { inc.direction, inc.peeruri })
    assert.equal(out.id, inc.id)                         -- one dialog: the same Call-ID
    -- the SDP went through untouched: RTP flows directly between the phones
    alice.wait_event("CALL_RTPESTAB")
    bob.wait_event("CALL_RTPESTAB")
    local established = H.sip.now() - t0
    assert.matches("INVITE alice %-> bob %(1 contact%(s%)%)\n.-INVITE alice %-> bob 200\n",
      pbx.log())
    local invite = from_pbx(bob, "^INVITE ")[1]
    assert.truthy(invite, bob.report())
    assert.matches("\nRecord%-Route: <sip:127%.0%.0%.1:" .. port .. ";lr>", invite.text)

    -- alice hangs up: her BYE reaches bob through the PBX (the Route from Record-Route)
    alice.command("hangup")
    assert.equal("Connection reset by user", alice.wait_event("CALL_CLOSED").param)
    assert.equal("Connection reset by peer", bob.wait_event("CALL_CLOSED").param)
    assert.equal(1, #from_pbx(bob, "^BYE "), bob.report())

    -- a second call, and bob hangs up: his BYE reaches alice through the PBX
    alice.command("dial", aor("bob"))
    local second = alice.wait_event("CALL_ESTABLISHED")
    assert.not_equal(out.id, second.id)
    bob.wait_event("CALL_ESTABLISHED")
    bob.command("hangup")
    assert.equal("Connection reset by user", bob.wait_event("CALL_CLOSED").param)
    assert.equal("Connection reset by peer", alice.wait_event("CALL_CLOSED").param)
    assert.equal(1, #from_pbx(alice, "^BYE "), alice.report())
    assert.is_true(established < 5, "call set up in " .. established .. " s")
  end)

  it_baresip("rings every phone of the callee and cancels the one still ringing", function()
    start_pbx()
    local alice = registered(phone("alice", "alice"))
    local ringing = registered(phone("bob-desk", "bob", nil, "manual"))
    local answering = registered(phone("bob-mobile", "bob"))
    alice.command("dial", aor("bob"))
    assert.equal(aor("alice"), ringing.wait_event("CALL_INCOMING").peeruri)
    local out = alice.wait_event("CALL_ESTABLISHED")
    assert.equal(out.id, answering.wait_event("CALL_ESTABLISHED").id)
    ringing.wait_event("CALL_CLOSED")
    assert.matches("INVITE alice %-> bob %(2 contact%(s%)%)\n.-INVITE alice %-> bob 200\n",
      pbx.log())
    -- the ringing phone got CANCEL, answered 487, and the PBX acknowledged that hop by hop
    assert.equal(1, #from_pbx(ringing, "^CANCEL "), ringing.report())
    assert.equal(1, #from_pbx(ringing, "^ACK "), ringing.report())
    local final
    for _, m in ipairs(ringing.messages()) do
      if m.dst == "127.0.0.1:" .. port and m.start:match("^SIP/2%.0 4") then final = m.start end
    end
    assert.equal("SIP/2.0 487 Request Terminated", final)
    alice.command("hangup")
    assert.equal("Connection reset by peer", answering.wait_event("CALL_CLOSED").param)
  end)

  it_baresip("relays the caller's CANCEL and the callee's rejection between baresip phones", function()
    start_pbx()
    local alice = registered(phone("alice", "alice"))
    local bob = registered(phone("bob", "bob", nil, "manual"))
    -- alice gives up while bob's phone rings: CANCEL goes on to bob, 487 comes back
    alice.command("dial", aor("bob"))
    bob.wait_event("CALL_INCOMING")
    alice.wait_event("CALL_RINGING")
    alice.command("hangup")
    assert.equal("Connection reset by user", alice.wait_event("CALL_CLOSED").param)
    assert.equal("Connection reset by peer", bob.wait_event("CALL_CLOSED").param)
    assert.equal(1, #from_pbx(bob, "^CANCEL "), bob.report())
    assert.equal(1, #from_pbx(alice, "^SIP/2%.0 487 "), alice.report())
    assert.matches("INVITE alice %-> bob cancelled\n", pbx.log())
    -- bob rejects the next call: alice gets his 486
    alice.command("dial", aor("bob"))
    bob.wait_event("CALL_INCOMING")
    alice.wait_event("CALL_RINGING")
    bob.command("hangup")
    assert.equal("Connection reset by user", bob.wait_event("CALL_CLOSED").param)
    assert.equal("486 Rejected", alice.wait_event("CALL_CLOSED").param)
    assert.matches("INVITE alice %-> bob 486 Rejected\n", pbx.log())
    -- and answers the third by hand
    alice.command("dial", aor("bob"))
    bob.wait_event("CALL_INCOMING")
    bob.command("accept")
    assert.equal(alice.wait_event("CALL_ESTABLISHED").id, bob.wait_event("CALL_ESTABLISHED").id)
    alice.command("hangup")
    assert.equal("Connection reset by peer", bob.wait_event("CALL_CLOSED").param)
  end)

  it_baresip("sends a caller to an absent user's voicemail; 404 and 403 (unknown user, other domain)", function()
    start_pbx()
    local alice = registered(phone("alice", "alice"))
    local function call(uri)
      alice.command("dial", uri)
      return alice.wait_event("CALL_CLOSED").param
    end
    alice.command("dial", aor("carol"))
    assert.equal(aor("carol"), alice.wait_event("CALL_ESTABLISHED").peeruri)
    H.run_until(function() return pbx.log():find("recording %S+/carol/") end, 15,
      "the voicemail recording")
    alice.command("hangup")
    alice.wait_event("CALL_CLOSED")
    H.run_until(function() return pbx.log():find("voicemail for carol hangup") end, 5,
      "the voicemail's end")
    assert.equal("404 No Such User", call(aor("nobody")))
    assert.equal("403 Relaying Denied", call("sip:bob@elsewhere.example"))
  end)
end)
