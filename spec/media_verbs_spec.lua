local H = require "spec.helper"
local sip = H.sip
local core = require "luasip.core"
local media = require "luasip.media"
local T = require "luasip.testing"

-- The media verbs (SDP, the DTMF paths, the verbs' state machines) between two luasip
-- agents on loopback, on the C engine (luasip.rtp): real RTP, digits sent as RFC 4733
-- events, SIP INFO or in-band tones, and what each side hears checked in a recording of
-- the far end (short tone prompts made here; luasip.testing's tone_ms/loud_ms read them).
-- spec/media_spec.lua checks the engine's audio with sox, spec/rtp_spec.lua the engine.

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp .. "/digits")
local function wav(name, hz, seconds) return T.tone_wav(tmp .. "/" .. name, hz, seconds * 1000) end
local SHORT, LONG = wav("short.wav", 700, 0.2), wav("long.wav", 500, 3)
local EARLY, LATER = wav("early.wav", 600, 0.4), wav("later.wav", 900, 0.4)
-- the prompt set: each file its own frequency, 100 ms
local SAY = { ["0"] = 400, ["2"] = 600, ["4"] = 1400, ["40"] = 800, hundred = 1600,
  thousand = 1800, star = 1000, pound = 1200 }
for n, hz in pairs(SAY) do wav("digits/" .. n .. ".wav", hz, 0.1) end

-- heard_ms(got, want): a tone of want ms was heard: not more than its length, and most
-- of it, less what a loaded machine cost (the engine skips the 20 ms ticks it missed:
-- core.media_stats().skipped_ticks since the test began)
local skipped0 = 0
local function heard_ms(got, want, what)
  local skipped = (core.media_stats().skipped_ticks - skipped0) * 20
  assert(got >= math.max(20, want * 0.6 - skipped) and got <= want + 60,
    ("%s: heard %d ms, %d ms played, %d ms skipped"):format(what or "tone", got, want, skipped))
end

local function streams() return core.media_stats().streams end
local function no_streams(what)
  H.run_until(function() return streams() == 0 end, 5, what or "every stream closed")
end

local listen = T.listen

describe("luasip media verbs (C engine)", function()
  local a, b, uas, uas_done
  teardown(function() os.execute("rm -rf " .. H.shquote(tmp)) end)
  before_each(function()
    skipped0 = core.media_stats().skipped_ticks
    a, b = H.agent(), H.agent()
    uas, uas_done = {}, false
  end)
  after_each(function()
    H.close_agents()
    no_streams("every stream closed after the test")
  end)

  -- b answers with media and runs script(d, req) in the handler; returns the UAC dialog
  local function call(script, answer_opts, invite_opts)
    b:on("INVITE", function(req)
      local d, err, code = req:answer(answer_opts or { media = true })
      uas.dialog, uas.err, uas.code = d, err, code
      if d and script then uas.result = { script(d, req) } end
      uas_done = true
    end)
    local o = { uri = b:uri("ivr"), media = true }
    for k, v in pairs(invite_opts or {}) do o[k] = v end
    local d, res, code = H.run(function() return a:invite(o) end)
    return d, res, code
  end

  local function wait_uas() H.run_until(function() return uas_done end, 10, "the UAS script") end

  it("offers and answers PCMU, PCMA and telephone-event on the stream's port", function()
    local d = call(function(d) return d.remote_sdp, d.local_sdp end)
    wait_uas()
    local offer, answer = uas.result[1], uas.result[2]
    assert.matches("m=audio %d+ RTP/AVP 0 8 101", offer)
    assert.matches("a=rtpmap:101 telephone%-event/8000", offer)
    assert.matches("a=fmtp:101 0%-16", offer)
    assert.matches("m=audio %d+ RTP/AVP 0 8 101", answer)
    local s = d:media_stats()
    assert.equal("PCMU", s.send_codec)
    assert.equal(101, s.te_send_pt)
    assert.equal("sendrecv", s.direction)
    local us = uas.dialog:media_stats()
    assert.equal(s.local_port, us.remote_port)
    assert.equal(us.local_port, s.remote_port)
    -- audio both ways: each side plays its tone, the other hears it
    local a_heard, b_heard = listen(d), listen(uas.dialog)
    local done = {}
    sip.spawn(function() done.b = uas.dialog:play(SHORT) end)
    sip.spawn(function() done.a = d:play(EARLY) end)
    H.run_until(function() return done.a and done.b end, 5, "both prompts played")
    assert.same({ a = "done", b = "done" }, done)
    local ax, bx = a_heard(), b_heard()
    heard_ms(T.tone_ms(ax, 700), 200)
    assert.equal(0, T.tone_ms(ax, 600))
    heard_ms(T.tone_ms(bx, 600), 400)
    assert.equal(0, T.tone_ms(bx, 700))
    H.run(function() d:hangup() end)
    no_streams()
  end)

  it("sends on the peer's telephone-event payload type and receives on ours", function()
    local d = call(nil, { media = { dtmf_pt = 100 } }, { media = { dtmf_pt = 110 } })
    wait_uas()
    -- the answer takes the offer's PT (RFC 3264): both send 110
    assert.equal(110, d:media_stats().te_send_pt)
    assert.equal(110, d:media_stats().te_recv_pt)
    assert.equal(110, uas.dialog:media_stats().te_send_pt)
    H.run(function() d:hangup() end)
  end)

  it("answers 488 when no codec is common, and closes the stream", function()
    local d, err, code = call(nil, { media = { codecs = { "PCMA" } } },
      { media = { codecs = { "PCMU" } } })
    wait_uas()
    assert.is_nil(d)
    assert.equal(488, code)
    assert.matches("488", err)
    assert.equal(488, uas.code)
    no_streams()
  end)

  it("fails a UAC call with 488 when the 2xx has no common codec, and hangs up", function()
    b:on("INVITE", function(req)
      local body = table.concat({ "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
        "t=0 0", "m=audio 4000 RTP/AVP 8", "a=rtpmap:8 PCMA/8000", "" }, "\r\n")
      local d = req:answer{ body = body }
      uas.reason = d and d:wait_end(5)
      uas_done = true
    end)
    local d, err, code = H.run(function()
      return a:invite{ uri = b:uri("x"), media = { codecs = { "PCMU" } } }
    end)
    assert.is_nil(d)
    assert.equal(488, code)
    assert.matches("no common codec", err)
    wait_uas()
    assert.equal("remote bye", uas.reason)
    no_streams()
  end)

  -- in-band: DTMF tones in the audio, detected by the callee's stream
  for _, mode in ipairs{ "rfc4733", "inband" } do
    it("collects " .. mode .. " digits up to max", function()
      local d = call(function(d) return d:collect{ max = 4, terminators = "#", timeout = 8 } end,
        { media = { dtmf = mode } })
      assert.equal("done", H.run(function() return d:send_dtmf("1*94", { mode = mode }) end))
      wait_uas()
      assert.same({ "1*94", "max" }, uas.result)
      H.run(function() d:hangup() end)
    end)
  end

  it("ends collect at a terminator, not included in the digits", function()
    local d = call(function(d) return d:collect{ max = 6 } end)
    H.run(function() return d:send_dtmf("12#") end)
    wait_uas()
    assert.same({ "12", "terminator", "#" }, uas.result)
    H.run(function() d:hangup() end)
  end)

  it("times out on the first digit, then on the inter-digit timer", function()
    local t = {}
    local d = call(function(d)
      local t0 = sip.now()
      t[1] = { d:collect{ timeout = 0.3 } }
      t[1].s = sip.now() - t0
      t0 = sip.now()
      t[2] = { d:collect{ max = 4, timeout = 2, inter_digit = 0.3 } }
      t[2].s = sip.now() - t0
    end)
    H.run_until(function() return t[1] end, 5)
    assert.same({ nil, "timeout" }, { t[1][1], t[1][2] })
    assert.is_true(t[1].s >= 0.28 and t[1].s < 1)
    H.run(function() return d:send_dtmf("12") end)
    wait_uas()
    assert.same({ "12", "timeout" }, { t[2][1], t[2][2] })
    assert.is_true(t[2].s < 1.5)
    H.run(function() d:hangup() end)
  end)

  it("keeps digits pressed before collect (type-ahead)", function()
    local d = call(function(d)
      d:wait_request("MESSAGE", 5):reply(200)    -- the caller has sent its digits
      return d:collect{ max = 3, timeout = 0.5 }
    end)
    H.run(function()
      d:send_dtmf("789")
      d:request("MESSAGE")
    end)
    wait_uas()
    assert.same({ "789", "max" }, uas.result)
    H.run(function() d:hangup() end)
  end)

  it("retries with the invalid prompt until the entry is valid", function()
    local d = call(function(d)
      return d:collect{ min = 2, max = 2, tries = 3, valid = "4[0-9]", invalid_prompt = SHORT,
        timeout = 3 }
    end)
    local heard = listen(d)
    H.run(function()
      d:send_dtmf("19")
      d:send_dtmf("42")
    end)
    wait_uas()
    assert.same({ "42", "max" }, uas.result)
    -- the invalid prompt was heard once, whole or cut by the next digit
    local ms = T.tone_ms(heard(), 700)
    assert.is_true(ms >= 40 and ms <= 260, ms .. " ms of the invalid prompt")
    H.run(function() d:hangup() end)
  end)

  it("returns invalid after the last try", function()
    local d = call(function(d)
      return d:collect{ max = 1, tries = 2, valid = function(s) return s == "1" end, timeout = 2 }
    end)
    H.run(function()
      d:send_dtmf("5")
      d:send_dtmf("6")
    end)
    wait_uas()
    assert.same({ nil, "invalid" }, { uas.result[1], uas.result[2] })
    H.run(function() d:hangup() end)
  end)

  it("stops a prompt on a digit (barge-in) and keeps the digit", function()
    local d = call(function(d)
      local t0 = sip.now()
      local r, ms, digit = d:play(LONG, { barge_in = true })
      return r, ms, digit, sip.now() - t0, d:wait_digit(1)
    end)
    local heard = listen(d)
    H.run(function() return d:send_dtmf("5") end)
    wait_uas()
    local r = uas.result
    assert.equal("digit", r[1])
    assert.equal("5", r[3])
    assert.is_true(r[4] < 1.5)
    assert.equal("5", r[5])
    local ms = T.tone_ms(heard(), 500)
    assert.is_true(ms > 0 and ms < 1500, ms .. " ms of the prompt heard")
    H.run(function() d:hangup() end)
  end)

  it("plays a collect prompt until a digit, then collects it", function()
    local d = call(function(d) return d:collect{ prompt = LONG, max = 2, timeout = 2 } end)
    H.run(function() return d:send_dtmf("3") end)
    H.run(function() return d:send_dtmf("4") end)
    wait_uas()
    assert.same({ "34", "max" }, uas.result)
    H.run(function() d:hangup() end)
  end)

  for _, verb in ipairs{ "play", "collect", "record", "wait_digit", "tone" } do
    it("returns hangup at once from " .. verb .. " when the caller hangs up", function()
      local t = {}
      local d = call(function(d)
        local t0 = sip.now()
        t.started = true
        local r
        if verb == "play" then r = { d:play(LONG) }
        elseif verb == "collect" then r = { d:collect{ timeout = 10 } }
        elseif verb == "record" then r = { d:record(tmp .. "/rec.wav", { beep = false }) }
        elseif verb == "wait_digit" then r = { d:wait_digit(10) }
        else r = { d:tone("ring") } end
        t.s = sip.now() - t0
        return (table.unpack or unpack)(r, 1, 3)
      end)
      H.run_until(function() return t.started end, 5)
      H.run(function()
        sip.sleep(0.2)                 -- the verb is under way (it does not end by time)
        d:hangup()
      end)
      wait_uas()
      local reason = (verb == "collect" or verb == "wait_digit") and uas.result[2] or uas.result[1]
      assert.equal("hangup", reason)
      assert.is_true(t.s < 1)
      no_streams()
    end)
  end

  it("stop() from another coroutine ends the running verb with stopped", function()
    local d = call(function(d)
      sip.spawn(function()
        sip.sleep(0.2)
        d:stop()
      end)
      return d:play(LONG)
    end)
    wait_uas()
    assert.equal("stopped", uas.result[1])
    H.run(function() d:hangup() end)
  end)

  it("takes SIP INFO digits (dtmf-relay and dtmf) into the same buffer", function()
    local d = call(function(d) return d:collect{ max = 3, timeout = 3, terminators = "" } end)
    H.run(function()
      assert.equal("done", d:send_dtmf("7", { mode = "info" }))
      local res = d:request("INFO", { content_type = "application/dtmf", body = "8" })
      assert.equal(200, res.status)
      res = d:request("INFO", { content_type = "application/dtmf-relay",
        body = "Signal=11\r\nDuration=160\r\n" })
      assert.equal(200, res.status)
    end)
    wait_uas()
    assert.same({ "78#", "max" }, uas.result)
    H.run(function() d:hangup() end)
  end)

  it("counts a digit sent both by RFC 4733 and INFO once", function()
    local seen = {}
    local d = call(function(d)
      d:on_dtmf(function(_, digit, source) seen[#seen + 1] = digit .. source end)
      return d:collect{ max = 2, timeout = 1.5, inter_digit = 1 }
    end)
    H.run(function()
      sip.spawn(function() d:send_dtmf("5", { mode = "rfc4733" }) end)
      d:send_dtmf("5", { mode = "info" })
    end)
    wait_uas()
    assert.same({ "5", "timeout" }, uas.result)
    assert.equal(1, #seen)
    H.run(function() d:hangup() end)
  end)

  it("records until a terminator, after a beep", function()
    local path = tmp .. "/msg.wav"
    os.remove(path)
    local d = call(function(d) return d:record(path, { max = 10, silence = false }) end)
    local heard = listen(d)
    -- the file exists once the beep is over and the recording runs
    H.run_until(function()
      local f = io.open(path)
      if f then f:close() end
      return f
    end, 5, "the recording started")
    H.run(function()
      assert.equal("done", d:tone{ freqs = { 800 }, ms = 400 })
      d:send_dtmf("#")
    end)
    wait_uas()
    assert.equal("terminator", uas.result[1])
    assert.is_true(uas.result[2] > 300)
    assert.equal("#", uas.result[3])
    heard_ms(T.tone_ms(heard(), 1000), 250)       -- the beep
    heard_ms(T.tone_ms(assert(T.wav_samples(path)), 800), 400)
    H.run(function() d:hangup() end)
  end)

  it("records until max and until silence", function()
    local d = call(function(d)
      return { d:record(tmp .. "/a.wav", { max = 0.3, beep = false }) },
        { d:record(tmp .. "/b.wav", { silence = 0.3, beep = false }) }
    end)
    wait_uas()
    assert.equal("max", uas.result[1][1])
    assert.equal("silence", uas.result[2][1])
    assert.near(300, #assert(T.wav_samples(tmp .. "/a.wav")) / 8, 60)
    H.run(function() d:hangup() end)
  end)

  it("puts the stream on hold and back with a re-INVITE", function()
    local d = call()
    wait_uas()
    H.run(function()
      local res = assert(d:request("INVITE", { body = sip.sdp.hold(d.local_sdp),
        content_type = "application/sdp" }))
      assert.equal(200, res.status)
    end)
    assert.equal("sendonly", d:media_stats().direction)
    assert.equal("recvonly", uas.dialog:media_stats().direction)
    H.run(function() assert(d:request("INVITE", { body = sip.sdp.unhold(d.local_sdp),
      content_type = "application/sdp" })) end)
    assert.equal("sendrecv", d:media_stats().direction)
    assert.equal("sendrecv", uas.dialog:media_stats().direction)
    H.run(function() d:hangup() end)
  end)

  it("plays early media after a 183 and answers with the same stream", function()
    b:on("INVITE", function(req)
      local early = assert(req:progress{ media = true })
      uas.early = { early:play(EARLY) }
      local d = assert(req:answer())
      uas.same = d == early
      uas.port = d:media_stats().local_port
      uas.later = { d:play(LATER) }
      uas_done = true
    end)
    local prov, early_heard = {}, nil
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("x"), media = true,
        on_provisional = function(r, tx)
          prov[#prov + 1] = r.status .. (r.body and " sdp" or "")
          early_heard = listen(tx:dialog())       -- the caller's stream, before the answer
        end })
    end)
    local before = early_heard()                  -- what the caller heard until the 2xx
    local after = listen(d)
    wait_uas()
    assert.same({ "183 sdp" }, prov)
    assert.equal("done", uas.early[1])
    assert.equal("done", uas.later[1])
    heard_ms(T.tone_ms(before, 600), 400, "early media")
    assert.equal(0, T.tone_ms(before, 900))
    heard_ms(T.tone_ms(after(), 900), 400)
    assert.is_true(uas.same)
    assert.equal(uas.port, d:media_stats().remote_port)
    assert.equal(2, streams())
    H.run(function() d:hangup() end)
    no_streams()
  end)

  it("sends the 183 reliably when asked and the caller supports 100rel", function()
    b:on("INVITE", function(req)
      assert(req:progress{ media = true, reliable = true })
      uas.dialog = assert(req:answer())
      uas_done = true
    end)
    local prov = {}
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("x"), media = true, headers = { Supported = "100rel" },
        on_provisional = function(r) prov[#prov + 1] = r:header("RSeq") ~= nil end })
    end)
    wait_uas()
    assert.same({ true }, prov)
    assert.equal("sendrecv", d:media_stats().direction)
    H.run(function() d:hangup() end)
  end)

  it("offers the same stream again when the INVITE is challenged", function()
    local offers = {}
    b:on("INVITE", function(req)
      offers[#offers + 1] = req.body
      local user = sip.auth.check(req, { realm = "media", password = function() return "pw" end })
      if not user then return end
      uas.dialog = assert(req:answer{ media = true })
      uas_done = true
    end)
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("x"), media = true,
        auth = { username = "u", password = "pw" } })
    end)
    wait_uas()
    assert.equal(2, #offers)
    assert.equal(offers[1], offers[2])
    assert.equal(2, streams())
    assert.equal(uas.dialog:media_stats().local_port, d:media_stats().remote_port)
    H.run(function() d:hangup() end)
    no_streams()
  end)

  it("says numbers and digits from the prompt set", function()
    assert.same({ "/p/digits/40.wav", "/p/digits/2.wav" }, media.number_files("/p", 42))
    assert.same({ "/p/digits/1.wav", "/p/digits/hundred.wav", "/p/digits/5.wav" },
      media.number_files("/p", 105))
    assert.same({ "/p/digits/2.wav", "/p/digits/thousand.wav", "/p/digits/19.wav" },
      media.number_files("/p", 2019))
    assert.same({ "/p/digits/0.wav" }, media.number_files("/p", 0))
    assert.same({ "/p/digits/1.wav", "/p/digits/star.wav", "/p/digits/pound.wav" },
      media.digit_files("/p", "1*#"))
    local d = call(function(d)
      d:wait_request("MESSAGE", 5):reply(200)    -- the caller listens
      return { d:say_number(42, { prompts = tmp }) }, { d:say_digits("0*#", { prompts = tmp }) }
    end)
    local heard = listen(d)
    H.run(function() d:request("MESSAGE") end)
    wait_uas()
    assert.equal("done", uas.result[1][1])
    assert.equal("done", uas.result[2][1])
    local x = heard()
    for _, n in ipairs{ "40", "2", "0", "star", "pound" } do
      heard_ms(T.tone_ms(x, SAY[n]), 100, n)
    end
    for _, n in ipairs{ "4", "hundred", "thousand" } do assert.equal(0, T.tone_ms(x, SAY[n]), n) end
    H.run(function() d:hangup() end)
  end)

  it("fails play with a message for a missing file", function()
    local d = call(function(d) return d:play(tmp .. "/nope.wav") end)
    wait_uas()
    assert.is_nil(uas.result[1])
    assert.matches("cannot open", uas.result[2])
    assert.equal("error", uas.result[3])
    H.run(function() d:hangup() end)
  end)

  it("raises for verbs on a call without media, naming the verb at the caller", function()
    b:on("INVITE", function(req) req:answer() end)
    local d = H.run(function() return assert(a:invite{ uri = b:uri("x") }) end)
    local ok, err = pcall(d.play, d, "x.wav")
    assert.is_false(ok)
    assert.equal("luasip.dialog:play: this call has no media", err:gsub("^[^:]*:%d+: ", ""))
    local line = debug.getinfo(1, "l").currentline
    local _, e2 = pcall(function() d:collect() end)
    assert.matches("media_verbs_spec.lua:" .. (line + 1) .. ": luasip.dialog:collect: this call", e2)
    H.run(function() d:bye() end)
  end)

  it("raises on unknown options naming the public function", function()
    local d = call(function(d)
      local ok, err = pcall(d.collect, d, { maxx = 1 })
      return ok, err
    end)
    wait_uas()
    assert.is_false(uas.result[1])
    assert.matches("luasip.dialog:collect: unknown option 'maxx'", uas.result[2])
    local ok, err = pcall(sip.agent, { media = { port = 1 } })
    assert.is_false(ok)
    assert.matches("luasip.agent media: unknown option 'port'", err)
    H.run(function() d:hangup() end)
  end)

  it("echoes what the caller says until #", function()
    local d = call(function(d) return d:echo{ timeout = 10 } end)
    local heard = listen(d)
    H.run(function()
      assert.equal("done", d:tone{ freqs = { 800 }, ms = 400 })
      d:send_dtmf("#")
    end)
    wait_uas()
    assert.equal("terminator", uas.result[1])
    assert.equal("#", uas.result[3])
    heard_ms(T.tone_ms(heard(), 800), 400)
    H.run(function() d:hangup() end)
  end)

  it("sends silence for its length, then plays on", function()
    local d = call(function(d)
      d:wait_request("MESSAGE", 5):reply(200)
      local t0 = sip.now()
      local r = { d:silence(0.4) }
      r[3] = sip.now() - t0
      r[4] = d:play(SHORT)
      return r
    end)
    local heard = listen(d)
    H.run(function() d:request("MESSAGE") end)
    wait_uas()
    local r = uas.result[1]
    assert.equal("done", r[1])
    assert.is_true(r[3] >= 0.35 and r[3] < 1.5, r[3])
    assert.equal("done", r[4])
    local ms, first = T.loud_ms(heard())
    heard_ms(ms, 200, "sound")
    assert.is_true(first >= 300, "sound after " .. tostring(first) .. " ms")
    H.run(function() d:hangup() end)
  end)

  it("flushes the type-ahead digits", function()
    local d = call(function(d)
      d:wait_request("MESSAGE", 5):reply(200)
      return d:flush_digits(), d:wait_digit(0.3)
    end)
    H.run(function()
      d:send_dtmf("12")
      d:request("MESSAGE")
    end)
    wait_uas()
    assert.same({ "12", nil, "timeout" }, { uas.result[1], uas.result[2], uas.result[3] })
    H.run(function() d:hangup() end)
  end)

  it("bridges two calls and unbridges them: each hears the other, then not", function()
    local c = H.agent()
    local calls = {}
    c:on("INVITE", function(req) calls.c = assert(req:answer{ media = true }) end)
    b:on("INVITE", function(req) calls.b = assert(req:answer{ media = true }) end)
    local da = H.run(function() return assert(a:invite{ uri = b:uri("x"), media = true }) end)
    -- a calls b, b's second call is to c (b is the UAC there)
    local d2 = H.run(function() return assert(b:invite{ uri = c:uri("z"), media = true }) end)
    H.run_until(function() return calls.b and calls.c end, 5)
    local b1 = calls.b
    assert.is_true(assert(b1:bridge(d2)))
    local a_heard, c_heard = listen(da), listen(calls.c)
    local done = {}
    sip.spawn(function() done.a = da:play(LATER) end)
    sip.spawn(function() done.c = calls.c:play(EARLY) end)
    H.run_until(function() return done.a and done.c end, 5)
    heard_ms(T.tone_ms(a_heard(), 600), 400, "a hears c")
    heard_ms(T.tone_ms(c_heard(), 900), 400, "c hears a")
    assert.is_true(b1:unbridge())
    assert.is_false(b1:media_stats().bridged)
    c_heard = listen(calls.c)
    H.run(function() da:play(SHORT) end)
    assert.equal(0, T.tone_ms(c_heard(), 700))
    H.run(function() da:hangup() end)
    H.run(function() d2:hangup() end)
  end)

  it("relays early media through a B2BUA: A gets our 183 with SDP, bridged to B's", function()
    local c = H.agent()
    local legs
    c:on("INVITE", function(req)
      local early = assert(req:progress{ media = true })
      uas.early = { early:play(EARLY) }
      uas.c = assert(req:answer())
    end)
    b:on("INVITE", function(req)
      legs = { sip.b2bua(req, c:uri("carol"), { media = "relay" }) }
    end)
    local prov, early_heard = {}, nil
    local d = H.run(function()
      return assert(a:invite{ uri = b:uri("carol"), media = true,
        on_provisional = function(r, tx)
          prov[#prov + 1] = r.status .. (r.body and " sdp" or "")
          early_heard = early_heard or listen(tx:dialog())
        end })
    end)
    H.run_until(function() return legs end)
    assert.same({ "183 sdp" }, prov)
    assert.equal("done", uas.early[1])
    heard_ms(T.tone_ms(early_heard(), 600), 400, "carol's early media, through b")
    assert.is_true(legs[1]:media_stats().bridged)
    assert.equal(legs[1]:media_stats().local_port, d:media_stats().remote_port)
    assert.equal(4, streams())
    H.run(function() d:hangup() end)
    H.run_until(function() return streams() == 0 end, 5, "all streams closed")
  end)

  it("anchors media in a B2BUA: both legs have a stream, bridged", function()
    local c = H.agent()
    local legs
    c:on("INVITE", function(req)
      local d = assert(req:answer{ media = true })
      uas.c = d
      uas.digits = { d:collect{ max = 1, timeout = 5 } }
    end)
    b:on("INVITE", function(req)
      legs = { sip.b2bua(req, c:uri("carol"), { media = "relay" }) }
    end)
    local d = H.run(function() return assert(a:invite{ uri = b:uri("carol"), media = true }) end)
    H.run_until(function() return legs end)
    local la, lb = legs[1], legs[2]
    assert.is_true(la:media_stats().bridged)
    assert.is_true(lb:media_stats().bridged)
    assert.equal(la:media_stats().local_port, d:media_stats().remote_port)
    assert.equal(lb:media_stats().local_port, uas.c:media_stats().remote_port)
    assert.equal(4, streams())
    -- an INFO digit from A is sent on to C as RFC 4733 (RFC 4733 events pass in C)
    H.run(function() d:send_dtmf("1", { mode = "info" }) end)
    H.run_until(function() return uas.digits end, 5, "C collected")
    assert.same({ "1", "max" }, uas.digits)
    H.run(function() d:hangup() end)
    H.run_until(function() return streams() == 0 end, 5, "all streams closed")
  end)
end)
