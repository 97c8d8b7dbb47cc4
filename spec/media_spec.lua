local H = require "spec.helper"
local sip = H.sip
local core = require "luasip.core"

-- Media on calls with the real engine (luasip.rtp): two luasip agents calling each other
-- over loopback, RTP between them, recordings checked with sox.  The verbs' state machines
-- are covered without sockets by spec/media_verbs_spec.lua.
local function have(cmd) return os.execute("command -v " .. cmd .. " >/dev/null 2>&1") end
local engine = core.rtp_open ~= nil
local it_media = engine and it or pending
local it_sox = (engine and have("sox")) and it or pending

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)

local function sox(args) return os.execute("sox " .. args .. " >/dev/null 2>&1") end

-- rough frequency (Hz) and RMS amplitude of a WAV file (sox stat)
local function stat(path)
  local p = io.popen("sox " .. H.shquote(path) .. " -n stat 2>&1")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("Rough%s+frequency:%s+(%-?[%d%.]+)")),
    tonumber(out:match("RMS%s+amplitude:%s+([%d%.]+)")),
    tonumber(out:match("Length %(seconds%):%s+([%d%.]+)"))
end

describe("luasip media on calls (RTP engine)", function()
  local a, b, uas, uas_done
  local PROMPT
  setup(function()
    if engine and have("sox") then
      PROMPT = tmp .. "/prompt.wav"
      sox("-n -r 8000 -c 1 -b 16 " .. PROMPT .. " synth 3 sine 600 vol 0.5")
    end
  end)
  before_each(function()
    a, b = H.agent(), H.agent()
    uas, uas_done = {}, false
  end)
  after_each(function() H.close_agents() end)

  local function call(script, answer_opts, invite_opts)
    b:on("INVITE", function(req)
      local d, err, code = req:answer(answer_opts or { media = true })
      uas.dialog, uas.err, uas.code = d, err, code
      if d and script then uas.result = { script(d, req) } end
      uas_done = true
    end)
    local o = { uri = b:uri("ivr"), media = true }
    for k, v in pairs(invite_opts or {}) do o[k] = v end
    return H.run(function() return a:invite(o) end)
  end
  local function wait_uas(s) H.run_until(function() return uas_done end, s or 10, "the UAS script") end
  local function hangup(d) H.run(function() d:hangup() end) end

  it_sox("carries a tone from the caller to a recording of the callee", function()
    local path = tmp .. "/tone.wav"
    local d = call(function(d) return d:record(path, { beep = false, max = 1.5, silence = false }) end)
    H.run(function() d:tone({ freqs = { 1000 }, ms = 2500 }) end)
    wait_uas()
    assert.equal("max", uas.result[1])
    assert.is_true(uas.result[2] >= 1400 and uas.result[2] <= 1600)
    local freq, rms, len = stat(path)
    assert.is_true(len > 1.3 and len < 1.7, "length " .. tostring(len))
    assert.is_true(rms > 0.05, "rms " .. tostring(rms))
    assert.is_true(freq > 900 and freq < 1100, "frequency " .. tostring(freq))
    hangup(d)
  end)

  it_media("collects RFC 4733 digits sent with send_dtmf", function()
    local d = call(function(d) return d:collect{ max = 4, terminators = "#", timeout = 5 } end)
    assert.equal("done", H.run(function() return d:send_dtmf("1234") end))
    wait_uas()
    assert.same({ "1234", "max" }, uas.result)
    hangup(d)
  end)

  it_media("ends collect at the terminator", function()
    local d = call(function(d) return d:collect{ max = 8, timeout = 5 } end)
    H.run(function() return d:send_dtmf("90#") end)
    wait_uas()
    assert.same({ "90", "terminator", "#" }, uas.result)
    hangup(d)
  end)

  it_media("collects SIP INFO digits", function()
    local d = call(function(d) return d:collect{ max = 2, timeout = 5 } end)
    H.run(function() return d:send_dtmf("*0", { mode = "info" }) end)
    wait_uas()
    assert.same({ "*0", "max" }, uas.result)
    hangup(d)
  end)

  it_media("detects in-band digits", function()
    local d = call(function(d) return d:collect{ max = 3, timeout = 8 } end,
      { media = { dtmf = "inband" } })
    assert.equal("done", H.run(function() return d:send_dtmf("159", { mode = "inband" }) end))
    wait_uas()
    assert.same({ "159", "max" }, uas.result)
    hangup(d)
  end)

  it_media("keeps digits sent before collect starts", function()
    local d = call(function(d)
      d:wait_request("MESSAGE", 5):reply(200)
      return d:collect{ max = 2, timeout = 0.5 }
    end)
    H.run(function()
      d:send_dtmf("42")
      d:request("MESSAGE")
    end)
    wait_uas()
    assert.same({ "42", "max" }, uas.result)
    hangup(d)
  end)

  it_media("times out on the first digit and between digits", function()
    local d = call(function(d)
      local t0 = sip.now()
      local r1 = { d:collect{ max = 3, timeout = 0.4 } }
      local s1 = sip.now() - t0
      return r1[1], r1[2], s1
    end)
    wait_uas()
    assert.is_nil(uas.result[1])
    assert.equal("timeout", uas.result[2])
    assert.is_true(uas.result[3] >= 0.38 and uas.result[3] < 1.2)
    hangup(d)
  end)

  it_sox("stops a prompt on a digit and keeps the digit", function()
    local d = call(function(d)
      local t0 = sip.now()
      local r, ms, digit = d:play(PROMPT, { barge_in = true })
      return r, ms, digit, sip.now() - t0, d:collect{ max = 1, timeout = 1 }
    end)
    H.run(function()
      sip.sleep(0.3)
      d:send_dtmf("7")
    end)
    wait_uas()
    local r = uas.result
    assert.equal("digit", r[1])
    assert.equal("7", r[3])
    assert.is_true(r[2] < 2000 and r[4] < 2)
    assert.equal("7", r[5])
    hangup(d)
  end)

  it_sox("plays a WAV to its end", function()
    local short = tmp .. "/short.wav"
    sox("-n -r 16000 -c 1 -b 16 " .. short .. " synth 0.5 sine 440 vol 0.3")
    local d = call(function(d) return d:play(short) end)
    wait_uas()
    assert.equal("done", uas.result[1])
    assert.is_true(uas.result[2] >= 400 and uas.result[2] <= 700)
    hangup(d)
  end)

  for _, verb in ipairs{ "play", "collect", "record" } do
    it_sox("returns hangup at once from " .. verb .. " when the caller hangs up", function()
      local t = {}
      local d = call(function(d)
        local r
        if verb == "play" then r = { d:play(PROMPT) }
        elseif verb == "collect" then r = { d:collect{ timeout = 10 } }
        else r = { d:record(tmp .. "/hup.wav", { beep = false, silence = false }) } end
        t.at = sip.now()
        return (table.unpack or unpack)(r, 1, 3)
      end)
      local t0
      H.run(function()
        sip.sleep(0.3)
        t0 = sip.now()
        d:hangup()
      end)
      wait_uas()
      local reason = verb == "collect" and uas.result[2] or uas.result[1]
      assert.equal("hangup", reason)
      assert.is_true(t.at - t0 < 0.2)
    end)
  end

  it_sox("ends a recording on silence, and says a number from the prompt set", function()
    os.execute("mkdir -p " .. tmp .. "/p/digits")
    for _, n in ipairs{ "40", "2" } do
      sox("-n -r 8000 -c 1 -b 16 " .. tmp .. "/p/digits/" .. n .. ".wav synth 0.2 sine 500 vol 0.3")
    end
    local d = call(function(d)
      local t0 = sip.now()
      local r, ms = d:record(tmp .. "/quiet.wav", { beep = false, silence = 0.5, max = 5 })
      return r, ms, sip.now() - t0
    end)
    local said = { H.run(function() return d:say_number(42, { prompts = tmp .. "/p" }) end) }
    wait_uas()
    assert.equal("done", said[1])
    assert.is_true(said[2] >= 350 and said[2] <= 500, "said " .. tostring(said[2]))
    assert.equal("silence", uas.result[1])
    assert.is_true(uas.result[3] < 2)
    hangup(d)
  end)

  it_media("answers 488 when no codec is common", function()
    local d, _, code = call(nil, { media = { codecs = { "PCMA" } } },
      { media = { codecs = { "PCMU" } } })
    wait_uas()
    assert.is_nil(d)
    assert.equal(488, code)
    assert.equal(488, uas.code)
  end)

  it_media("changes the stream direction on a hold re-INVITE", function()
    local d = call()
    wait_uas()
    H.run(function()
      assert(d:request("INVITE", { body = sip.sdp.hold(d.local_sdp), content_type = "application/sdp" }))
    end)
    assert.equal("sendonly", d:media_stats().direction)
    assert.equal("recvonly", uas.dialog:media_stats().direction)
    hangup(d)
  end)

  it_sox("plays early media after a 183, then answers with the same stream", function()
    local path = tmp .. "/early.wav"
    local tone = tmp .. "/t1k.wav"
    sox("-n -r 8000 -c 1 -b 16 " .. tone .. " synth 1 sine 1000 vol 0.5")
    b:on("INVITE", function(req)
      local early = assert(req:progress{ media = true })
      uas.early = { early:play(tone) }
      uas.same = assert(req:answer()) == early
      uas_done = true
    end)
    local rec
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("x"), media = true,
        on_provisional = function(r, tx)
          if r.status == 183 and not rec then
            rec = true
            sip.spawn(function()
              local ed = tx:dialog()
              if ed then rec = { ed:record(path, { beep = false, max = 0.8, silence = false }) } end
            end)
          end
        end })
    end)
    wait_uas()
    assert.equal("done", uas.early[1])
    assert.is_true(uas.same)
    H.run_until(function() return type(rec) == "table" end, 5, "the early recording")
    assert.equal("max", rec[1])
    local f = stat(path)
    assert.is_true(f > 900 and f < 1100, "early media " .. tostring(f))
    hangup(d)
  end)

  it_sox("relays media through a B2BUA both ways", function()
    local c = H.agent()
    local to_c, to_a = tmp .. "/to_c.wav", tmp .. "/to_a.wav"
    c:on("INVITE", function(req)
      local d = assert(req:answer{ media = true })
      sip.spawn(function() d:tone({ freqs = { 600 }, ms = 3000 }) end)
      uas.c = { d:record(to_c, { beep = false, max = 1.5, silence = false }) }
    end)
    b:on("INVITE", function(req) sip.b2bua(req, c:uri("carol"), { media = "relay" }) end)
    local d = H.run(function() return assert(a:invite{ uri = b:uri("carol"), media = true }) end)
    local ra
    H.run(function()
      sip.spawn(function() d:tone({ freqs = { 1000 }, ms = 3000 }) end)
      ra = { d:record(to_a, { beep = false, max = 1.5, silence = false }) }
    end)
    H.run_until(function() return uas.c end, 5)
    assert.equal("max", ra[1])
    local f1 = stat(to_c)
    local f2 = stat(to_a)
    assert.is_true(f1 > 900 and f1 < 1100, "A->C " .. tostring(f1))
    assert.is_true(f2 > 540 and f2 < 660, "C->A " .. tostring(f2))
    hangup(d)
  end)

  it_sox("relays early media through a B2BUA", function()
    local c = H.agent()
    local path = tmp .. "/early_b2b.wav"
    c:on("INVITE", function(req)
      local early = assert(req:progress{ media = true })
      early:tone({ freqs = { 1000 }, ms = 1500 })
      uas.c = assert(req:answer())
    end)
    b:on("INVITE", function(req) sip.b2bua(req, c:uri("carol"), { media = "relay" }) end)
    local rec
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("carol"), media = true,
        on_provisional = function(r, tx)
          if r.status == 183 and not rec then
            rec = true
            sip.spawn(function()
              rec = { tx:dialog():record(path, { beep = false, max = 0.8, silence = false }) }
            end)
          end
        end })
    end)
    H.run_until(function() return type(rec) == "table" end, 5, "the early recording")
    assert.equal("max", rec[1])
    local f = stat(path)
    assert.is_true(f > 900 and f < 1100, "early media via the B2BUA " .. tostring(f))
    hangup(d)
  end)

  it_sox("echoes what the caller sends until the terminator", function()
    local path = tmp .. "/echo.wav"
    local d = call(function(d) return d:echo{ terminators = "#" } end)
    H.run(function()
      sip.spawn(function() d:tone({ freqs = { 800 }, ms = 2000 }) end)
      d:record(path, { beep = false, max = 1.5, silence = false })
      d:send_dtmf("#")
    end)
    wait_uas()
    assert.equal("terminator", uas.result[1])
    local f = stat(path)
    assert.is_true(f > 700 and f < 900, "echo " .. tostring(f))
    hangup(d)
  end)
end)
