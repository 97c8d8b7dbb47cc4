-- The shipped examples tested the way a user tests an application: luasip.testing starts
-- each script as a child on a free loopback port and drives it with scripted phones.
local testing = require "luasip.testing"

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

-- the prompts `make prompts` makes with flite (the menu, the voicemail)
local PROMPTS = "build/prompts"
local have_prompts = exists(PROMPTS .. "/welcome.wav")

-- an example with prompts and recordings (a temporary directory): t, and its stop
local function start_voice_app(script)
  local recordings = os.tmpname()
  os.remove(recordings)
  assert(os.execute("mkdir -p " .. recordings))
  local t = testing.start{ script = script,
    env = { IVR_RECORDINGS = recordings, IVR_PROMPTS = PROMPTS } }
  return t, function()
    t:close()
    os.execute("rm -rf " .. recordings)
  end
end

describe("examples/uas.lua (tested with luasip.testing)", function()
  local t
  setup(function() t = testing.start{ script = "examples/uas.lua" } end)
  teardown(function() if t then t:close() end end)

  it("answers OPTIONS with what it allows", function()
    local res = t:options(t:uri()):expect(200)
    assert.matches("INVITE", res:header("Allow"))
  end)

  it("rings, answers with an SDP answer, and takes the BYE", function()
    local call = t:invite(t:uri("bob"))
    call:expect("1xx")
    local ok = call:expect(200)
    assert.matches("m=audio %d+ RTP/AVP 0", ok.body)
    call:ack()
    call:bye()
    t:expect_output("call ended: remote bye")
  end)

  it("rings the user 'ring' until the caller cancels", function()
    local call = t:invite(t:uri("ring"))
    call:expect("1xx")
    call:cancel()
    call:expect(487)
  end)

  it("echoes a REGISTER's Contact and takes MESSAGE", function()
    local res = t:register{ expires = 120 }:expect(200)
    assert.matches("expires=120", res:header("Contact"))
    t:message(t:uri("bob"), "hi there"):expect(200)
    t:expect_output("hi there")
  end)
end)

describe("examples/pbx.lua (tested with luasip.testing)", function()
  local t, stop
  setup(function() t, stop = start_voice_app("examples/pbx.lua") end)
  teardown(function() if stop then stop() end end)

  it("connects two registered users, each authenticated by digest", function()
    local alice = t:phone("alice", { password = "alice-secret" })
    local bob = t:phone("bob", { password = "bob-secret" })
    alice:register():expect(200)
    bob:register():expect(200)
    local call = alice:invite("bob")
    local incoming = bob:expect_call()
    assert.equal("sip:alice@127.0.0.1", incoming.from.uri)
    incoming:ring()
    call:expect(180)
    incoming:answer()
    call:expect(200)
    call:ack()
    call:bye()
    incoming:expect_bye()
    alice:unregister():expect(200)
    bob:unregister():expect(200)
  end)

  it("refuses a wrong password, unknown users and other domains", function()
    t:phone("alice", { password = "guess" }):register():expect(401)
    local carol = t:phone("carol", { password = "carol-secret" })
    carol:message("nobody", "x"):expect(404)
    carol:message("bob", "x"):expect(480)                   -- not registered
    carol:message("sip:bob@elsewhere.example", "x"):expect(403)
  end)

  it("drops requests from SIP scanners", function()
    t:options(t:uri(), { headers = { ["User-Agent"] = "friendly-scanner" } }):expect_no_response(1)
    t:options(t:uri(), { headers = { ["User-Agent"] = "Linphone/5.2" } }):expect(200)
  end)

  it("delivers a MESSAGE to a registered user", function()
    local alice = t:phone("alice", { password = "alice-secret" })
    local carol = t:phone("carol", { password = "carol-secret" })
    carol:register():expect(200)
    local tx = alice:message("carol", "lunch?")
    local m = carol:expect_request("MESSAGE")
    assert.equal("lunch?", m.body)
    m:reply(200)
    tx:expect(200)
    carol:unregister():expect(200)
  end)

  ;(have_prompts and it or pending)("reaches the voice menu at sip:ivr and leaves with 9", function()
    local call = t:invite("ivr", { media = true })
    call:expect(200)
    assert.is_false(call:hear(1).silence)                  -- the welcome prompt
    call:send_dtmf("9")
    call:expect_bye(15)
  end)

  -- (last: bob stays refused for a minute)
  it("refuses a password guesser after five failures, and nobody else", function()
    local guesser = t:phone("bob", { password = "guess" })
    for _ = 1, 5 do guesser:register():expect(401) end
    t:phone("bob", { password = "bob-secret" }):register():expect(403)
    t:phone("alice", { password = "alice-secret" }):register():expect(200)
    t:expect_output("5 failed digests from 127.0.0.1 for bob")
  end)
end)

describe("examples/ivr.lua (tested with luasip.testing)", function()
  local t, stop
  setup(function() t, stop = start_voice_app("examples/ivr.lua") end)
  teardown(function() if stop then stop() end end)

  ;(have_prompts and it or pending)("plays the menu, echoes a tone in the echo test, and hangs up on 9",
    function()
      local call = t:invite(t:uri("menu"), { media = true })
      call:expect(200)
      call:ack()
      assert.is_false(call:hear(1).silence)                -- welcome
      call:send_dtmf("1")                                  -- the echo test
      call:send_tone{ freqs = { 1000 }, ms = 20000 }
      local echoed
      for _ = 1, 20 do                                     -- the prompt first, then our tone
        local heard = call:hear(0.5)
        if heard.frequency and math.abs(heard.frequency - 1000) < 15
          and #heard.frequencies == 1 then
          echoed = heard
          break
        end
      end
      assert.is_truthy(echoed, "the echo test sent our 1000 Hz tone back")
      call:stop_output()
      call:send_dtmf("#9")                                 -- back to the menu, then goodbye
      call:expect_bye(15)
      t:expect_output("echo test")
    end)

  ;(have_prompts and it or pending)("says back the number entered after 3", function()
    local call = t:invite(t:uri("menu"), { media = true })
    call:expect(200)
    call:send_dtmf("3")
    call:send_dtmf("42#")
    t:expect_output("entered 42 terminator", 10)
    assert.is_false(call:hear(1).silence)                  -- "you entered ..."
    call:bye()
  end)
end)
