local H = require "spec.helper"
local B = require "spec.peers.baresip.peer"
local core = require "luasip.core"
local T = require "luasip.testing"
local sip = H.sip

-- The IVR of examples/ivr.lua (menu in examples/ivr_menu.lua) and the voicemail of
-- examples/pbx.lua.  Three parts:
--   * the menu in this process, on a luasip agent, called by luasip UACs on the C engine
--     (digits by RFC 4733, SIP INFO and in-band tones, transfer, hangups), with short
--     prompts made here, each a tone of its own frequency: what the caller hears is
--     recorded and the prompts found in it (luasip.testing: listen, tone_ms);
--   * examples/ivr.lua as a process with the prompts of `make prompts`, called by real
--     peers on loopback: baresip (sends digits with sndcode, records what it hears with its
--     sndfile module; sox finds the prompt, or the echo of its own tone, in that), sipp
--     (RFC 2833 captures), a luasip caller sending a 1 kHz tone into a voicemail;
--   * examples/pbx.lua's voicemail and sip:ivr@.
-- Every peer is bounded by timeout(1) and stopped in `finally`; the loop is stepped until a
-- condition holds (a log line, an event, a file size), never slept on.

local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
local PROMPTS = "build/prompts"
local defer = H.defer_with(function(f) finally(f) end)

local function ok(cmd)
  local r = os.execute("{ " .. cmd .. "; } >/dev/null 2>&1")
  return r == true or r == 0
end

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function exists(path)
  local f = io.open(path, "rb")
  if f then f:close() end
  return f ~= nil
end

local function size(path)
  local f = io.open(path, "rb")
  if not f then return 0 end
  local n = f:seek("end")
  f:close()
  return n
end

local REAL = core.rtp_open ~= nil
local have_prompts = exists(PROMPTS .. "/menu.wav") and exists(PROMPTS .. "/digits/pound.wav")
local have_sox = ok("command -v sox")
local baresip_ok, baresip_why = B.available()
if baresip_ok and not exists(B.module_path() .. "/sndfile.so") then
  baresip_ok, baresip_why = false, "baresip module sndfile.so not found"
end
local have_sipp = ok("command -v sipp") and exists("/usr/share/sip-tester/dtmf_2833_pound.pcap")

local function gate(cond, why)
  return cond and it or function(name) pending(name .. " -- " .. why) end
end
local NO_ENGINE = "the C media engine (core.rtp_open) is not built in"
local it_prompts = gate(have_prompts and have_sox, "no prompts (make prompts: flite, sox)")
local it_peer = gate(REAL and have_prompts and have_sox, REAL and "no prompts or sox" or NO_ENGINE)
local it_baresip = gate(REAL and have_prompts and have_sox and baresip_ok,
  not REAL and NO_ENGINE or baresip_why or "no prompts or sox")
local it_sipp = gate(REAL and have_prompts and have_sipp,
  not REAL and NO_ENGINE or "sipp or its RFC 2833 pcaps missing")

local function tmpdir()
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. H.shquote(dir)))
  return dir
end

-- sox_stat(path [, from, len]) -> { rms =, freq =, length = } (sox `stat` of that stretch)
local function sox_stat(path, from, len)
  local trim = from and (" trim " .. from .. (len and (" " .. len) or "")) or ""
  local out = sh("sox " .. H.shquote(path) .. " -n" .. trim .. " stat 2>&1")
  return { rms = tonumber(out:match("RMS%s+amplitude:%s*([%d%.e%-]+)")),
    freq = tonumber(out:match("Rough%s+frequency:%s*(%-?%d+)")),
    length = tonumber(out:match("Length %(seconds%):%s*([%d%.]+)")), text = out }
end

local function soxi(path, opt) return (sh("soxi " .. opt .. " " .. H.shquote(path) .. " 2>&1"):gsub("%s+$", "")) end

local NAMES = { "welcome", "menu", "goodbye", "invalid", "no-input", "echo-test",
  "record-after-beep", "message-saved", "enter-number", "you-entered", "transferring",
  "no-operator", "not-available" }
local DIGITS = { "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "star", "pound" }

-- the in-process menu's prompts (8 kHz mono 16-bit WAV): each a tone of its own
-- frequency (HZ), 200 ms (digits 100 ms); long = names that last 3 s (so that a hangup
-- lands while they play).  1 kHz is the record beep's.
local HZ = {}
for i, n in ipairs(NAMES) do HZ[n] = 300 + 100 * i + (i >= 7 and 100 or 0) end
for i, n in ipairs(DIGITS) do HZ["digits/" .. n] = 1800 + 100 * i end
local function prompt_set(long)
  local dir = tmpdir()
  assert(os.execute("mkdir -p " .. H.shquote(dir .. "/digits")))
  for _, n in ipairs(NAMES) do
    T.tone_wav(dir .. "/" .. n .. ".wav", HZ[n], (long and long[n] or 0.2) * 1000)
  end
  for _, n in ipairs(DIGITS) do
    T.tone_wav(dir .. "/digits/" .. n .. ".wav", HZ["digits/" .. n], 100)
  end
  return dir
end

-- prompt_ms(x, name) -> ms of prompt `name` in samples x
local function prompt_ms(x, name) return (T.tone_ms(x, HZ[name])) end

-- ------------------------------------------------------------------ the menu in-process

local describe_engine = REAL and describe or function(name) pending(name .. " -- " .. NO_ENGINE) end
describe_engine("examples/ivr_menu.lua (in this process, C engine)", function()
  local ivr, lines, server, caller, st, rec
  local SHORT, LONG = prompt_set(), prompt_set{ welcome = 3, ["enter-number"] = 3 }
  teardown(function() os.execute("rm -rf " .. H.shquote(SHORT) .. " " .. H.shquote(LONG)) end)

  before_each(function()
    lines = {}
    ivr = assert(loadfile("examples/ivr_menu.lua"))("examples", function(...)
      lines[#lines + 1] = table.concat({ ... }, " ")
    end)
    rec = tmpdir()
    ivr.prompts, ivr.recordings, ivr.timeout = SHORT, rec, 1
    server, caller = H.agent(), H.agent()
    st = { skipped = core.media_stats().skipped_ticks }
    server:on("INVITE", function(req)
      local call = assert(req:answer{ media = st.answer or true })
      st.call = call
      st.result = ivr.menu(call)
      st.ended_at = sip.now()
    end)
  end)
  after_each(function()
    H.close_agents()
    os.execute("rm -rf " .. H.shquote(rec))
  end)

  local function find(pattern)
    for _, l in ipairs(lines) do
      local c = { l:match(pattern) }
      if #c > 0 then return (table.unpack or unpack)(c) end
    end
  end
  local function wait_line(pattern, timeout)
    local okk, err = pcall(H.run_until, function() return find(pattern) end, timeout or 10,
      "log line '" .. pattern .. "'")
    if not okk then error(err .. "\n--- ivr log\n" .. table.concat(lines, "\n"), 2) end
    return find(pattern)
  end
  local function count(pattern)
    local n = 0
    for _, l in ipairs(lines) do if l:match(pattern) then n = n + 1 end end
    return n
  end
  -- dial(media_opts) -> the caller's dialog, and heard() -> what it heard so far (samples)
  local function dial(opts)
    local d = H.run(function()
      return assert(caller:invite{ uri = server:uri("ivr"), media = opts or true })
    end)
    return d, T.listen(d, rec .. "/heard.wav")
  end
  -- heard_ms(x, name, want): prompt name (want ms of it played) was heard: not longer, and
  -- most of it, less the 20 ms ticks a loaded machine made the engine skip
  local function heard_ms(x, name, want)
    local got, skipped = prompt_ms(x, name), (core.media_stats().skipped_ticks - st.skipped) * 20
    assert(got >= math.max(20, want * 0.6 - skipped) and got <= want + 60,
      ("%s: heard %d ms, %d ms played, %d ms skipped"):format(name, got, want, skipped))
  end
  local function press(d, digits, mode)
    return H.run(function() return d:send_dtmf(digits, mode and { mode = mode } or nil) end)
  end
  local function info(d, ctype, body)
    return H.run(function()
      return assert(d:request("INFO", { content_type = ctype, body = body })).status
    end)
  end
  local function ended(timeout)
    H.run_until(function() return st.result end, timeout or 10, "the menu's end")
    return st.result
  end
  local function streams() return core.media_stats().streams end

  it("welcomes, offers the menu, and on 9 says goodbye and hangs up", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    assert.equal("done", press(d, "9"))
    assert.equal("bye", ended())
    assert.equal("remote bye", H.run(function() return d:wait_end(5) end))
    assert.is_truthy(find("^" .. d.call_id:gsub("%p", "%%%0") .. " menu: digit 9$"))
    assert.equal(0, streams())
    local x = hear()
    assert.is_true(prompt_ms(x, "welcome") > 0, "the welcome prompt heard")
    heard_ms(x, "goodbye", 200)
  end)

  it("gives three tries without a choice, then says goodbye and hangs up", function()
    ivr.timeout = 0.3
    local d, hear = dial()
    assert.equal("no input", ended(15))
    assert.equal(3, count("menu: timeout$"))
    assert.equal("remote bye", H.run(function() return d:wait_end(5) end))
    local x = hear()
    heard_ms(x, "welcome", 200)
    heard_ms(x, "menu", 600)
    heard_ms(x, "no-input", 600)
    heard_ms(x, "goodbye", 200)
    assert.equal(0, prompt_ms(x, "invalid"))
  end)

  it("counts an invalid choice as a try and goes on with the menu", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    press(d, "7")
    wait_line("menu: digit 7")
    press(d, "#")
    wait_line("menu: invalid")
    press(d, "9")
    assert.equal("bye", ended())
    local x = hear()
    assert.is_true(prompt_ms(x, "invalid") > 0, "the invalid prompt heard")
    assert.equal(0, prompt_ms(x, "no-input"))
  end)

  it("3: collects up to 4 digits ended by # from SIP INFO (dtmf-relay and dtmf) and says them back", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    assert.equal(200, info(d, "application/dtmf-relay", "Signal=3\r\nDuration=160\r\n"))
    wait_line("menu: digit 3")
    assert.equal(200, info(d, "application/dtmf", "4"))
    assert.equal(200, info(d, "application/dtmf-relay", "Signal=5\r\nDuration=160\r\n"))
    assert.equal(200, info(d, "application/dtmf-relay", "Signal=#\r\nDuration=160\r\n"))
    wait_line("entered 45 terminator")
    wait_line("menu: after 3: menu")
    press(d, "9")
    assert.equal("bye", ended())
    local x = hear()
    heard_ms(x, "you-entered", 200)
    heard_ms(x, "digits/4", 100)
    heard_ms(x, "digits/5", 100)
    assert.equal(0, prompt_ms(x, "digits/3") + prompt_ms(x, "digits/pound"))
  end)

  it("3: RFC 4733 digits, four at most", function()
    local d = dial({ dtmf = "rfc4733" })
    wait_line("menu: welcome")
    press(d, "3")
    wait_line("menu: digit 3")
    press(d, "12345")                  -- the 5 is the next menu choice: invalid
    wait_line("entered 1234 max")
    wait_line("menu: digit 5")
    press(d, "9")
    assert.equal("bye", ended())
  end)

  it("3: in-band digits (DTMF tones in the audio)", function()
    st.answer = { dtmf = "inband" }
    local d, hear = dial({ dtmf = "inband" })
    wait_line("menu: welcome")
    press(d, "3")
    wait_line("menu: digit 3")
    press(d, "67#")
    wait_line("entered 67 terminator")
    wait_line("menu: after 3: menu")
    press(d, "9")
    assert.equal("bye", ended())
    local x = hear()
    heard_ms(x, "digits/6", 100)
    heard_ms(x, "digits/7", 100)
  end)

  it("0: transfers by REFER to the operator and hangs up once the NOTIFY reports its 2xx (RFC 5589)", function()
    local operator = H.agent()
    local op_got
    operator:on("INVITE", function(req)
      op_got = { dialog = req:answer() }
    end)
    ivr.operator = operator:uri("operator")
    local d = dial()
    local sub_done_at, new_call
    d:on("REFER", sip.refer.handler(function(sub)
      new_call = sub:invite(caller)
      sub:wait(5)
      sub_done_at = sip.now()
    end))
    wait_line("menu: welcome")
    press(d, "0")
    assert.equal("transferred", ended(15))
    assert.equal("remote bye", H.run(function() return d:wait_end(5) end))
    H.run_until(function() return sub_done_at end, 5, "the final NOTIFY answered")
    assert.is_true(sub_done_at <= st.ended_at + 0.05)
    assert.truthy(wait_line("transfer to " .. ivr.operator:gsub("%p", "%%%0") .. " 200"))
    assert.truthy(op_got and op_got.dialog)
    assert.equal("confirmed", new_call:state())
    H.run(function() new_call:bye() end)
  end)

  it("0 without an operator says so and goes back to the menu", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    press(d, "0")
    wait_line("menu: after 0: menu")
    press(d, "9")
    assert.equal("bye", ended())
    heard_ms(hear(), "no-operator", 200)
  end)

  it("1: echo test until #, then back to the menu", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    press(d, "1")
    wait_line("echo test")
    assert.equal("done", H.run(function() return d:tone{ freqs = { 850 }, ms = 400 } end))
    press(d, "#")
    wait_line("menu: after 1: menu")
    press(d, "9")
    assert.equal("bye", ended())
    local got = T.tone_ms(hear(), 850)        -- the caller's own tone, back
    assert.is_true(got >= 200 and got <= 460, got .. " ms of the echo")
  end)

  it("2: records after a beep until #, plays it back and returns to the menu", function()
    local d, hear = dial()
    wait_line("menu: welcome")
    press(d, "2")
    local path = wait_line("recording (%S+)")
    assert.equal(rec, path:match("^(.*)/[^/]+%.wav$"))
    -- the file exists once the beep is over and recording runs: # from then on ends it
    H.run_until(function() return exists(path) end, 5, "the recording started")
    assert.equal("done", H.run(function() return d:tone{ freqs = { 850 }, ms = 400 } end))
    press(d, "#")
    local ms, why = wait_line("recorded %S+ (%d+) ms (%S+)")
    assert.equal("terminator", why)
    assert.is_true(tonumber(ms) >= 300, ms)
    wait_line("menu: after 2: menu")
    local got = T.tone_ms(assert(T.wav_samples(path)), 850)
    assert.is_true(got >= 200 and got <= 460, got .. " ms of the tone recorded")
    press(d, "9")
    assert.equal("bye", ended())
    local x = hear()
    heard_ms(x, "record-after-beep", 200)
    assert.is_true(T.tone_ms(x, 1000) > 100, "the beep heard")
    heard_ms(x, "message-saved", 200)
    got = T.tone_ms(x, 850)                    -- the message played back
    assert.is_true(got >= 150 and got <= 460, got .. " ms of the message heard")
  end)

  -- a BYE wakes the verb at once; the handler's coroutine ends and the stream closes
  local function hangs_up(after)
    local d = dial()
    after(d)
    local t0 = sip.now()
    H.run(function() assert(d:bye()) end)
    assert.equal("hangup", ended(5))
    assert.is_true(st.ended_at - t0 < 1, "menu ended " .. (st.ended_at - t0) .. " s after the BYE")
    H.run_until(function() return streams() == 0 end, 2, "the stream closed")
  end

  it("ends at once on a hangup during a prompt (play)", function()
    ivr.prompts = LONG
    hangs_up(function() wait_line("menu: welcome") end)
  end)

  it("ends at once on a hangup during collect", function()
    ivr.prompts = LONG
    hangs_up(function(d)
      wait_line("menu: welcome")
      press(d, "3")
      wait_line("menu: digit 3")
    end)
    assert.truthy(find("entered nil hangup"))
  end)

  it("ends at once on a hangup during record, with the recording closed", function()
    hangs_up(function(d)
      wait_line("menu: welcome")
      press(d, "2")
      local path = wait_line("recording (%S+)")
      H.run_until(function() return exists(path) end, 5, "the recording started")
    end)
    local path, why = find("recorded (%S+) %d+ ms (%S+)")
    assert.equal("hangup", why)
    assert.is_true(exists(path))
    if REAL and have_sox then assert.equal("8000", soxi(path, "-r")) end
  end)
end)

-- ------------------------------------------------------------------ examples/ivr.lua with peers

-- start_ivr{ ns =, operator = } -> { proc, port, uri, recordings }: examples/ivr.lua on a
-- free port with the prompts of `make prompts` (stopped at the end of the test)
local function start_ivr(o)
  o = o or {}
  local port = H.free_port()
  local rec = tmpdir()
  defer(function() os.execute("rm -rf " .. H.shquote(rec)) end)
  local argv = { "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
    "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", "IVR_PROMPTS=" .. PROMPTS,
    "IVR_RECORDINGS=" .. rec, o.operator and ("IVR_OPERATOR=" .. o.operator) or nil }
  for _, w in ipairs{ H.interpreter(), "examples/ivr.lua", "127.0.0.1:" .. port } do
    argv[#argv + 1] = w
  end
  local p = H.background(o.ns and o.ns.wrap(argv) or argv, o.max or 90)
  defer(p.kill)
  H.run_until(function() return p.log():find("listening on") or p.done() end, 10,
    "examples/ivr.lua listening")
  assert(not p.done(), "examples/ivr.lua exited:\n" .. p.log())
  return { proc = p, port = port, uri = "sip:ivr@127.0.0.1:" .. port, recordings = rec }
end

-- wait_log(proc, pattern [, timeout]) -> the captures of the first log line matching
local function wait_log(p, pattern, timeout)
  local caps
  local okk, err = pcall(H.run_until, function()
    for l in p.log():gmatch("[^\n]+") do
      local c = { l:match(pattern) }
      if #c > 0 then caps = c return true end
    end
    return p.done()
  end, timeout or 15, "log line '" .. pattern .. "'")
  if not okk or not caps then
    error((err or "process ended") .. "\n--- log\n" .. p.log(), 2)
  end
  return (table.unpack or unpack)(caps)
end

describe("examples/ivr.lua with real peers", function()
  after_each(function() H.close_agents() end)

  it_prompts("make prompts made every prompt and digit as 8 kHz mono 16-bit WAV", function()
    local names = {}
    for _, n in ipairs(NAMES) do names[#names + 1] = n end
    for i = 0, 19 do names[#names + 1] = "digits/" .. i end
    for i = 20, 90, 10 do names[#names + 1] = "digits/" .. i end
    for _, n in ipairs{ "hundred", "thousand", "million", "star", "pound" } do
      names[#names + 1] = "digits/" .. n
    end
    for _, n in ipairs(names) do
      local path = PROMPTS .. "/" .. n .. ".wav"
      assert.is_true(exists(path), path)
      assert.same({ "8000", "1", "16" }, { soxi(path, "-r"), soxi(path, "-c"), soxi(path, "-b") }, path)
      assert.is_true(sox_stat(path).rms > 0.01, path .. " is silent")
    end
  end)

  -- a baresip caller in a private network namespace with the IVR; what it hears is in
  -- phone.recordings()[1] (sndfile), 16000 bytes per second after a 44-byte header
  local function baresip_call()
    local ns = B.netns(120)
    defer(ns.stop)
    local ivr = start_ivr{ ns = ns }
    local phone = B.start{ name = "caller", ns = ns, record = true, max_seconds = 90,
      context = function() return "--- ivr.lua\n" .. ivr.proc.log() end }
    defer(phone.stop)
    phone.ready()
    phone.command("uanew", "<sip:caller@127.0.0.1>;regint=0")
    phone.command("dial", ivr.uri)
    phone.wait_event("CALL_ESTABLISHED")
    local function dump() return phone.recordings()[1] end
    -- heard(seconds): steps the loop until the phone has that much audio on disk
    local function heard(seconds)
      H.run_until(function()
        return dump() and size(dump()) >= 44 + seconds * 16000
      end, seconds + 10, seconds .. " s of audio in baresip's recording")
      return dump()
    end
    local function seconds_heard() return dump() and (size(dump()) - 44) / 16000 or 0 end
    return ivr, phone, heard, seconds_heard
  end

  it_baresip("baresip dials the IVR, hears the welcome prompt, and 9 ends the call", function()
    local ivr, phone, heard = baresip_call()
    wait_log(ivr.proc, "menu: welcome")
    local dump = heard(3)
    phone.command("sndcode", "9")
    wait_log(ivr.proc, "menu: digit 9")
    phone.wait_event("CALL_CLOSED", 20)
    wait_log(ivr.proc, "call ended: bye")
    assert.equal("8000", soxi(dump, "-r"))
    local heard_st = sox_stat(dump, 0, 3)
    local prompt_st = sox_stat(PROMPTS .. "/welcome.wav")
    assert.is_true(heard_st.rms > 0.3 * prompt_st.rms,
      ("heard RMS %s, the welcome prompt's %s\n%s"):format(heard_st.rms, prompt_st.rms, heard_st.text))
  end)

  it_baresip("the echo test returns baresip's own tone until #", function()
    local ivr, phone, heard, seconds_heard = baresip_call()
    wait_log(ivr.proc, "menu: welcome")
    heard(0.5)
    phone.command("sndcode", "1")
    wait_log(ivr.proc, "menu: digit 1")
    wait_log(ivr.proc, "echo test", 20)
    local from = seconds_heard()
    local dump = heard(from + 2.5)
    phone.command("sndcode", "#")
    wait_log(ivr.proc, "menu: after 1: menu")
    phone.command("sndcode", "9")
    wait_log(ivr.proc, "menu: digit 9", 20)
    phone.wait_event("CALL_CLOSED", 20)
    local s = sox_stat(dump, from + 0.5, 1.5)
    assert.is_true(s.freq and s.freq > 350 and s.freq < 450, s.text)   -- B.tone: 400 Hz
    assert.is_true(s.rms > 0.05, s.text)
  end)

  it_sipp("collects sipp's RFC 2833 captures as digits: 3, then 45 ended by #", function()
    local ivr = start_ivr()
    local p = H.sipp("spec/peers/sipp/uac_ivr_digits.xml", "127.0.0.1:" .. ivr.port, {}, 40)
    defer(p.kill)
    wait_log(ivr.proc, "menu: digit 3", 20)
    wait_log(ivr.proc, "entered 45 terminator", 20)
    H.run_until(function() return p.done() end, 40, "sipp's end")
    assert.equal(0, p.done(), p.log() .. "\n--- ivr.lua\n" .. ivr.proc.log())
    wait_log(ivr.proc, "call ended: hangup")
  end)

  it_peer("records a luasip caller's 1 kHz tone after 2 (RFC 4733): the voicemail WAV holds ~1 kHz", function()
    local ivr = start_ivr()
    local uac = H.agent()
    local d = H.run(function()
      return assert(uac:invite{ uri = ivr.uri, media = { dtmf = "rfc4733" } })
    end)
    wait_log(ivr.proc, "menu: welcome")
    assert.equal("done", H.run(function() return d:send_dtmf("2") end))
    local path = wait_log(ivr.proc, "recording (%S+)", 20)
    local toned
    sip.spawn(function() toned = { d:tone{ freqs = { 1000 }, ms = 1500 } } end)
    H.run_until(function() return toned end, 10, "the tone sent")
    assert.equal("done", toned[1])
    assert.equal("done", H.run(function() return d:send_dtmf("#") end))
    local _, ms, why = wait_log(ivr.proc, "recorded (%S+) (%d+) ms (%S+)")
    assert.equal("terminator", why)
    assert.is_true(tonumber(ms) > 1000, ms)
    assert.same({ "8000", "1" }, { soxi(path, "-r"), soxi(path, "-c") })
    local s = sox_stat(path)
    assert.is_true(s.freq > 900 and s.freq < 1100, s.text)
    assert.is_true(s.length > 1 and s.length < 3, s.text)
    wait_log(ivr.proc, "menu: after 2: menu", 20)
    H.run(function() d:bye() end)
    wait_log(ivr.proc, "call ended: hangup")
  end)
end)

-- ------------------------------------------------------------------ examples/pbx.lua voicemail

describe("examples/pbx.lua voicemail and IVR", function()
  local PW = { alice = "alice-secret", bob = "bob-secret", carol = "carol-secret" }
  after_each(function() H.close_agents() end)

  local function start_pbx()
    local port = H.free_port()
    local rec = tmpdir()
    defer(function() os.execute("rm -rf " .. H.shquote(rec)) end)
    local p = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", "IVR_PROMPTS=" .. PROMPTS,
      "IVR_RECORDINGS=" .. rec, "PBX_VOICEMAIL_AFTER=1",
      H.interpreter(), "examples/pbx.lua", "127.0.0.1:" .. port }, 90)
    defer(p.kill)
    H.run_until(function() return p.log():find("listening on") or p.done() end, 10, "pbx listening")
    assert(not p.done(), p.log())
    return { proc = p, port = port, recordings = rec, uri = "sip:127.0.0.1:" .. port }
  end

  local function phone(pbx, user)
    local a = H.agent()
    a.data.auth = { username = user, password = PW[user] }
    a.data.aor = "sip:" .. user .. "@127.0.0.1"
    a.data.register = function(expires)
      return a:request{ method = "REGISTER", uri = pbx.uri, auth = a.data.auth,
        headers = { To = "<" .. a.data.aor .. ">", From = "<" .. a.data.aor .. ">",
          Contact = "<" .. a:uri(user) .. ">", Expires = tostring(expires or 60) } }
    end
    return a
  end

  local function call(pbx, from, user)
    return H.run(function()
      return from:invite{ uri = "sip:" .. user .. "@127.0.0.1", proxy = pbx.uri,
        auth = from.data.auth, from = "<" .. from.data.aor .. ">", media = true }
    end, 15)
  end

  -- leaves a message of 1.5 s of 1 kHz and hangs up; -> the recording's path
  local function leave_message(pbx, d, user)
    local path = wait_log(pbx.proc, "recording (%S+/" .. user .. "/%S+%.wav)", 20)
    local toned
    sip.spawn(function() toned = { d:tone{ freqs = { 1000 }, ms = 1500 } } end)
    H.run_until(function() return toned end, 10, "the tone sent")
    H.run(function() d:bye() end)
    local ms, why = wait_log(pbx.proc, "recorded " .. path:gsub("%p", "%%%0") .. " (%d+) ms (%S+)")
    assert.equal("hangup", why)
    assert.is_true(tonumber(ms) > 1000, ms)
    return path
  end

  it_peer("sends a call that a registered user does not answer to voicemail, recorded under their name", function()
    local pbx = start_pbx()
    local alice, bob = phone(pbx, "alice"), phone(pbx, "bob")
    local bob_rang
    bob:on("INVITE", function(req)
      req:reply(180)
      bob_rang = { sip.sleep(30) }
    end)
    H.run(function() assert(alice.data.register()); assert(bob.data.register()) end)
    local d, res = call(pbx, alice, "bob")
    assert(d, res)
    H.run_until(function() return bob_rang end, 5, "bob's phone cancelled")
    assert.equal("cancelled", bob_rang[2])
    local path = leave_message(pbx, d, "bob")
    assert.equal(pbx.recordings .. "/bob", path:match("^(.*)/[^/]+$"))
    local s = sox_stat(path)
    assert.is_true(s.freq > 900 and s.freq < 1100, s.text)
  end)

  it("gives the caller the phones' answer when every phone said no, without waiting for voicemail", function()
    local pbx = start_pbx()
    local alice, bob = phone(pbx, "alice"), phone(pbx, "bob")
    bob:on("INVITE", function(req) req:reply(486, "Busy Here") end)
    H.run(function() assert(alice.data.register()); assert(bob.data.register()) end)
    local t0 = sip.now()
    local _, err, code = H.run(function()
      return alice:invite{ uri = "sip:bob@127.0.0.1", proxy = pbx.uri, auth = alice.data.auth,
        from = "<" .. alice.data.aor .. ">", body = "v=0\r\n", content_type = "application/sdp" }
    end)
    assert.equal(486, code, err)
    assert.is_true(sip.now() - t0 < 1, "486 after " .. (sip.now() - t0) .. " s")
    assert.is_nil(pbx.proc.log():find("recording "))
  end)

  it_peer("sends a call to a user who is offline straight to voicemail", function()
    local pbx = start_pbx()
    local alice = phone(pbx, "alice")
    H.run(function() assert(alice.data.register()) end)
    local d, res = call(pbx, alice, "carol")
    assert(d, res)
    local path = leave_message(pbx, d, "carol")
    assert.is_true(exists(path))
  end)

  it("has its voicemail refuse calls that did not come through the PBX", function()
    local pbx = start_pbx()
    local vm = pbx.proc.log():match("voicemail on (sip:%S+)")
    assert.truthy(vm, pbx.proc.log())
    local mallory = H.agent()
    for _, user in ipairs{ "bob", ".." } do
      local _, _, code = H.run(function()
        return mallory:invite{ uri = vm:gsub("^sip:", "sip:" .. user .. "@"), body = "v=0\r\n" }
      end)
      assert.equal(403, code)
    end
  end)

  it_peer("answers sip:ivr@ with the IVR menu", function()
    local pbx = start_pbx()
    local anyone = H.agent()
    local d = H.run(function()
      return assert(anyone:invite{ uri = "sip:ivr@127.0.0.1:" .. pbx.port, media = true })
    end)
    wait_log(pbx.proc, "menu: welcome")
    assert.equal("done", H.run(function() return d:send_dtmf("9") end))
    assert.equal("remote bye", H.run(function() return d:wait_end(20) end, 25))
    wait_log(pbx.proc, "ivr %S+ bye")
  end)
end)
