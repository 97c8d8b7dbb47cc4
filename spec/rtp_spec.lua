-- luasip.rtp, the C media engine (csrc/media*.c): streams in one process on 127.0.0.1
-- pointed at each other, driven by stepping the loop; WAV files made with sox at test time
-- in a temporary directory.  Raw packets (bad ones, crafted RFC 4733) come from python3.
local H = require "spec.helper"
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

local function sh(cmd)
  local p = io.popen(cmd .. " 2>&1; echo \"rc=$?\"")
  local out = p:read("*a")
  p:close()
  return tonumber(out:match("rc=(%d+)%s*$")), out
end

local has_sox = sh("command -v sox >/dev/null") == 0
local has_python = sh("command -v python3 >/dev/null") == 0
local VALGRIND = os.getenv("LUASIP_VALGRIND") ~= nil

local tmp = os.tmpname()
os.remove(tmp)
assert(os.execute("mkdir -p " .. H.shquote(tmp)))

local function path(name) return tmp .. "/" .. name end

-- sox(args) -> output of sox, asserting it succeeded
local function sox(args)
  local rc, out = sh("timeout 30 sox " .. args)
  assert.equal(0, rc, out)
  return out
end

local function rough_frequency(file)
  return tonumber(sox(H.shquote(file) .. " -n stat"):match("Rough%s+frequency:%s*(%d+)"))
end

local function soxi(file, flag)
  local rc, out = sh("soxi " .. flag .. " " .. H.shquote(file))
  assert.equal(0, rc, out)
  return out:match("^%s*([^\n]-)%s*\n")
end

-- streams of the current test and the events each has given (read while stepping, and
-- from the "media" event of the dispatcher when Lua is entered)
local streams, got, via_dispatcher = {}, {}, 0

local function collect(r)
  local list = got[r]
  for _, e in ipairs(r:events()) do list[#list + 1] = e end
end

local saved_media
setup(function()
  saved_media = dispatcher.events.media
  -- the spec reads events itself, whether or not a Lua layer owns "media" meanwhile
  dispatcher.events.media = function(r)
    via_dispatcher = via_dispatcher + 1
    if got[r] then collect(r) end
  end
end)

teardown(function()
  dispatcher.events.media = saved_media
  os.execute("rm -rf " .. H.shquote(tmp))
end)

after_each(function()
  for _, r in ipairs(streams) do r:close() end
  streams, got = {}, {}
end)

local function open(address)
  local r = assert(core.rtp_open{ address = address or "127.0.0.1" })
  streams[#streams + 1] = r
  got[r] = {}
  return r
end

local function connect(a, b)
  a:set_remote(b:local_address(), b:local_port())
  b:set_remote(a:local_address(), a:local_port())
end

local function pair(address)
  local a, b = open(address), open(address)
  connect(a, b)
  return a, b
end

local function until_(pred, timeout, what)
  H.run_until(function()
    for _, r in ipairs(streams) do
      if not r:closed() then collect(r) end
    end
    return pred()
  end, (timeout or 5) * (VALGRIND and 4 or 1), what)
end

local function find(r, kind, id)
  for _, e in ipairs(got[r]) do
    if e[1] == kind and (id == nil or e.id == id) then return e end
  end
end

local function digits(r, source)
  local t = {}
  for _, e in ipairs(got[r]) do
    if e[1] == "digit" and (source == nil or e.source == source) then t[#t + 1] = e.digit end
  end
  return table.concat(t)
end

-- send(port, hex packets [, count]): python3 sends the packets from a fresh UDP socket
local function send_raw(port, packets)
  local lines = {}
  for i, p in ipairs(packets) do lines[i] = ("s.sendto(bytes.fromhex(%q), ('127.0.0.1', %d))"):format(p, port) end
  local script = "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
    .. table.concat(lines, "\n") .. "\n"
  local f = assert(io.open(path("send.py"), "w"))
  f:write(script)
  f:close()
  local rc, out = sh("timeout 10 python3 " .. H.shquote(path("send.py")))
  assert.equal(0, rc, out)
end

-- an RTP packet as hex: v2, pt, seq, ts, ssrc, payload hex
local function rtp_hex(pt, seq, ts, ssrc, payload, marker)
  return ("80%02x%04x%08x%08x"):format(pt + (marker and 128 or 0), seq % 65536, ts, ssrc)
    .. payload
end

-- an RFC 4733 payload: event, end flag, duration
local function ev_hex(event, e, dur)
  return ("%02x%02x%04x"):format(event, (e and 0x80 or 0) + 10, dur)
end

describe("luasip.rtp", function()
  it("opens on an even port of the range and closes idempotently", function()
    local r = assert(core.rtp_open{ address = "127.0.0.1", port_min = 20000, port_max = 20100 })
    assert.equal(0, r:local_port() % 2)
    assert.is_true(r:local_port() >= 20000 and r:local_port() <= 20100)
    assert.equal("127.0.0.1", r:local_address())
    assert.equal(1, core.media_stats().streams)
    assert.is_true(r:close())
    assert.is_true(r:close())
    assert.is_true(r:closed())
    assert.equal(0, core.media_stats().streams)
  end)

  it("raises on argument errors with the method's name", function()
    local r = open()
    assert.has_error(function() r:set_remote("nowhere", 5) end,
      "luasip.rtp:set_remote: address must be an IP literal")
    assert.has_error(function() r:tone{ freqs = { 440 }, bogus = 1 } end,
      "luasip.rtp:tone: unknown option bogus")
    assert.has_error(function() r:send_dtmf("12x") end,
      "luasip.rtp:send_dtmf: x is not a DTMF digit")
    assert.has_error(function() core.rtp_open{ address = "127.0.0.1", port = 3 } end,
      "luasip.rtp_open: unknown option port")
    local ok, err = r:send_dtmf("1")
    assert.is_nil(ok)
    assert.equal("peer has no telephone-event", err)
  end)

  it("takes the whole configuration on each set_codecs (left-out keys: defaults)", function()
    local r = open()
    r:set_codecs{ te_send_pt = 101 }
    assert.is_number(r:send_dtmf("1"))
    assert.has_error(function() r:set_codecs{ direction = "sideways" } end,
      "luasip.rtp:set_codecs: direction must be sendrecv, sendonly, recvonly or inactive")
    assert.is_number(r:send_dtmf("2"))      -- a raise changed nothing
    r:set_codecs{ direction = "sendonly" }  -- a re-INVITE answer without telephone-event
    local ok, err = r:send_dtmf("3")
    assert.is_nil(ok)
    assert.equal("peer has no telephone-event", err)
  end)

  it("works on ::1", function()
    local a, b = pair("::1")
    a:tone{ freqs = { 440 }, ms = 200 }
    until_(function() return find(a, "output_done") and b:stats().packets_received >= 8 end)
    assert.equal("::1", find(b, "latched").address)
  end)

  it("sends a tone the other stream records as an 8 kHz mono WAV of that frequency", function()
    local a, b = pair()
    local file = path("tone.wav")
    a:tone{ freqs = { 1000 }, level = -10 }
    local id = assert(b:record(file, { max_ms = 1000 }))
    until_(function() return find(b, "record_done") end, 5, "record_done")
    local e = find(b, "record_done", id)
    assert.equal("max", e.reason)
    assert.equal(1000, e.ms)
    if has_sox then
      assert.equal("8000", soxi(file, "-r"))
      assert.equal("1", soxi(file, "-c"))
      assert.near(1.0, tonumber(soxi(file, "-D")), 0.001)
      assert.near(1000, rough_frequency(file), 50)
    end
  end)

  it("sends RFC 4733 digits that arrive once each", function()
    local a, b = pair()
    a:set_codecs{ te_send_pt = 101 }
    b:set_codecs{ te_recv_pt = 101, inband = true }
    local id = assert(a:send_dtmf("1234#*", { ms = 80, gap = 60 }))
    until_(function() return find(a, "dtmf_done", id) end, 8, "dtmf_done")
    until_(function() return #digits(b) >= 6 end, 2, "six digits")
    H.settle(0.3)
    collect(b)
    assert.equal("1234#*", digits(b))
    assert.equal("1234#*", digits(b, "rfc4733"))
    for _, e in ipairs(got[b]) do
      if e[1] == "digit" then assert.near(80, e.ms, 1) end
    end
  end)

  it("sends in-band DTMF that the other stream detects", function()
    local a, b = pair()
    b:set_codecs{ inband = true }
    local id = assert(a:send_dtmf("159#", { mode = "inband", ms = 100, gap = 100 }))
    until_(function() return find(a, "dtmf_done", id) end, 8, "dtmf_done")
    until_(function() return #digits(b) >= 4 end, 2, "four digits")
    assert.equal("159#", digits(b, "inband"))
  end)

  it("counts an RFC 4733 event once: duplicates, lost start, retransmitted ends, long press", function()
    if not has_python then return pending("python3 missing") end
    local b = open()
    b:set_codecs{ te_recv_pt = 101 }
    local port, ssrc, seq = b:local_port(), 0x1234, 100
    local pk = {}
    local function ev(ts, code, e, dur, marker)
      seq = seq + 1
      pk[#pk + 1] = rtp_hex(101, seq, ts, ssrc, ev_hex(code, e, dur), marker)
    end
    -- "5": start lost, updates duplicated, end three times
    ev(1000, 5, false, 320); ev(1000, 5, false, 320); ev(1000, 5, false, 480)
    ev(1000, 5, true, 640); ev(1000, 5, true, 640); ev(1000, 5, true, 640)
    -- "7": a long press in two segments (new timestamp, same event, no marker)
    ev(5000, 7, false, 160, true); ev(5000, 7, false, 65535)
    ev(70535, 7, false, 800); ev(70535, 7, true, 1600)
    -- "9" whose end packets are all lost, then "#": both count
    ev(80000, 9, false, 160, true); ev(80000, 9, false, 320)
    ev(90000, 11, false, 160, true); ev(90000, 11, true, 400)
    send_raw(port, pk)
    until_(function() return #digits(b) >= 4 end, 3, "four digits")
    H.settle(0.2)
    collect(b)
    assert.equal("579#", digits(b, "rfc4733"))
    local ms = {}
    for _, e in ipairs(got[b]) do if e[1] == "digit" then ms[e.digit] = e.ms end end
    assert.equal(80, ms["5"])
    assert.equal(math.floor((65535 + 1600) / 8), ms["7"])
  end)

  it("suppresses in-band detection once RFC 4733 events were seen", function()
    local a, b = pair()
    a:set_codecs{ te_send_pt = 101 }
    b:set_codecs{ te_recv_pt = 101, inband = true }
    a:send_dtmf("1")
    until_(function() return #digits(b) >= 1 end, 3, "the RFC 4733 digit")
    local id = a:send_dtmf("2", { mode = "inband" })
    until_(function() return find(a, "dtmf_done", id) end, 3, "dtmf_done")
    H.settle(0.3)
    collect(b)
    assert.equal("1", digits(b))
  end)

  it("plays a 16 kHz WAV resampled to 8 kHz and reports done with its length", function()
    if not has_sox then return pending("sox missing") end
    local file = path("p16.wav")
    sox("-n -r 16000 -c 1 -b 16 " .. H.shquote(file) .. " synth 1.0 sine 600 vol 0.5")
    local a, b = pair()
    local rec = path("p16-rec.wav")
    b:record(rec)
    local id = assert(a:play(file))
    until_(function() return find(a, "output_done", id) end, 5, "output_done")
    local e = find(a, "output_done", id)
    assert.equal("done", e.reason)
    assert.near(1000, e.ms, 20)
    H.settle(0.1)
    b:stop_record()
    assert.near(600, rough_frequency(rec), 30)
    -- two prompts in a list, played twice
    id = assert(a:play({ file, file }, { loop = 2 }))
    until_(function() return find(a, "output_done", id) end, 8, "output_done")
    assert.near(4000, find(a, "output_done", id).ms, 40)
  end)

  it("ends an output with reason stopped (stop_output, or another output)", function()
    local a = pair()
    local id = a:tone{ freqs = { 440, 480 }, on_ms = 200, off_ms = 100 }
    H.settle(0.2)
    assert.is_true(a:stop_output())
    collect(a)
    assert.equal("stopped", find(a, "output_done", id).reason)
    local id2 = a:echo()
    local id3 = a:silence(100)
    collect(a)
    assert.equal("stopped", find(a, "output_done", id2).reason)
    until_(function() return find(a, "output_done", id3) end, 3, "silence done")
    assert.equal("done", find(a, "output_done", id3).reason)
    assert.equal(100, find(a, "output_done", id3).ms)
  end)

  it("returns nil, err for a missing file before anything plays", function()
    local a = open()
    local ok, err, code = a:play(path("nothing-here.wav"))
    assert.is_nil(ok)
    assert.matches("^cannot open .*nothing%-here%.wav: ", err)
    assert.equal("file", code)
    ok = a:play({ path("nothing-here.wav") })
    assert.is_nil(ok)
    ok, err = a:record(path("no/such/dir/x.wav"))
    assert.is_nil(ok)
    assert.matches("^cannot open ", err)
  end)

  it("ends a recording on silence and on max", function()
    local a, b = pair()
    local id = assert(b:record(path("silence.wav"), { silence_ms = 300 }))
    until_(function() return find(b, "record_done", id) end, 3, "record_done")
    local e = find(b, "record_done", id)
    assert.equal("silence", e.reason)
    assert.near(300, e.ms, 20)
    -- a tone keeps it going until max
    a:tone{ freqs = { 700 } }
    H.settle(0.1)
    id = assert(b:record(path("loud.wav"), { silence_ms = 200, max_ms = 600 }))
    until_(function() return find(b, "record_done", id) end, 3, "record_done")
    assert.equal("max", find(b, "record_done", id).reason)
    assert.equal(600, find(b, "record_done", id).ms)
  end)

  it("bridges two streams: what C sends to A, D hears from B", function()
    local a, b, c, d = open(), open(), open(), open()
    connect(c, a)
    connect(b, d)
    assert.is_true(a:bridge(b))
    c:tone{ freqs = { 800 } }
    local rec = path("bridged.wav")
    H.settle(0.2)
    d:record(rec, { max_ms = 600 })
    until_(function() return find(d, "record_done") end, 4, "record_done")
    if has_sox then assert.near(800, rough_frequency(rec), 40) end
    -- RFC 4733 from C reaches D through the bridge
    c:set_codecs{ te_send_pt = 101 }
    a:set_codecs{ te_recv_pt = 101 }
    b:set_codecs{ te_send_pt = 101 }
    d:set_codecs{ te_recv_pt = 101 }
    c:send_dtmf("8")
    until_(function() return digits(d) == "8" end, 4, "the relayed digit")
    assert.equal("8", digits(a))
    -- closing one side unbridges both; the other goes back to its own output
    b:close()
    assert.is_true(a:unbridge())
  end)

  it("counts bad packets and strangers without stopping", function()
    if not has_python then return pending("python3 missing") end
    local a, b = pair()
    a:tone{ freqs = { 500 } }
    until_(function() return find(b, "latched") end, 3, "latched")
    local port = b:local_port()
    send_raw(port, {
      "8000",                                              -- short
      "000000010000000000000001" .. ("ff"):rep(160),       -- version 0
      rtp_hex(0, 7, 0, 9, ("ff"):rep(1600)),               -- huge
      rtp_hex(99, 8, 0, 9, ("ff"):rep(160)),               -- unknown payload type
      "a0" .. rtp_hex(0, 9, 0, 9, ""):sub(3) .. "ff00",    -- padding longer than payload
      "8f00000a0000000000000009",                          -- 15 CSRCs, no room for them
      rtp_hex(0, 10, 0, 9, ("ff"):rep(160)),               -- valid, from a stranger
    })
    until_(function() return b:stats().strangers >= 1 and b:stats().bad_packets >= 6 end, 3,
      "counted")
    local st = b:stats()
    assert.equal(6, st.bad_packets)
    assert.equal(1, st.strangers)
    local before = st.packets_received
    until_(function() return b:stats().packets_received > before + 5 end, 2, "still receiving")
  end)

  it("finalises the WAV when closed during play and record, with no events after", function()
    if not has_sox then return pending("sox missing") end
    local long = path("long.wav")
    sox("-n -r 8000 -c 1 -b 16 " .. H.shquote(long) .. " synth 5 sine 440 vol 0.5")
    local a, b = pair()
    local rec = path("closed.wav")
    a:play(long)
    b:record(rec)
    H.settle(0.5)
    b:close()
    a:close()
    assert.same({}, a:events())
    local secs = tonumber(soxi(rec, "-D"))
    assert.is_true(secs > 0.2 and secs < 2, tostring(secs))
    assert.near(440, rough_frequency(rec), 25)
  end)

  it("paces 20 ms packets and reports the clock's lateness", function()
    local a, b = pair()
    local t0 = core.now()
    local s0 = a:stats().packets_sent
    H.settle(2)
    local n = a:stats().packets_sent - s0
    local secs = core.now() - t0
    assert.near(secs * 50, n, 5 + (VALGRIND and 50 or 0))
    assert.is_true(b:stats().packets_received > 0)
    local m = core.media_stats()
    assert.equal(2, m.streams)
    for _, k in ipairs{ "ticks", "late_ticks", "skipped_ticks", "max_lateness_us",
                        "max_tick_work_us" } do
      assert.is_number(m[k], k)
    end
    assert.equal(0, b:stats().lost)
  end)

  it("enters Lua once per tick with events through the dispatcher's media event", function()
    local a, b = pair()
    a:set_codecs{ te_send_pt = 101 }
    b:set_codecs{ te_recv_pt = 101 }
    local before = via_dispatcher
    a:send_dtmf("0")
    -- only the dispatcher reads the events here
    H.run_until(function() return find(b, "digit") ~= nil end, VALGRIND and 12 or 3)
    assert.is_true(via_dispatcher > before)
  end)

  it("stops sending when recvonly and ignores what arrives when sendonly", function()
    local a, b = pair()
    a:set_codecs{ direction = "recvonly" }
    b:set_codecs{ direction = "sendonly", inband = true }
    H.settle(0.3)
    assert.equal(0, a:stats().packets_sent)
    assert.is_true(a:stats().packets_received > 0)
    a:set_codecs{ direction = "sendrecv" }
    a:send_dtmf("4", { mode = "inband" })
    H.settle(0.5)
    collect(b)
    assert.equal("", digits(b))
  end)

  it("receives PCMA and a payload type mapped in recv", function()
    local a, b = pair()
    a:set_codecs{ send_pt = 96, send_codec = "PCMA" }
    b:set_codecs{ recv = { [96] = "PCMA" } }
    a:tone{ freqs = { 900 } }
    H.settle(0.1)
    local rec = path("pcma.wav")
    b:record(rec, { max_ms = 500 })
    until_(function() return find(b, "record_done") end, 3, "record_done")
    assert.equal(0, b:stats().bad_packets)
    if has_sox then assert.near(900, rough_frequency(rec), 45) end
  end)

  it("tells rtp_timeout once when nothing arrives for timeout_ms", function()
    local a = open()
    a:set_codecs{ timeout_ms = 200 }
    until_(function() return find(a, "rtp_timeout") end, 3, "rtp_timeout")
    H.settle(0.3)
    collect(a)
    local n = 0
    for _, e in ipairs(got[a]) do if e[1] == "rtp_timeout" then n = n + 1 end end
    assert.equal(1, n)
  end)

  it("counts an SSRC change and accepts header extensions and CSRCs", function()
    if not has_python then return pending("python3 missing") end
    local b = open()
    local pl = ("ff"):rep(160)
    send_raw(b:local_port(), {
      rtp_hex(0, 1, 160, 7, pl), rtp_hex(0, 2, 320, 7, pl),
      "90" .. rtp_hex(0, 3, 480, 7, ""):sub(3) .. "bede0001" .. "01020304" .. pl,  -- extension
      "81" .. rtp_hex(0, 4, 640, 7, ""):sub(3) .. "00000063" .. pl,                -- one CSRC
      rtp_hex(0, 900, 160, 8, pl),                                                -- new SSRC
    })
    until_(function() return b:stats().packets_received >= 5 end, 3, "five packets")
    local st = b:stats()
    assert.equal(0, st.bad_packets)
    assert.equal(1, st.ssrc_changes)
    assert.equal(0, st.lost)
  end)

  it("goes on when the media handler raises, and when it closes streams", function()
    local a, b = pair()
    local logs, restore = H.capture_logs()
    local mine = dispatcher.events.media
    dispatcher.events.media = function() error("boom in handler") end
    a:set_codecs{ timeout_ms = 20 }   -- events on a while b is still silent
    b:set_codecs{ direction = "recvonly" }
    local ok, err = pcall(H.settle, 0.3)
    dispatcher.events.media = mine
    restore()
    assert(ok, err)
    local seen = false
    for _, l in ipairs(logs) do if l.msg:match("boom in handler") then seen = true end end
    assert.is_true(seen)
    -- a handler that closes every stream, the one it was called for first
    local calls = 0
    dispatcher.events.media = function(r)
      calls = calls + 1
      r:close()
      a:close()
      b:close()
    end
    local c, d = pair()
    c:silence(20)
    d:silence(20)
    local ok2, err2 = pcall(H.run_until, function() return c:closed() and d:closed() end, 3)
    dispatcher.events.media = mine
    assert(ok2, err2)
    assert.is_true(calls >= 1)
    assert.equal(0, core.media_stats().streams)
    H.settle(0.1)                     -- the clock stopped with the last stream; no tick left
  end)

  it("keeps events queued for rtp:events() when no handler owns the media event", function()
    local mine = dispatcher.events.media
    dispatcher.events.media = nil
    local a = open()
    local id = a:silence(40)
    local ok, err = pcall(H.settle, 0.2)
    dispatcher.events.media = mine
    assert(ok, err)
    local evs = a:events()
    assert.equal(1, #evs)
    assert.same({ "output_done", id = id, reason = "done", ms = 40 }, evs[1])
    assert.same({}, a:events())
  end)

  it("decodes a prompt again when the file changes, and stops and appends recordings", function()
    if not has_sox then return pending("sox missing") end
    local file = path("changing.wav")
    sox("-n -r 8000 -c 1 -b 16 " .. H.shquote(file) .. " synth 0.4 sine 500 vol 0.5")
    local a, b = pair()
    local id = a:play(file)
    until_(function() return find(a, "output_done", id) end, 3, "first play")
    assert.near(400, find(a, "output_done", id).ms, 20)
    sox("-n -r 8000 -c 1 -b 16 " .. H.shquote(file) .. " synth 0.2 sine 500 vol 0.5")
    id = a:play(file)
    until_(function() return find(a, "output_done", id) end, 3, "second play")
    assert.near(200, find(a, "output_done", id).ms, 20)
    -- stop_record, then append to the same file
    local rec = path("append.wav")
    id = b:record(rec)
    H.settle(0.2)
    assert.is_true(b:stop_record())
    collect(b)
    local first = find(b, "record_done", id)
    assert.equal("stopped", first.reason)
    local id2 = b:record(rec, { append = true, max_ms = 200 })
    until_(function() return find(b, "record_done", id2) end, 3, "appended")
    local secs = tonumber(soxi(rec, "-D"))
    assert.near((first.ms + 200) / 1000, secs, 0.001)
  end)

  it("frees an abandoned closed stream", function()
    local function live()
      collectgarbage()
      collectgarbage()
      core.step(0)                  -- destroys what the collector queued
      return core.stats()["luasip.rtp"] or 0
    end
    local before = live()
    ;(function() assert(core.rtp_open{ address = "127.0.0.1" }):close() end)()
    assert.is_true(live() <= before)
  end)
end)
