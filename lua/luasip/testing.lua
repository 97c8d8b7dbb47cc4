-- luasip.testing: a harness for testing SIP applications from busted.  It starts the
-- application under test -- a script run as a child process on a free loopback port, or
-- a function given an agent in this process -- and drives it with scripted phones: luasip
-- agents on 127.0.0.1 whose every step waits, bounded, for what the test expects and
-- fails with the message that did arrive.  The test body calls these methods directly
-- (not from a luasip coroutine): each one turns the loop until its condition holds.
--   local testing = require "luasip.testing"
--   local t = testing.start{ script = "examples/uas.lua" }
--   local call = t:invite(t:uri("100"))
--   call:expect(180); call:expect(200); call:ack(); call:bye()
--   t:close()
local sip = require "luasip"
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local unpack = table.unpack or unpack

local M = {
  timeout = 5,          -- seconds each expectation waits by default
  ready_timeout = 10,   -- seconds a script has to answer its first OPTIONS
}

local HOST = "127.0.0.1"

-- ------------------------------------------------------------------ helpers

local function fail(level, msg)
  error("luasip.testing: " .. msg, level + 1)
end

local function pack(...) return { n = select("#", ...), ... } end

local function check_opts(opts, known, fname, level)
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(fname .. ": options must be a table", level + 1) end
  class.check_options(opts, known, fname, level + 1)
  return opts
end

-- turn(pred, timeout) -> bool: steps the loop until pred() holds or timeout seconds pass
local function turn(pred, timeout)
  local t0 = sip.now()
  while not pred() do
    if sip.now() - t0 >= timeout then return pred() and true or false end
    sip.step(10)
  end
  return true
end
M.turn = turn

-- go(fn, ...) -> box: runs fn in a luasip coroutine; box.done once it returned (box.r
-- its results) or raised (box.err).  dispatcher.pcall: fn may wait (Lua 5.1 cannot
-- yield across pcall; there it runs in a coroutine of its own).
local function go(fn, ...)
  local box, args = { done = false }, pack(...)
  sip.spawn(function()
    local r = pack(dispatcher.pcall(fn, unpack(args, 1, args.n)))
    if r[1] then
      box.r = pack(unpack(r, 2, r.n))
    else
      box.err = tostring(r[2])
    end
    box.done = true
  end)
  return box
end

-- run(fn, timeout, what, level) -> fn's results, run in a luasip coroutine while the
-- loop turns; fails when it raised or took longer than timeout
local function run(fn, timeout, what, level)
  local box = go(fn)
  if not turn(function() return box.done end, timeout) then
    fail(level + 1, ("%s: no result within %g s"):format(what, timeout))
  end
  if box.err then fail(level + 1, what .. " raised: " .. tostring(box.err)) end
  return unpack(box.r, 1, box.r.n)
end

local function describe_status(want)
  if type(want) == "table" then
    local s = {}
    for i, w in ipairs(want) do s[i] = tostring(w) end
    return table.concat(s, " or ")
  end
  return tostring(want)
end

-- status matches want: a number, a class ("2xx"), or a list of those
local function matches(status, want)
  if type(want) == "table" then
    for _, w in ipairs(want) do
      if matches(status, w) then return true end
    end
    return false
  end
  if type(want) == "string" then
    local c = want:match("^([1-6])xx$")
    return c ~= nil and math.floor(status / 100) == tonumber(c)
  end
  return status == want
end

local function check_want(want, fname)
  local function one(w)
    return type(w) == "number" or (type(w) == "string" and w:match("^[1-6]xx$"))
  end
  local ok = one(want)
  if type(want) == "table" then
    ok = #want > 0
    for _, w in ipairs(want) do ok = ok and one(w) end
  end
  if not ok then
    error(fname .. ": status must be a number, a class like \"2xx\" or a list of them", 3)
  end
end

local function raw_of(m)
  local ok, text = pcall(function() return m:raw() end)
  return ok and text or "(message text unavailable)"
end

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end

-- ------------------------------------------------------------------ child processes

-- process(argv [, { env = { NAME = value }, max_seconds = 600 }]) -> proc: a command (a
-- list of words) run in the background, its stdout and stderr in a file, bounded by
-- timeout(1).  proc.done() -> exit code | nil while it runs (124: killed by the bound);
-- proc.log() -> what it printed; proc.kill() stops it (TERM, then KILL after 3 s) and
-- removes its files.  Callable with `.` or `:`.
function M.process(argv, opts)
  local fname = "luasip.testing.process"
  if type(argv) ~= "table" or #argv == 0 then error(fname .. ": argv must be a list of words", 2) end
  opts = check_opts(opts, { env = true, max_seconds = true }, fname, 2)
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. shquote(dir)))
  local words = {}
  for name, value in pairs(opts.env or {}) do words[#words + 1] = shquote(name .. "=" .. value) end
  table.sort(words)
  table.insert(words, 1, "env")
  words[#words + 1] = "timeout -k 3 " .. math.floor(opts.max_seconds or 600)
  for _, w in ipairs(argv) do words[#words + 1] = shquote(w) end
  local script = ("(%s >%s/log 2>&1 </dev/null; echo $? >%s/rc.tmp; mv %s/rc.tmp %s/rc) "
    .. ">/dev/null 2>&1 & echo $! >%s/pid"):format(table.concat(words, " "), dir, dir, dir,
    dir, dir)
  assert(os.execute("sh -c " .. shquote(script)))
  local p = { dir = dir }
  local function read(name)
    local f = io.open(dir .. "/" .. name)
    if not f then return nil end
    local s = f:read("*a")
    f:close()
    return s
  end
  function p.done()
    return tonumber((read("rc") or ""):match("%d+"))
  end
  function p.log()
    return read("log") or ""
  end
  function p.kill()
    local pid = (read("pid") or ""):match("%d+")
    if pid and not p.done() then
      -- the subshell's child is timeout(1), which passes TERM on to the command
      os.execute("pkill -TERM -P " .. pid .. " 2>/dev/null")
      local t0 = sip.now()
      while not p.done() and sip.now() - t0 < 3 do os.execute("sleep 0.05") end
      if not p.done() then os.execute("pkill -KILL -P " .. pid .. " 2>/dev/null") end
    end
    os.execute("rm -rf " .. shquote(dir))
  end
  return p
end

-- the interpreter running this process (arg[-1], arg[-2] ... of the stand-alone lua)
local function interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  return arg and arg[i] or "lua"
end
M.interpreter = interpreter

-- a port free on 127.0.0.1 for UDP and TCP (bound by a throwaway agent)
local function free_port()
  local a = assert(sip.agent{ listen = { "sip:" .. HOST .. ":0" } })
  local port = a:transports()[1].port
  a:close()
  return port
end
M.free_port = free_port

local function tail(text, lines)
  local all = {}
  for l in (text or ""):gmatch("[^\n]*") do all[#all + 1] = l end
  while #all > 0 and all[#all] == "" do all[#all] = nil end
  local from = math.max(1, #all - lines + 1)
  return table.concat(all, "\n", from)
end

-- ------------------------------------------------------------------ SDP

local session = 0
local function default_offer(port)
  session = session + 1
  return table.concat({
    "v=0",
    ("o=- %d 1 IN IP4 %s"):format(os.time() * 100 + session % 100, HOST),
    "s=luasip.testing",
    "c=IN IP4 " .. HOST,
    "t=0 0",
    ("m=audio %d RTP/AVP 0 8 101"):format(port),
    "a=rtpmap:0 PCMU/8000",
    "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000",
    "a=fmtp:101 0-16",
    "a=sendrecv",
    "" }, "\r\n")
end

-- the answer a phone gives: to the offer in body, else an offer of its own
local function default_answer(body, port)
  if not body or body == "" then return default_offer(port) end
  return sip.sdp.answer(body, { address = HOST, media = { audio = { port = port,
    codecs = { "PCMU/8000", "PCMA/8000", "telephone-event/8000" } } } })
end

-- ------------------------------------------------------------------ WAV analysis

local function u16(s, i) local a, b = s:byte(i, i + 1); return a + b * 256 end
local function u32(s, i) return u16(s, i) + u16(s, i + 2) * 65536 end

-- samples of a 16-bit mono PCM WAV file, and its rate
local function wav_samples(path)
  local f = io.open(path, "rb")
  if not f then return nil, "cannot open " .. path end
  local s = f:read("*a")
  f:close()
  if #s < 12 or s:sub(1, 4) ~= "RIFF" or s:sub(9, 12) ~= "WAVE" then
    return nil, path .. ": not a WAV file"
  end
  local i, rate, bits, data = 13, 8000, 16, nil
  while i + 8 <= #s do
    local id, size = s:sub(i, i + 3), u32(s, i + 4)
    if id == "fmt " then
      rate, bits = u32(s, i + 12), u16(s, i + 22)
    elseif id == "data" then
      data = s:sub(i + 8, i + 7 + size)
      break
    end
    i = i + 8 + size + size % 2
  end
  if not data or bits ~= 16 then return nil, path .. ": no 16-bit PCM data" end
  local x, n = {}, 0
  for j = 1, #data - 1, 2 do
    local v = u16(data, j)
    if v >= 32768 then v = v - 65536 end
    n = n + 1
    x[n] = v / 32768
  end
  return x, rate
end

-- fft(re, im): in place, radix 2 (#re a power of two)
local function fft(re, im)
  local n, j = #re, 1
  for i = 1, n - 1 do                        -- bit reversal
    if i < j then re[i], re[j], im[i], im[j] = re[j], re[i], im[j], im[i] end
    local m = n / 2
    while m >= 1 and j > m do j = j - m; m = m / 2 end
    j = j + m
  end
  local len = 2
  while len <= n do
    local ang = -2 * math.pi / len
    local wr, wi = math.cos(ang), math.sin(ang)
    for start = 1, n, len do
      local cr, ci = 1, 0
      for k = 0, len / 2 - 1 do
        local a, b = start + k, start + k + len / 2
        local tr = re[b] * cr - im[b] * ci
        local ti = re[b] * ci + im[b] * cr
        re[b], im[b] = re[a] - tr, im[a] - ti
        re[a], im[a] = re[a] + tr, im[a] + ti
        cr, ci = cr * wr - ci * wi, cr * wi + ci * wr
      end
    end
    len = len * 2
  end
end

-- analyse(samples [, rate]) -> { level =, silence =, frequency =, frequencies =, ms = }:
-- the RMS level in dBFS (silence below -45), and the tones: the peaks of the power
-- spectrum (Hann-windowed blocks of 1024 samples, averaged; each peak within 10 dB of the
-- strongest, placed between its bins by a Gaussian fit), in Hz, the strongest first
local BLOCK = 1024
function M.analyse(x, rate)
  rate = rate or 8000
  local n, sum = #x, 0
  for i = 1, n do sum = sum + x[i] * x[i] end
  local rms = n > 0 and math.sqrt(sum / n) or 0
  local level = rms > 0 and 20 * math.log(rms) / math.log(10) or -120
  if level < -120 then level = -120 end
  local out = { level = level, silence = level < -45, ms = math.floor(n * 1000 / rate + 0.5),
    frequencies = {} }
  if out.silence then return out end
  local size = BLOCK
  while size > 64 and size > n do size = size / 2 end
  if n < size then return out end
  local win, power = {}, {}
  for i = 1, size do win[i] = 0.5 - 0.5 * math.cos(2 * math.pi * (i - 1) / (size - 1)) end
  local half = size / 2
  for k = 1, half do power[k] = 0 end
  for start = 0, n - size, size do
    local re, im = {}, {}
    for i = 1, size do re[i], im[i] = x[start + i] * win[i], 0 end
    fft(re, im)
    for k = 1, half do power[k] = power[k] + re[k] * re[k] + im[k] * im[k] end
  end
  -- power[k] is bin k - 1 (k - 1) * rate / size Hz; tones from ~60 Hz up
  local lo = math.max(3, math.floor(60 * size / rate))
  local best = 0
  for k = lo, half - 1 do if power[k] > best then best = power[k] end end
  local peaks = {}
  for k = lo, half - 1 do
    local p = power[k]
    if p >= best / 10 and p > power[k - 1] and p >= power[k + 1] then
      local a, b, c = math.log(power[k - 1] + 1e-30), math.log(p), math.log(power[k + 1] + 1e-30)
      local d = a - 2 * b + c
      local delta = d ~= 0 and 0.5 * (a - c) / d or 0
      peaks[#peaks + 1] = { hz = (k - 1 + delta) * rate / size, p = p }
    end
  end
  table.sort(peaks, function(u, v) return u.p > v.p end)
  for i, pk in ipairs(peaks) do out.frequencies[i] = math.floor(pk.hz + 0.5) end
  out.frequency = out.frequencies[1]
  return out
end

-- wav_samples(path) -> samples (-1..1), rate | nil, err: a 16-bit mono PCM WAV file
M.wav_samples = wav_samples

local function le(x, n)
  local t = {}
  for i = 1, n do
    t[i] = string.char(x % 256)
    x = math.floor(x / 256)
  end
  return table.concat(t)
end

-- tone_wav(path, hz, ms [, level]) -> path: writes an 8 kHz mono 16-bit WAV of a sine of
-- hz (0: silence) lasting ms, at level dBFS (default -10): short prompts made by a test
function M.tone_wav(path, hz, ms, level)
  local n = math.floor(ms * 8)
  local amp = 32767 * 10 ^ ((level or -10) / 20)
  local parts = {}
  for i = 0, n - 1 do
    local v = math.floor(amp * math.sin(2 * math.pi * hz * i / 8000) + 0.5)
    parts[#parts + 1] = le(v % 65536, 2)
  end
  local data = table.concat(parts)
  local f = assert(io.open(path, "wb"))
  f:write("RIFF", le(36 + #data, 4), "WAVEfmt ", le(16, 4), le(1, 2), le(1, 2), le(8000, 4),
    le(16000, 4), le(2, 2), le(16, 2), "data", le(#data, 4), data)
  f:close()
  return path
end

local function energy(x, i, j)
  local e = 0
  for k = i, j do e = e + x[k] * x[k] end
  return e
end

-- count_frames(x, rate, pred) -> ms of the 20 ms frames of samples x where pred(first,
-- last, energy) holds, and where the first of them starts (ms, nil when none)
local function count_frames(x, rate, pred)
  local len = math.floor((rate or 8000) / 50)
  local ms, first = 0, nil
  for i = 1, #x - len + 1, len do
    if pred(i, i + len - 1, energy(x, i, i + len - 1)) then
      first = first or (i - 1) * 20 / len
      ms = ms + 20
    end
  end
  return ms, first
end

-- loud_ms(samples [, rate, level]) -> ms of the 20 ms frames louder than level (dBFS,
-- default -45), and where the first of them starts (ms, nil when none)
function M.loud_ms(x, rate, level)
  local min = 10 ^ ((level or -45) / 10)
  return count_frames(x, rate, function(i, j, e) return e / (j - i + 1) > min end)
end

-- tone_ms(samples, hz [, rate]) -> ms of the 20 ms frames where the frequency hz holds
-- most of the energy (Goertzel, louder than -45 dBFS), and where the first starts (ms)
function M.tone_ms(x, hz, rate)
  local w = 2 * math.cos(2 * math.pi * hz / (rate or 8000))
  return count_frames(x, rate, function(i, j, e)
    local n = j - i + 1
    local s1, s2 = 0, 0
    for k = i, j do s1, s2 = x[k] + w * s1 - s2, s1 end
    local p = s1 * s1 + s2 * s2 - w * s1 * s2      -- |X(hz)|^2: (A n / 2)^2 for a sine
    return e / n > 10 ^ -4.5 and p / (e * n / 2) > 0.5
  end)
end

-- listen(dialog [, path]) -> heard: records what a media call receives (dialog:record in
-- the background: no beep, no terminators, up to 60 s) into path (a temporary file by
-- default); heard() ends the recording (dialog:stop(), which ends the call's other verbs
-- too) and returns its samples and rate.  For the test body: heard() turns the loop.
function M.listen(d, path)
  local own = not path
  path = path or os.tmpname()
  local box = go(function()
    return d:record(path, { beep = false, max = 60, silence = false, terminators = "" })
  end)
  return function()
    if not box.done then d:stop() end
    turn(function() return box.done end, M.timeout)
    local why = box.r and box.r[1]
    if why ~= "stopped" and why ~= "hangup" and why ~= "max" then
      if own then os.remove(path) end
      fail(2, "listen: the recording ended with " .. tostring(why or box.err or "no result"))
    end
    local x, rate = wav_samples(path)
    if own then os.remove(path) end
    if not x then fail(2, "listen: " .. tostring(rate)) end
    return x, rate
  end
end

-- ------------------------------------------------------------------ transactions

-- Response queues: UAC calls and requests collect their responses in order; expect()
-- takes the next one (skipping 100 Trying unless it is what is expected).
local function next_response(q, want)
  while q.pos <= #q.responses do
    local r = q.responses[q.pos]
    if r.status == 100 and want ~= 100 then q.pos = q.pos + 1 else return r end
  end
end

local function seen(q)
  local s = {}
  for i = 1, #q.responses do s[i] = tostring(q.responses[i].status) end
  return #s > 0 and table.concat(s, ", ") or "none"
end

local function expect_response(q, want, timeout, fname)
  check_want(want, fname)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error(fname .. ": timeout must be a positive number", 3)
  end
  timeout = timeout or q.phone.t.timeout
  local function over()
    if q.box and q.box.done and q.box.err then q.finished, q.err = true, q.box.err end
    return q.finished
  end
  local ok = turn(function() return next_response(q, want) ~= nil or over() end, timeout)
  local r = next_response(q, want)
  local what = ("%s: expected %s to %s"):format(q.phone.name, describe_status(want), q.what)
  if r then
    q.pos = q.pos + 1
    if matches(r.status, want) then return r end
    fail(3, ("%s, got %d %s:\n%s"):format(what, r.status, r.reason or "", raw_of(r)))
  end
  if q.finished then
    fail(3, ("%s: it ended without one (%s; responses: %s)%s"):format(what,
      tostring(q.err or "no more responses"), seen(q), q.phone.t:context()))
  end
  assert(not ok)
  fail(3, ("%s: nothing arrived within %g s (responses so far: %s)%s"):format(what, timeout,
    seen(q), q.phone.t:context()))
end

local Tx = {}
Tx.__index = Tx

-- tx:expect(status [, timeout]) -> response
function Tx:expect(want, timeout)
  local r = expect_response(self, want, timeout, "luasip.testing tx:expect")
  return r      -- (not a tail call: error levels count this frame)
end

-- tx:expect_no_response([seconds]) -> true: nothing but a 100 Trying comes within
-- `seconds` (1 by default; e.g. a request the application must drop)
function Tx:expect_no_response(seconds)
  seconds = seconds or 1
  turn(function() return next_response(self, nil) ~= nil end, seconds)
  local r = next_response(self, nil)
  if r then
    fail(2, ("%s: expected no response to %s, got %d %s:\n%s"):format(self.phone.name,
      self.what, r.status, r.reason or "", raw_of(r)))
  end
  return true
end

-- tx:response() -> the final response once it came (waits, bounded), or nil
function Tx:response(timeout)
  turn(function() return self.finished end, timeout or self.phone.t.timeout)
  return self.final
end

local function new_tx(phone, what)
  return setmetatable({ phone = phone, what = what, responses = {}, pos = 1 }, Tx)
end

-- ------------------------------------------------------------------ incoming requests

-- An incoming request: its fields and header methods are the request's; reply() answers
-- it.  The phone's handler keeps the request's coroutine until the final reply.
local Incoming = {}
Incoming.__index = function(self, k)
  local m = Incoming[k]
  if m ~= nil then return m end
  return self.req[k]
end

for _, m in ipairs{ "header", "headers", "raw", "answered" } do
  Incoming[m] = function(self, ...) return self.req[m](self.req, ...) end
end

local function release(inc)
  if inc.slot then
    inc.phone.held[inc] = nil
    dispatcher.fill(inc.slot, true)
  end
end

-- reply(inc, status, reason, opts) -> what req:reply returns; fails (at the caller of
-- the public method that called it) when it fails
local function reply(self, status, reason, opts)
  local req = self.req
  local r = pack(run(function() return req:reply(status, reason, opts) end,
    self.phone.t.timeout + 1, self.phone.name .. ": reply " .. tostring(status), 3))
  if not r[1] then
    fail(3, ("%s: reply %s to %s failed: %s"):format(self.phone.name, tostring(status),
      req.method, tostring(r[2])))
  end
  if type(status) == "number" and status >= 200 then release(self) end
  return r
end

-- inc:reply(status [, reason] [, opts]) -> what req:reply returns (fails the test when
-- it fails)
function Incoming:reply(status, reason, opts)
  local r = reply(self, status, reason, opts)
  return unpack(r, 1, r.n)
end

-- ------------------------------------------------------------------ calls

local Call = setmetatable({}, { __index = Incoming })
Call.__index = function(self, k)
  local m = Call[k]
  if m ~= nil then return m end
  local req = rawget(self, "req")
  if req then return req[k] end
end

local RECORDED_IN_DIALOG = { "INFO", "NOTIFY", "OPTIONS", "MESSAGE", "INVITE", "UPDATE",
  "REFER", "BYE" }

-- attach(call, d): the call's dialog; its in-dialog requests are answered as a phone
-- answers them (INFO, NOTIFY, OPTIONS, MESSAGE 200; re-INVITE and UPDATE from our
-- session; REFER 603) and kept for expect_request
local function attach(call, d)
  if call.dialog == d then return end
  call.dialog = d
  local prev
  prev = d:on_end(function(dd, reason)
    call.ended = reason
    if prev then prev(dd, reason) end
  end)
  if d:has_media() then return end      -- the stream answers re-INVITEs and takes DTMF
  for _, method in ipairs(RECORDED_IN_DIALOG) do
    d:on(method, function(req, dd)
      call.requests[#call.requests + 1] = req
      if method == "BYE" then return end                   -- answered by the core
      if method == "INVITE" or method == "UPDATE" then
        if req.body then
          local ans = default_answer(req.body, call.phone.rtp_port)
          if not ans then return req:reply(488) end
          return req:reply(200, { body = ans, content_type = "application/sdp" })
        end
        return req:reply(200, { body = dd.local_sdp, content_type = dd.local_sdp
          and "application/sdp" or nil })
      end
      req:reply(method == "REFER" and 603 or 200)
    end)
  end
end

local function new_call(phone, role, what)
  local c = setmetatable({ phone = phone, role = role, what = what, responses = {}, pos = 1,
    requests = {}, rpos = 1 }, Call)
  phone.calls[#phone.calls + 1] = c
  return c
end

local function need_dialog(call, fname)
  if not call.dialog then
    turn(function() return call.dialog ~= nil or call.finished end, call.phone.t.timeout)
  end
  if not call.dialog then
    fail(3, ("%s: %s: the call has no dialog (%s)"):format(call.phone.name, fname,
      call.role == "uac" and ("responses: " .. seen(call)) or "not answered"))
  end
  return call.dialog
end

-- call:expect(status [, timeout]) -> response (a call we made)
function Call:expect(want, timeout)
  if self.role ~= "uac" then error("luasip.testing call:expect: for calls made with invite", 2) end
  local r = expect_response(self, want, timeout, "luasip.testing call:expect")
  return r
end

-- call:ack() -> true: the 2xx came and was acknowledged (the core sends the ACK of a 2xx
-- when it arrives, RFC 3261 13.2.2.4)
function Call:ack()
  if self.role ~= "uac" then error("luasip.testing call:ack: for calls made with invite", 2) end
  need_dialog(self, "ack")
  turn(function() return self.finished end, self.phone.t.timeout)
  if not (self.final and self.final.status < 300) then
    fail(2, ("%s: ack: no 2xx to acknowledge (responses: %s)"):format(self.phone.name, seen(self)))
  end
  return true
end

-- call:cancel() -> true: CANCEL for a call still ringing (then expect(487))
function Call:cancel()
  if self.role ~= "uac" then error("luasip.testing call:cancel: for calls made with invite", 2) end
  turn(function() return self.tx ~= nil end, self.phone.t.timeout)
  if not self.tx then fail(2, self.phone.name .. ": cancel: the INVITE was not sent") end
  local ok, err = self.tx:cancel()
  if not ok then fail(2, self.phone.name .. ": cancel failed: " .. tostring(err)) end
  return true
end

-- call:bye() -> true: we hang up (BYE answered)
function Call:bye()
  local d = need_dialog(self, "bye")
  local ok, err, code = run(function() return d:bye() end, self.phone.t.timeout + 1,
    self.phone.name .. ": bye", 2)
  if not ok then
    fail(2, ("%s: BYE failed: %s (%s)"):format(self.phone.name, tostring(err), tostring(code)))
  end
  return true
end

-- call:expect_bye([timeout]) -> true: the other side hangs up
function Call:expect_bye(timeout)
  local d = need_dialog(self, "expect_bye")
  timeout = timeout or self.phone.t.timeout
  turn(function() return self.ended ~= nil end, timeout)
  if self.ended == "remote bye" then return true end
  if self.ended then
    fail(2, ("%s: expected a BYE, the call ended otherwise: %s"):format(self.phone.name, self.ended))
  end
  fail(2, ("%s: expected a BYE within %g s; the call is %s%s"):format(self.phone.name, timeout,
    d:state(), self.phone.t:context()))
end

-- call:expect_request(method [, timeout]) -> req: the next in-dialog request of that
-- method (already answered as a phone would)
function Call:expect_request(method, timeout)
  method = tostring(method):upper()
  need_dialog(self, "expect_request")
  timeout = timeout or self.phone.t.timeout
  local function find()
    for i = self.rpos, #self.requests do
      if self.requests[i].method == method then return i end
    end
  end
  turn(function() return find() ~= nil end, timeout)
  local i = find()
  if not i then
    local got = {}
    for j = self.rpos, #self.requests do got[#got + 1] = self.requests[j].method end
    fail(2, ("%s: expected a %s in the call within %g s (got: %s)%s"):format(self.phone.name,
      method, timeout, #got > 0 and table.concat(got, ", ") or "nothing", self.phone.t:context()))
  end
  self.rpos = i + 1
  return self.requests[i]
end

-- call:request(method [, opts]) -> tx: a request in the call (opts as dialog:request)
function Call:request(method, opts)
  local d = need_dialog(self, "request")
  local tx = new_tx(self.phone, method .. " in the call")
  tx.box = go(function()
    local res, err, code, rres = d:request(method, opts)
    local final = res or rres
    if final then tx.responses[#tx.responses + 1] = final end
    tx.final, tx.err, tx.code, tx.finished = final, not res and err or nil, code, true
  end)
  return tx
end

local function media_of(call, fname)
  local d = need_dialog(call, fname)
  if not d:has_media() then
    error("luasip.testing call:" .. fname .. ": this call has no media (make it with "
      .. "{ media = true })", 3)
  end
  return d
end

-- call:send_dtmf(digits [, opts]) -> true: sends digits (as dialog:send_dtmf) and waits
-- until they are sent
function Call:send_dtmf(digits, opts)
  local d = media_of(self, "send_dtmf")
  local r, err = run(function() return d:send_dtmf(digits, opts) end,
    self.phone.t.timeout + #tostring(digits), self.phone.name .. ": send_dtmf", 2)
  if r ~= "done" then fail(2, self.phone.name .. ": send_dtmf: " .. tostring(r or err)) end
  return true
end

-- call:send_tone(spec [, opts]) -> true: starts a tone (as dialog:tone: a name or e.g.
-- { freqs = { 1000 }, ms = 1000 }) and returns at once; call:stop_output() ends it
-- starts an output verb of the call's dialog in the background
local function start_output(self, fname, verb, what, opts)
  local d = media_of(self, fname)
  self.output = go(function() return d[verb](d, what, opts) end)
  return true
end

function Call:send_tone(spec, opts) return start_output(self, "send_tone", "tone", spec, opts) end

-- call:stop_output() -> true: ends the tone or file this phone plays
function Call:stop_output()
  media_of(self, "stop_output"):stop()
  if self.output then turn(function() return self.output.done end, self.phone.t.timeout) end
  return true
end

-- call:play(files [, opts]): starts playing WAV files (as dialog:play), returns at once
function Call:play(files, opts) return start_output(self, "play", "play", files, opts) end

-- call:hear(seconds) -> { level =, silence =, frequency =, frequencies =, ms = }: what
-- the other side sends during the next `seconds`: the RMS level (dBFS; silence below
-- -45), and the tones in it (Hz, the strongest first)
function Call:hear(seconds)
  local d = media_of(self, "hear")
  if type(seconds) ~= "number" or seconds <= 0 or seconds > 60 then
    error("luasip.testing call:hear: seconds must be a number in (0, 60]", 2)
  end
  local path = os.tmpname()
  local why, err = run(function()
    return d:record(path, { max = seconds, silence = false, terminators = "", beep = false })
  end, seconds + self.phone.t.timeout, self.phone.name .. ": hear", 2)
  if why ~= "max" and why ~= "hangup" then
    os.remove(path)
    fail(2, ("%s: hear: recording ended with %s"):format(self.phone.name, tostring(why or err)))
  end
  local x, rate = wav_samples(path)
  os.remove(path)
  if not x then fail(2, self.phone.name .. ": hear: " .. tostring(rate)) end
  local heard = M.analyse(x, rate)
  heard.hangup = why == "hangup" or nil
  return heard
end

-- call:expect_digits(n [, timeout]) -> digits: n digits the other side sends
function Call:expect_digits(n, timeout)
  local d = media_of(self, "expect_digits")
  timeout = timeout or self.phone.t.timeout
  local got = ""
  local box = go(function()
    while #got < n do
      local digit, why = d:wait_digit(timeout)
      if not digit then return why end
      got = got .. digit
    end
  end)
  turn(function() return box.done end, timeout * n + 1)
  if #got < n then
    fail(2, ("%s: expected %d digit(s), got %q (%s)"):format(self.phone.name, n, got,
      tostring(box.r and box.r[1] or "timeout")))
  end
  return got
end

-- call:stats() -> the stream's counters (dialog:media_stats)
function Call:stats()
  return media_of(self, "stats"):media_stats()
end

-- (a call we receive)
local function uas_only(self, fname)
  if self.role ~= "uas" then
    error("luasip.testing call:" .. fname .. ": for calls received with expect_call", 3)
  end
end

-- call:ring([status]) -> true: a 180 (or the given 1xx)
function Call:ring(status)
  uas_only(self, "ring")
  reply(self, status or 180)
  return true
end

-- call:answer([{ sdp =, body =, content_type =, headers =, media = }]) -> call: a 2xx
-- with an answer to the caller's offer (or an offer), then waits for the ACK
function Call:answer(opts)
  uas_only(self, "answer")
  opts = check_opts(opts, { sdp = true, body = true, content_type = true, headers = true,
    media = true, status = true }, "luasip.testing call:answer", 2)
  local req, phone = self.req, self.phone
  local o = { headers = opts.headers, status = opts.status, media = opts.media,
    timeout = phone.t.timeout }
  if not opts.media then
    o.body = opts.body or opts.sdp
    if o.body == nil then o.body = default_answer(req.body, phone.rtp_port) end
    if o.body == false then o.body = nil end
    o.content_type = o.body and (opts.content_type or "application/sdp") or nil
  end
  local d, err, code = run(function() return req:answer(o) end, phone.t.timeout + 1,
    phone.name .. ": answer", 2)
  release(self)
  if not d then
    fail(2, ("%s: answer failed: %s (%s)"):format(phone.name, tostring(err), tostring(code)))
  end
  attach(self, d)
  return self
end

-- call:reject([status [, reason]]) -> true: a final failure (default 486)
function Call:reject(status, reason)
  uas_only(self, "reject")
  reply(self, status or 486, reason)
  return true
end

-- call:expect_cancel([timeout]) -> true: the caller cancels (the core answered 487)
function Call:expect_cancel(timeout)
  uas_only(self, "expect_cancel")
  timeout = timeout or self.phone.t.timeout
  if not turn(function() return self.req:cancelled() end, timeout) then
    fail(2, ("%s: expected a CANCEL within %g s%s"):format(self.phone.name, timeout,
      self.phone.t:context()))
  end
  release(self)
  return true
end

-- ------------------------------------------------------------------ phones

local Phone = {}
Phone.__index = Phone

-- auto answers: method -> status | { status, ... } | fn(inc) (run in the handler)
local function auto_answer(phone, inc, rule)
  local req = inc.req
  if type(rule) == "function" then return rule(inc) end
  local list = type(rule) == "table" and rule or { rule }
  for i, status in ipairs(list) do
    if req.method == "INVITE" and status >= 200 and status < 300 then
      local d = req:answer{ body = default_answer(req.body, phone.rtp_port),
        content_type = "application/sdp" }
      if d then attach(inc, d) end
      return
    end
    req:reply(status)
    if i < #list and phone.answer_delay then sip.sleep(phone.answer_delay) end
  end
end

local function on_request(phone, req)
  local invite = req.method == "INVITE"
  local inc = invite and new_call(phone, "uas", "INVITE") or setmetatable({}, Incoming)
  inc.req, inc.phone = req, phone
  if invite then inc.call_id = req.call_id end
  local rule = phone.auto[req.method]
  if rule ~= nil and rule ~= false then
    phone.inbox[#phone.inbox + 1] = inc
    inc.auto = true
    return auto_answer(phone, inc, rule)
  end
  inc.slot = dispatcher.new_slot("luasip.testing")
  phone.inbox[#phone.inbox + 1] = inc
  phone.held[inc] = true
  dispatcher.wait(inc.slot)
end

local PHONE_OPTIONS = { password = true, domain = true, proxy = true, answer = true,
  answer_delay = true, agent = true, auto = true }

local function new_phone(t, who, opts, fname)
  opts = check_opts(opts, PHONE_OPTIONS, fname, 3)
  if type(who) ~= "string" or who == "" then error(fname .. ": a user name or sip: URI expected", 3) end
  local user, domain = who:match("^sips?:([^@;]+)@([^;>]+)")
  user = user or who
  domain = opts.domain or domain or t.host
  local ao = { listen = { "sip:" .. HOST .. ":0" } }
  for k, v in pairs(opts.agent or {}) do ao[k] = v end
  local agent = assert(sip.agent(ao))
  local p = setmetatable({ t = t, name = user, user = user, domain = domain, agent = agent,
    aor = "sip:" .. user .. "@" .. domain, inbox = {}, ipos = 1, calls = {}, held = {},
    password = opts.password, answer_delay = opts.answer_delay }, Phone)
  p.uri = agent:uri(user)
  p.rtp_port = 20000 + 2 * (agent:transports()[1].port % 10000)
  if opts.proxy ~= false then p.proxy = opts.proxy or t:contact() end
  if p.password then p.auth = { username = user, password = p.password } end
  p.auto = { OPTIONS = 200 }
  if opts.answer ~= nil then
    p.auto.INVITE, p.auto.MESSAGE = opts.answer, 200
  end
  for k, v in pairs(opts.auto or {}) do p.auto[k:upper()] = v end
  for _, m in ipairs(sip.methods) do
    if m ~= "ACK" and m ~= "CANCEL" and m ~= "PRACK" then
      agent:on(m, function(req) return on_request(p, req) end)
    end
  end
  t.phones[#t.phones + 1] = p
  return p
end

local function target(phone, uri)
  if type(uri) ~= "string" then error("luasip.testing: a URI or user name expected", 4) end
  if uri:match("^sips?:") or uri:match("^tel:") then return uri end
  return "sip:" .. uri .. "@" .. phone.domain
end

local REQUEST_OPTIONS = { headers = true, body = true, content_type = true, from = true,
  to = true, proxy = true, auth = true, timeout = true }

-- phone:request(method, uri [, opts]) -> tx (opts as agent:request)
function Phone:request(method, uri, opts)
  opts = check_opts(opts, REQUEST_OPTIONS, "luasip.testing phone:request", 2)
  local o = { method = method, uri = target(self, uri) }
  for k, v in pairs(opts) do o[k] = v end
  if o.proxy == nil then o.proxy = self.proxy end
  if o.from == nil then o.from = "<" .. self.aor .. ">" end
  if o.auth == nil then o.auth = self.auth end
  if o.auth == false then o.auth = nil end
  local tx = new_tx(self, method .. " " .. o.uri)
  o.on_provisional = function(r) tx.responses[#tx.responses + 1] = r end
  tx.box = go(function()
    local res, err, code, rres = self.agent:request(o)
    local final = res or rres
    if final then tx.responses[#tx.responses + 1] = final end
    tx.final, tx.err, tx.code, tx.finished = final, not res and err or nil, code, true
  end)
  return tx
end

-- phone:options(uri [, opts]) / phone:message(uri, text [, opts]) -> tx
function Phone:options(uri, opts) return self:request("OPTIONS", uri, opts) end

function Phone:message(uri, text, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.body, o.content_type = tostring(text), o.content_type or "text/plain"
  return self:request("MESSAGE", uri, o)
end

-- phone:register([{ expires = 3600, contact =, registrar =, headers = }]) -> tx: binds
-- the phone's contact to its AOR (digest answered with its password)
function Phone:register(opts)
  opts = check_opts(opts, { expires = true, contact = true, registrar = true, headers = true },
    "luasip.testing phone:register", 2)
  local h = { To = "<" .. self.aor .. ">", Contact = "<" .. (opts.contact or self.uri) .. ">",
    Expires = tostring(opts.expires or 3600) }
  for k, v in pairs(opts.headers or {}) do h[k] = v end
  return self:request("REGISTER", opts.registrar or ("sip:" .. self.domain), { headers = h })
end

-- phone:unregister() -> tx: Expires 0 for the phone's contact
function Phone:unregister(opts)
  local o = { expires = 0 }
  for k, v in pairs(opts or {}) do o[k] = v end
  return self:register(o)
end

local INVITE_OPTIONS = { sdp = true, body = true, content_type = true, headers = true,
  media = true, from = true, proxy = true, auth = true, timeout = true }

-- phone:invite(uri [, { sdp =, media =, headers =, ... }]) -> call
function Phone:invite(uri, opts)
  opts = check_opts(opts, INVITE_OPTIONS, "luasip.testing phone:invite", 2)
  uri = target(self, uri)
  local call = new_call(self, "uac", "INVITE " .. uri)
  local body = opts.body or opts.sdp
  if body == nil and not opts.media then body = default_offer(self.rtp_port) end
  if body == false then body = nil end
  local auth = opts.auth
  if auth == nil then auth = self.auth end
  local proxy = opts.proxy
  if proxy == nil then proxy = self.proxy end
  local o = { uri = uri, body = body, content_type = body and (opts.content_type or
    "application/sdp") or nil, headers = opts.headers, media = opts.media, proxy = proxy or nil,
    from = opts.from or ("<" .. self.aor .. ">"), auth = auth or nil, timeout = opts.timeout,
    on_sent = function(tx) call.tx = tx end,
    on_provisional = function(r, tx)
      call.responses[#call.responses + 1] = r
      local early = tx:dialog()
      if early and not call.dialog then attach(call, early) end
    end }
  call.box = go(function()
    local d, res, code, rres = self.agent:invite(o)
    if d then attach(call, d) end
    local final = d and res or rres
    if final then call.responses[#call.responses + 1] = final end
    call.final, call.err, call.code, call.finished = final, not d and res or nil, code, true
  end)
  return call
end

local SUBSCRIBE_OPTIONS = { event = true, expires = true, accept = true, headers = true }

-- phone:subscribe(uri, { event = [, expires =, accept =, headers =] }) -> sub: waits for
-- the 2xx (fails with what came instead); sub:expect_notify([timeout]) -> the next NOTIFY
-- (answered 200); sub:unsubscribe(); sub.state, sub.body
function Phone:subscribe(uri, opts)
  opts = check_opts(opts, SUBSCRIBE_OPTIONS, "luasip.testing phone:subscribe", 2)
  local notifies, s = {}, { npos = 1 }
  local o = { uri = target(self, uri), event = opts.event, expires = opts.expires,
    accept = opts.accept, headers = opts.headers, proxy = self.proxy, auth = self.auth,
    from = "<" .. self.aor .. ">", timeout = self.t.timeout, retry = false,
    on_notify = function(req) notifies[#notifies + 1] = req end }
  local sub, err, code, res = run(function() return self.agent:subscribe(o) end,
    self.t.timeout + 1, self.name .. ": subscribe", 2)
  if not sub then
    fail(2, ("%s: SUBSCRIBE %s failed: %s (%s)%s"):format(self.name, o.uri, tostring(err),
      tostring(code), res and (":\n" .. raw_of(res)) or ""))
  end
  s.sub, s.notifies, s.phone = sub, notifies, self
  return setmetatable(s, { __index = function(tbl, k)
    if k == "expect_notify" then
      return function(_, timeout)
        timeout = timeout or self.t.timeout
        turn(function() return notifies[tbl.npos] ~= nil end, timeout)
        local n = notifies[tbl.npos]
        if not n then
          fail(2, ("%s: expected a NOTIFY within %g s (%d so far)"):format(self.name, timeout,
            #notifies))
        end
        tbl.npos = tbl.npos + 1
        return n
      end
    elseif k == "unsubscribe" then
      return function()
        return run(function() return sub:unsubscribe() end, self.t.timeout + 6,
          self.name .. ": unsubscribe", 2)
      end
    end
    return sub[k]
  end })
end

local function take(phone, pred)
  for i = phone.ipos, #phone.inbox do
    local inc = phone.inbox[i]
    if inc and pred(inc) then
      table.remove(phone.inbox, i)
      return inc
    end
  end
end

local function inbox_text(phone)
  local s = {}
  for i = phone.ipos, #phone.inbox do s[#s + 1] = phone.inbox[i].req.method end
  return #s > 0 and table.concat(s, ", ") or "nothing"
end

-- phone:expect_call([timeout]) -> call: the next INVITE to this phone
function Phone:expect_call(timeout)
  return self:expect_request("INVITE", timeout)
end

-- phone:expect_request(method [, timeout]) -> request (an INVITE: a call): the next
-- request of that method out of dialog; answer it with :reply (calls: :ring, :answer,
-- :reject)
function Phone:expect_request(method, timeout)
  if type(method) ~= "string" then error("luasip.testing phone:expect_request: method expected", 2) end
  method = method:upper()
  timeout = timeout or self.t.timeout
  local function pred(inc) return inc.req.method == method end
  local inc
  turn(function() inc = take(self, pred); return inc ~= nil end, timeout)
  if not inc then
    fail(2, ("%s: expected a %s within %g s (got: %s)%s"):format(self.name, method, timeout,
      inbox_text(self), self.t:context()))
  end
  return inc
end

-- phone:close(): answers what it still holds (480) and closes its agent
function Phone:close()
  for inc in pairs(self.held) do
    if not inc.req:answered() then pcall(inc.req.reply, inc.req, 480) end
    release(inc)
  end
  self.inbox = {}
  self.agent:close()
end

-- ------------------------------------------------------------------ the application

local T = {}
T.__index = T

-- t:contact() -> "sip:127.0.0.1:port" of the application
function T:contact() return "sip:" .. self.address end

-- t:uri([user]) -> "sip:user@127.0.0.1:port"
function T:uri(user)
  if user == nil then return self:contact() end
  return "sip:" .. user .. "@" .. self.address
end

-- t:output() -> what the application's process printed so far ("" in-process)
function T:output()
  return self.proc and self.proc.log() or ""
end

-- t:expect_output(pattern [, timeout]) -> the match: waits until the application's
-- output matches a Lua pattern (its log says what it did)
function T:expect_output(pattern, timeout)
  if type(pattern) ~= "string" then error("luasip.testing t:expect_output: pattern expected", 2) end
  if not self.proc then error("luasip.testing t:expect_output: for applications started as scripts", 2) end
  timeout = timeout or self.timeout
  local m
  turn(function()
    m = pack(self.proc.log():match(pattern))
    return m[1] ~= nil
  end, timeout)
  if m[1] == nil then
    fail(2, ("expected the application to print %q within %g s%s"):format(pattern, timeout,
      self:context()))
  end
  return unpack(m, 1, m.n)
end

-- t:alive() -> bool
function T:alive()
  if self.proc then return self.proc.done() == nil end
  return self.agent ~= nil and not self.agent:closed()
end

-- the context of a failure: whether the application still runs, its last output lines
function T:context()
  if not self.proc then return "" end
  local rc = self.proc.done()
  return ("\n(the application %s; its last output:)\n%s"):format(
    rc and ("exited with status " .. rc) or "is running", tail(self.proc.log(), 15))
end

-- t:phone(user | uri [, { password =, domain =, proxy = uri | false, answer =, answer_delay =,
-- auto = { METHOD = status | {status...} | fn }, agent = {...} }]) -> phone
function T:phone(who, opts)
  return new_phone(self, who, opts, "luasip.testing t:phone")
end

-- t:uas(user | uri [, opts]) -> a phone that answers calls by itself (answer = { 180, 200 }
-- by default, or a status, a list of them or fn(call)) and MESSAGEs 200
function T:uas(who, opts)
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  if o.answer == nil then o.answer = { 180, 200 } end
  return new_phone(self, who, o, "luasip.testing t:uas")
end

-- the default phone ("tester", no password): t:invite, t:request, t:options, t:message,
-- t:register, t:subscribe, t:expect_request as on a phone
local function tester(t)
  if not t.default then t.default = t:phone("tester") end
  return t.default
end
for _, m in ipairs{ "invite", "request", "options", "message", "register", "unregister",
  "subscribe", "expect_call", "expect_request" } do
  T[m] = function(self, ...) return Phone[m](tester(self), ...) end
end

-- t:close() -> exit status of the application's process (nil in-process): closes every
-- phone, the in-process agent, and stops the process
function T:close()
  for _, p in ipairs(self.phones) do pcall(Phone.close, p) end
  self.phones = {}
  if self.agent then self.agent:close() end
  local rc
  if self.proc then
    rc = self.proc.done()
    self.proc.kill()
    self.proc = nil
  end
  return rc
end

local function install(t, app, fname)
  local setup = app
  if type(app) == "string" then setup = require(app) end
  if type(setup) == "function" then
    setup(t.agent, t)
  elseif type(setup) == "table" then
    for method, fn in pairs(setup) do t.agent:on(method, fn) end
  else
    error(fname .. ": app must be a function(agent), a table of handlers or a module name", 4)
  end
end

-- probes the process with OPTIONS until it answers (any status that came over the
-- network: before the script listens, the stack itself answers 503 to the ICMP error)
local function wait_ready(t, proc, opts, timeout)
  local probe = tester(t)
  local box
  return turn(function()
    if proc.done() then return true end
    if opts.ready then return proc.log():find(opts.ready) ~= nil end
    if box and box.done then
      local final = box.r and (box.r[1] or box.r[4])
      if final and final.source then return true end
      box = nil
    end
    if not box then
      box = go(function()
        local res, err, code, rres = probe.agent:request{ method = "OPTIONS", uri = t:contact(),
          timeout = 0.5 }
        local final = res or rres
        if not (final and final.source) then sip.sleep(0.1) end     -- pace the probes
        return res, err, code, rres
      end)
    end
    return false
  end, timeout) and proc.done() == nil
end

local START_OPTIONS = { script = true, app = true, args = true, env = true, agent = true,
  ready = true, ready_timeout = true, timeout = true, lua = true, max_seconds = true }

-- testing.start{ script = path [, args = { ... }, env = { ... }, ready = pattern,
--   ready_timeout = 10, lua = interpreter, max_seconds = 600] | app = fn(agent, t) |
--   handlers | module name [, agent = { agent options }] [, timeout = 5] } -> t
-- A script gets "127.0.0.1:<free port>" as its first argument (args: "{address}",
-- "{port}" and "{host}" in them are replaced), the Lua paths of this process, and is
-- ready when it answers an OPTIONS (any status) or prints `ready` (a Lua pattern).
function M.start(opts)
  local fname = "luasip.testing.start"
  opts = check_opts(opts, START_OPTIONS, fname, 2)
  if (opts.script == nil) == (opts.app == nil) then
    error(fname .. ": give one of script (a path) and app (a function)", 2)
  end
  local t = setmetatable({ phones = {}, host = HOST, timeout = opts.timeout or M.timeout }, T)
  if opts.app ~= nil then
    local ao = { listen = { "sip:" .. HOST .. ":0" } }
    for k, v in pairs(opts.agent or {}) do ao[k] = v end
    t.agent = assert(sip.agent(ao))
    t.port = t.agent:transports()[1].port
    t.address = HOST .. ":" .. t.port
    install(t, opts.app, fname)
    return t
  end
  if type(opts.script) ~= "string" then error(fname .. ": script must be a path", 2) end
  local f = io.open(opts.script)
  if not f then error(fname .. ": no such script: " .. opts.script, 2) end
  f:close()
  local env = { LUA_PATH = package.path, LUA_CPATH = package.cpath }
  for k, v in pairs(opts.env or {}) do env[k] = v end
  local last
  for _ = 1, 3 do                           -- a port taken meanwhile: another one
    t.port = free_port()
    t.address = HOST .. ":" .. t.port
    local function subst(s)
      return (tostring(s):gsub("{(%a+)}", { address = t.address, port = tostring(t.port),
        host = HOST }))
    end
    local argv = { opts.lua or interpreter(), opts.script }
    for _, a in ipairs(opts.args or { "{address}" }) do argv[#argv + 1] = subst(a) end
    local e = {}
    for k, v in pairs(env) do e[k] = subst(v) end
    local proc = M.process(argv, { env = e, max_seconds = opts.max_seconds or 600 })
    t.proc = proc
    if wait_ready(t, proc, opts, opts.ready_timeout or M.ready_timeout) then return t end
    last = t:context()
    local rc = proc.done()
    proc.kill()
    t.proc = nil
    if rc == nil then break end                       -- running but deaf: no retry
    if not last:find("listen") and not last:find("in use") then break end
  end
  t:close()
  error(("%s: %s did not become ready%s"):format(fname, opts.script, last or ""), 2)
end
M.new = M.start

return M
