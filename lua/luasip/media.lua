-- luasip.media: media on INVITE dialogs, on the C class luasip.rtp (csrc/media*.c).
-- One RTP stream per call leg, opened by req:progress / req:answer / agent:invite with
-- `media =`, described in the SDP (PCMU, PCMA, telephone-event), updated by re-INVITEs,
-- closed when the dialog ends (the dialog's "ended" hook).  The IVR verbs (play, collect,
-- record, ...) are added to luasip.dialog with class.extend; each waits in its coroutine
-- for the stream's events ("media", one bridge call per stream per tick) and returns a
-- reason word.  Per-call state (a plain table, kept in the dialog's class.state as
-- `media`): rtp, the negotiated codecs, the digit buffer (type-ahead; RFC 4733, in-band
-- and SIP INFO digits, one per press) and the verbs waiting on it.
local core = require "luasip.core"
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"
local sdp = require "luasip.sdp"
require "luasip.request"
require "luasip.dialog"

local state = class.state
local now = core.now

local M = {}

-- sip.media.prompts: the default directory of the prompt set (say_digits, say_number)
M.prompts = nil

-- the stream opener (core.rtp_open{ address =, port_min =, port_max = }); specs may swap it
M.open_rtp = function(o) return core.rtp_open(o) end

local CODECS = { PCMU = 0, PCMA = 8 }
local DTMF_MODES = { auto = true, rfc4733 = true, info = true, inband = true }
local DEFAULT_PORTS = { 10000, 60000 }
local DEDUP_WINDOW = 0.5      -- s: the same digit by RTP and by INFO within it is one press
local BUFFER_MAX = 64         -- digits kept for type-ahead

local streams = setmetatable({}, { __mode = "k" })  -- rtp -> call media state

local function copy(t)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  return o
end

-- ------------------------------------------------------------------ configuration

local CONFIG_OPTIONS = { address = true, ports = true, prompts = true }

-- config(opts) -> the agent's media settings (luasip.agent checks its `media` option)
function M.config(opts, fname, level)
  level = (level or 2) + 1
  if opts == nil then return {} end
  if type(opts) ~= "table" then error(fname .. ": media must be a table", level) end
  class.check_options(opts, CONFIG_OPTIONS, fname .. " media", level)
  if opts.address ~= nil and type(opts.address) ~= "string" then
    error(fname .. ": media.address must be a string", level)
  end
  local ports = opts.ports
  if ports ~= nil then
    if type(ports) ~= "table" or type(ports[1]) ~= "number" or type(ports[2]) ~= "number"
      or ports[1] < 1 or ports[2] > 65535 or ports[1] > ports[2] then
      error(fname .. ": media.ports must be { min, max } within 1-65535", level)
    end
  end
  if opts.prompts ~= nil and type(opts.prompts) ~= "string" then
    error(fname .. ": media.prompts must be a directory name", level)
  end
  return { address = opts.address, ports = ports and { ports[1], ports[2] }, prompts = opts.prompts }
end

local CALL_OPTIONS = { codecs = true, dtmf = true, dtmf_pt = true }

-- call_options(v, fname, level) -> { codecs =, dtmf =, dtmf_pt = } from media = true | {...}
local function call_options(v, fname, level)
  level = level + 1
  if v == true then v = {} end
  if type(v) ~= "table" then error(fname .. ": media must be true or a table", level) end
  class.check_options(v, CALL_OPTIONS, fname .. " media", level)
  local codecs = v.codecs or { "PCMU", "PCMA" }
  if type(codecs) ~= "table" or #codecs == 0 then
    error(fname .. ": media.codecs must be a list such as { \"PCMU\", \"PCMA\" }", level)
  end
  local list = {}
  for i, c in ipairs(codecs) do
    local name = type(c) == "string" and c:upper():gsub("/8000$", "")
    if not CODECS[name] then
      error(fname .. ": media.codecs[" .. i .. "]: PCMU or PCMA expected", level)
    end
    list[i] = name
  end
  local dtmf = v.dtmf or "auto"
  if not DTMF_MODES[dtmf] then
    error(fname .. ': media.dtmf must be "auto", "rfc4733", "info" or "inband"', level)
  end
  local pt = v.dtmf_pt or 101
  if type(pt) ~= "number" or pt < 96 or pt > 127 or pt % 1 ~= 0 then
    error(fname .. ": media.dtmf_pt must be a dynamic payload type (96-127)", level)
  end
  return { codecs = list, dtmf = dtmf, dtmf_pt = pt }
end
M.call_options = call_options

-- ------------------------------------------------------------------ streams

-- open(agent, v, fname, level) -> m | nil, err, code: a new stream for a call
function M.open(agent, v, fname, level)
  local o = call_options(v, fname, level + 1)
  local cfg = state(agent).media or {}
  local address = cfg.address
  if not address then
    local t = agent:transports()[1]
    address = t and tostring(t.host):gsub("^%[(.*)%]$", "%1") or "127.0.0.1"
    if address == "0.0.0.0" or address == "::" then address = "127.0.0.1" end
  end
  local ports = cfg.ports or DEFAULT_PORTS
  local rtp, err = M.open_rtp{ address = address, port_min = ports[1], port_max = ports[2] }
  if not rtp then return nil, "cannot open an RTP stream: " .. tostring(err), "media" end
  local m = { rtp = rtp, agent = agent, address = address, port = rtp:local_port(),
    codecs = o.codecs, dtmf = o.dtmf, dtmf_pt = o.dtmf_pt, prompts = cfg.prompts,
    buffer = {}, seq = 0, recent = {}, waiters = setmetatable({}, { __mode = "k" }),
    direction = "sendrecv" }
  streams[rtp] = m
  return m
end

-- wakes every verb waiting on m
local function wake_all(m)
  local list = {}
  for w in pairs(m.waiters) do list[#list + 1] = w end
  for _, w in ipairs(list) do
    if w.slot then dispatcher.fill(w.slot, true) end
  end
end

-- close(m): the stream ends (dialog over, call failed); waiting verbs return "hangup"
function M.close(m)
  if not m or m.closed then return end
  m.closed = true
  if m.peer then
    m.peer.peer = nil
    m.peer = nil
  end
  streams[m.rtp] = nil
  m.rtp:close()
  wake_all(m)
end

-- of(d) -> m | nil: the media of a dialog
function M.of(d)
  local st = state(d, false)
  return st and st.media
end

-- ------------------------------------------------------------------ SDP

local function codec_caps(m)
  local caps = {}
  for _, c in ipairs(m.codecs) do caps[#caps + 1] = c .. "/8000" end
  caps[#caps + 1] = "telephone-event/8000"
  return caps
end

-- offer(m) -> SDP string: our offer (first call, or a re-offer with the version bumped)
function M.offer(m)
  local formats, rtpmap = {}, {}
  for _, c in ipairs(m.codecs) do
    local pt = tostring(CODECS[c])
    formats[#formats + 1] = pt
    rtpmap[pt] = { encoding = c, clock_rate = 8000 }
  end
  local te = tostring(m.dtmf_pt)
  formats[#formats + 1] = te
  rtpmap[te] = { encoding = "telephone-event", clock_rate = 8000 }
  local id = ("%d%03d"):format(os.time(), math.random(0, 999))
  local t = { origin = { username = "-", sess_id = id, sess_version = id, address = m.address },
    name = "luasip", connection = { address = m.address }, times = { { start = 0, stop = 0 } },
    media = { { media = "audio", port = m.port, proto = "RTP/AVP", formats = formats,
      rtpmap = rtpmap, fmtp = { [te] = "0-16" }, ptime = 20, direction = m.direction } } }
  return sdp.build(t)
end

local function first_audio(s)
  for i, md in ipairs(s.media) do
    if md.media == "audio" and md.port ~= 0 then return md, i end
  end
end

local BITS = { sendrecv = 3, sendonly = 1, recvonly = 2, inactive = 0 }
local NAMES = { [3] = "sendrecv", [1] = "sendonly", [2] = "recvonly", [0] = "inactive" }

-- apply(m, local_sdp, remote_sdp) -> true | nil, err, 488: points the stream at the session
-- settled by an offer/answer exchange (either side's)
function M.apply(m, local_sdp, remote_sdp)
  if m.closed then return true end
  local l, r = sdp.parse(local_sdp or ""), sdp.parse(remote_sdp or "")
  if not l or not r then return nil, "488 Not Acceptable Here (bad SDP)", 488 end
  local lm, i = first_audio(l)
  local rm = lm and r.media[i]
  if not lm or not rm or rm.media ~= "audio" or rm.port == 0 then
    return nil, "488 Not Acceptable Here (no audio stream)", 488
  end
  local mine, recv, te_recv = {}, {}, nil
  for _, c in ipairs(sdp.codecs(lm)) do
    local enc = (c.encoding or ""):upper()
    if CODECS[enc] then
      mine[enc] = true
      recv[tonumber(c.pt)] = enc
    elseif enc == "TELEPHONE-EVENT" and c.clock_rate == 8000 then
      te_recv = te_recv or tonumber(c.pt)
    end
  end
  local send_pt, send_codec, te_send
  for _, c in ipairs(sdp.codecs(rm)) do
    local enc = (c.encoding or ""):upper()
    if mine[enc] and not send_pt then
      send_pt, send_codec = tonumber(c.pt), enc
    elseif enc == "TELEPHONE-EVENT" and c.clock_rate == 8000 then
      te_send = te_send or tonumber(c.pt)
    end
  end
  if not send_pt then return nil, "488 Not Acceptable Here (no common codec)", 488 end
  if not te_recv then te_send = nil end
  -- direction from our side: we send if we may and they receive, and the other way round
  local lb = BITS[lm.direction] or 3
  local rb = BITS[rm.direction] or 3
  local c = rm.connection or r.connection
  local held = c and (c.address == "0.0.0.0" or c.address == "::")
  if held then rb = rb % 2 end
  local d = 0
  if lb % 2 == 1 and rb >= 2 then d = d + 1 end
  if lb >= 2 and rb % 2 == 1 then d = d + 2 end
  m.direction_now = NAMES[d]
  if c and not held then m.rtp:set_remote(c.address, rm.port) end
  m.remote_address, m.remote_port = c and c.address, rm.port
  m.send_pt, m.send_codec, m.te_send_pt, m.te_recv_pt = send_pt, send_codec, te_send, te_recv
  local inband = m.dtmf == "inband" or (m.dtmf == "auto" and not te_send)
  m.rtp:set_codecs{ send_pt = send_pt, send_codec = send_codec, recv = recv,
    te_send_pt = te_send, te_recv_pt = te_recv, direction = NAMES[d], inband = inband }
  m.local_sdp, m.remote_sdp = local_sdp, remote_sdp
  return true
end

-- answer(m, offer) -> our answer (applied) | nil, err, code (488: no common codec)
function M.answer(m, offer)
  if not offer or offer == "" then
    -- no offer (an INVITE without SDP): we offer in the 2xx, the ACK answers
    return M.offer(m), "offer"
  end
  local ans, err, code = sdp.answer(offer, { address = m.address, previous = m.local_sdp,
    media = { audio = { port = m.port, codecs = codec_caps(m), ptime = 20 } } })
  if not ans then return nil, err, code end
  local ok, aerr, acode = M.apply(m, ans, offer)
  if not ok then return nil, aerr, acode end
  return ans
end

-- attach(m, d): the stream is the dialog's (closed when it ends)
function M.attach(m, d)
  local st = state(d)
  st.media = m
  m.dialog = d
  if require("luasip.dialog").is_ended(d) then M.close(m) end
  return d
end

-- settled(d, local_sdp, remote_sdp): a re-INVITE or UPDATE exchange completed (luasip.call)
function M.settled(d, local_sdp, remote_sdp)
  local m = M.of(d)
  if not m or m.closed or not local_sdp or not remote_sdp then return end
  local ok, err = M.apply(m, local_sdp, remote_sdp)
  if not ok then dispatcher.log("warn", "media: session not applied: " .. tostring(err)) end
end

-- refresh(d, req) -> answer | nil, err, code: the answer to an in-dialog offer on a media call
function M.refresh(d, offer)
  local m = M.of(d)
  if m.closed then return nil, "call ended", 488 end
  local saved = m.local_sdp
  local ans, err, code = M.answer(m, offer)
  if not ans then
    m.local_sdp = saved
    return nil, err, code
  end
  return ans
end

-- ------------------------------------------------------------------ digits

local DIGIT_OK = "^[0-9%*#A-Da-d]$"

-- the digit d (from source) enters the call's buffer: once per press, woken verbs see it
local function digit_in(m, d, source, ms)
  if m.closed then return end
  d = d:upper()
  local cls = source == "info" and "info" or "rtp"
  local t = now()
  local recent = m.recent
  for i = #recent, 1, -1 do
    if t - recent[i].t > DEDUP_WINDOW then table.remove(recent, i) end
  end
  for _, r in ipairs(recent) do
    if not r.matched and r.cls ~= cls and r.digit == d then
      r.matched = true     -- the same press by the other way: counted already
      return
    end
  end
  recent[#recent + 1] = { digit = d, cls = cls, t = t }
  m.seq = m.seq + 1
  local buf = m.buffer
  buf[#buf + 1] = { digit = d, seq = m.seq, source = source, ms = ms }
  if #buf > BUFFER_MAX then table.remove(buf, 1) end
  if m.on_dtmf then
    local ok, err = pcall(m.on_dtmf, m.dialog, d, source)
    if not ok then dispatcher.log("error", "on_dtmf failed: " .. tostring(err)) end
  end
  if m.peer and source == "info" and not m.peer.closed then
    -- bridged: an INFO digit goes on to the other leg (RFC 4733 events pass in C)
    local other = m.peer
    local mode = other.te_send_pt and "rfc4733" or "inband"
    other.rtp:send_dtmf(d, { mode = mode })
  end
  wake_all(m)
end
M.digit_in = digit_in

-- INFO with application/dtmf-relay ("Signal=5\r\nDuration=160") or application/dtmf ("5")
local function info_digit(req)
  local ct = (req.content_type or ""):lower()
  local body = req.body or ""
  if ct == "application/dtmf-relay" then
    local sig = body:match("[Ss]ignal%s*=%s*([%w%*#]+)")
    local dur = tonumber(body:match("[Dd]uration%s*=%s*(%d+)") or "")
    return sig, dur
  elseif ct == "application/dtmf" then
    return body:match("^%s*([%w%*#]+)")
  end
end

class.hook("luasip.dialog", "info", function(d, req)
  local m = M.of(d)
  if not m or req:answered() then return end
  local digit, dur = info_digit(req)
  if not digit then return end
  if digit == "10" then digit = "*" elseif digit == "11" then digit = "#" end
  if not digit:match(DIGIT_OK) then
    req:reply(400, "Bad DTMF")
    return
  end
  req:reply(200)
  digit_in(m, digit, "info", dur)
end)

class.hook("luasip.dialog", "ended", function(d)
  local m = M.of(d)
  if not m then return end
  if m.inviting and m.dialog == d then
    -- an early dialog of our INVITE that another fork's response replaced: the stream
    -- is the INVITE's (agent:invite closes it when the INVITE fails)
    state(d).media, m.dialog = nil, nil
    return
  end
  M.close(m)
end)

-- take(m, after) -> the first buffered digit pressed after seq `after` (any when nil), removed
local function take(m, after, set)
  for i, e in ipairs(m.buffer) do
    if (not after or e.seq > after) and (not set or set:find(e.digit, 1, true)) then
      table.remove(m.buffer, i)
      return e.digit, e
    end
  end
end

-- peek(m, after, set) -> the first digit pressed after `after` that is in set (kept)
local function peek(m, after, set)
  for _, e in ipairs(m.buffer) do
    if e.seq > after and (set == true or set:find(e.digit, 1, true)) then return e.digit end
  end
end

-- ------------------------------------------------------------------ events from C

dispatcher.on_event("media", function(rtp)
  local m = rtp and streams[rtp]
  if not m then return end
  local evs = rtp:events()
  for _, ev in ipairs(evs) do
    local kind = ev[1]
    if kind == "digit" then
      digit_in(m, ev.digit, ev.source or "rfc4733", ev.ms)
    elseif kind == "latched" then
      m.latched = { address = ev.address, port = ev.port }
    elseif kind == "output_done" or kind == "record_done" or kind == "dtmf_done" then
      local done = m.done
      if not done then
        done = {}
        m.done = done
      end
      done[ev.id] = ev
      wake_all(m)
    end
    if m.closed then return end
  end
end)

-- ------------------------------------------------------------------ waiting verbs

local NO_MEDIA = ": this call has no media"

-- media of dialog self for verb fname, raising when it has none
local function media_of(self, fname, level)
  local st = state(self, false)
  local m = st and st.media
  if not m then error(fname .. NO_MEDIA, (level or 2) + 1) end
  return m
end

-- begin(m, fname) -> w: a verb waits on m (the verb has checked it runs in a coroutine)
local function begin(m, fname)
  local w = { fname = fname }
  m.waiters[w] = true
  return w
end

local function finish(m, w)
  m.waiters[w] = nil
end

-- pause(m, w, deadline) -> nil | "hangup" | "stopped" | "timeout": waits for the next event
-- of the call (a digit, an output ending), the deadline (now() seconds) or the end
local function pause(m, w, deadline)
  if m.closed then return "hangup" end
  if w.stopped then return "stopped" end
  local timeout
  if deadline then
    timeout = deadline - now()
    if timeout <= 0 then return "timeout" end
  end
  w.slot = dispatcher.new_slot(w.fname)
  dispatcher.wait(w.slot, timeout)
  w.slot = nil
  if m.closed then return "hangup" end
  if w.stopped then return "stopped" end
  if deadline and deadline - now() <= 0.0005 then return "timeout" end
end

-- done_event(m, id) -> the output_done/record_done/dtmf_done event of id (consumed)
local function done_event(m, id)
  local done = m.done
  local ev = done and done[id]
  if ev then done[id] = nil end
  return ev
end

local function barge_set(b)
  if b == true then return true end
  if b == false or b == nil or b == "" then return nil end
  return b
end

-- run_output(m, w, id, barge, deadline) -> reason, ms, digit: waits for output id to end;
-- a barge-in digit stops it (and stays in the buffer)
local function run_output(m, w, id, barge, deadline)
  local t0, start = now(), m.seq
  while true do
    local ev = done_event(m, id)
    if ev then
      local reason = ev.reason
      if reason == "error" then return nil, ev.error or "output failed", "error" end
      return reason, ev.ms or 0
    end
    local d = barge and peek(m, start, barge)
    if d then
      m.rtp:stop_output()
      -- the engine reports the stop on its next tick: wait for it (bounded)
      local limit = now() + 0.5
      while not m.closed do
        local e2 = done_event(m, id)
        if e2 then return "digit", e2.ms or 0, d end
        if pause(m, w, limit) then break end
      end
      return "digit", math.floor((now() - t0) * 1000), d
    end
    local why = pause(m, w, deadline)
    if why then
      if why ~= "hangup" then m.rtp:stop_output() end
      if why == "timeout" then
        local e3 = done_event(m, id)
        if e3 then return "done", e3.ms or 0 end
        return "done", math.floor((now() - t0) * 1000)
      end
      return why, math.floor((now() - t0) * 1000)
    end
  end
end

local PLAY_OPTIONS = { barge_in = true, loop = true, offset_ms = true }

local function check_barge(b, fname, level)
  if b ~= nil and type(b) ~= "boolean" and type(b) ~= "string" then
    error(fname .. ": barge_in must be true, false or a string of digits", level + 1)
  end
end

local function check_paths(paths, fname, level)
  if type(paths) == "string" then return { paths } end
  if type(paths) ~= "table" or #paths == 0 then
    error(fname .. ": file name or list of file names expected", level + 1)
  end
  for i, p in ipairs(paths) do
    if type(p) ~= "string" then error(fname .. ": files[" .. i .. "] must be a string", level + 1) end
  end
  return paths
end

-- plays paths (a list) on m; -> reason, ms, digit | nil, err, "error"
local function play_list(m, w, paths, opts)
  if m.closed then return "hangup", 0 end
  local id, err = m.rtp:play(paths, { loop = opts.loop, offset_ms = opts.offset_ms })
  if not id then return nil, err, "error" end
  return run_output(m, w, id, barge_set(opts.barge_in))
end

-- dialog:play(file | files [, { barge_in =, loop =, offset_ms = }]) -> reason, ms [, digit]
local function play(self, paths, opts)
  local fname = "luasip.dialog:play"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  paths = check_paths(paths, fname, 2)
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, PLAY_OPTIONS, fname)
  check_barge(opts.barge_in, fname, 2)
  local w = begin(m, fname)
  local r1, r2, r3 = play_list(m, w, paths, opts)
  finish(m, w)
  return r1, r2, r3
end

-- ------------------------------------------------------------------ collect

local COLLECT_OPTIONS = { min = true, max = true, timeout = true, inter_digit = true,
  terminators = true, prompt = true, tries = true, invalid_prompt = true, valid = true }

local function anchored(p)
  if p:sub(1, 1) ~= "^" then p = "^" .. p end
  if p:sub(-1) ~= "$" or p:sub(-2) == "%$" then p = p .. "$" end
  return p
end

local function is_valid(valid, digits)
  if valid == nil then return true end
  if type(valid) == "function" then return valid(digits) and true or false end
  return digits:find(anchored(valid)) ~= nil
end

-- one try: -> digits, reason, terminator | nil, reason
local function collect_once(m, w, o)
  local digits = ""
  if o.prompt and #m.buffer == 0 then
    local r, ms_or_err, code = play_list(m, w, o.prompt, { barge_in = true })
    if not r then return nil, ms_or_err, code end
    if r == "hangup" or r == "stopped" then return nil, r end
  end
  local deadline = now() + o.timeout
  while true do
    local d = take(m)
    if d then
      if o.terminators:find(d, 1, true) then return digits, "terminator", d end
      digits = digits .. d
      if #digits >= o.max then return digits, "max" end
      deadline = now() + o.inter_digit
    else
      local why = pause(m, w, deadline)
      if why == "timeout" then return digits, "timeout" end
      if why then return nil, why end
    end
  end
end

local function number_opt(v, default, fname, name, min, level)
  if v == nil then return default end
  if type(v) ~= "number" or v < min then
    error(("%s: %s must be a number >= %s"):format(fname, name, tostring(min)), level + 1)
  end
  return v
end

-- dialog:collect{ min =, max =, timeout =, inter_digit =, terminators =, prompt =, tries =,
--   invalid_prompt =, valid = } -> digits, reason [, terminator] | nil, reason | nil, err, "error"
local function collect(self, opts)
  local fname = "luasip.dialog:collect"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, COLLECT_OPTIONS, fname)
  local o = {}
  o.min = number_opt(opts.min, 1, fname, "min", 0, 2)
  o.max = number_opt(opts.max, math.max(1, o.min), fname, "max", 1, 2)
  if o.max < o.min then error(fname .. ": max must be >= min", 2) end
  o.timeout = number_opt(opts.timeout, 5, fname, "timeout", 0, 2)
  o.inter_digit = number_opt(opts.inter_digit, 3, fname, "inter_digit", 0, 2)
  o.tries = number_opt(opts.tries, 1, fname, "tries", 1, 2)
  o.terminators = opts.terminators == nil and "#" or opts.terminators
  if type(o.terminators) ~= "string" then error(fname .. ": terminators must be a string", 2) end
  if opts.prompt ~= nil then o.prompt = check_paths(opts.prompt, fname, 2) end
  local invalid = opts.invalid_prompt ~= nil and check_paths(opts.invalid_prompt, fname, 2)
  if opts.valid ~= nil and type(opts.valid) ~= "string" and type(opts.valid) ~= "function" then
    error(fname .. ": valid must be a pattern or a function", 2)
  end
  local w = begin(m, fname)
  local digits, reason, term
  for try = 1, o.tries do
    digits, reason, term = collect_once(m, w, o)
    if not digits then break end
    if #digits >= o.min and (#digits > 0 or reason ~= "timeout") and is_valid(opts.valid, digits) then
      break
    end
    if #digits > 0 or reason == "terminator" then reason = "invalid" end
    digits, term = nil, nil
    if try < o.tries and invalid then
      local r, e, code = play_list(m, w, invalid, { barge_in = true })
      if not r then digits, reason, term = nil, e, code break end
      if r == "hangup" or r == "stopped" then reason = r break end
    end
  end
  finish(m, w)
  return digits, reason, term
end

-- ------------------------------------------------------------------ record, tone, silence

local TONES = {
  beep = { freqs = { 1000 }, ms = 250 },
  ring = { freqs = { 440, 480 }, on_ms = 2000, off_ms = 4000 },
  busy = { freqs = { 480, 620 }, on_ms = 500, off_ms = 500 },
  dial = { freqs = { 350, 440 } },
}
M.TONES = TONES

local RECORD_OPTIONS = { max = true, silence = true, terminators = true, beep = true,
  append = true, silence_level = true }

-- dialog:record(path [, { max = 60, silence = 3, terminators = "#", beep = true }])
--   -> reason, ms [, digit] | nil, err, "error"
local function record(self, path, opts)
  local fname = "luasip.dialog:record"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if type(path) ~= "string" then error(fname .. ": file name expected", 2) end
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, RECORD_OPTIONS, fname)
  local max = opts.max == nil and 60 or opts.max
  if max ~= false then max = number_opt(max, 60, fname, "max", 0, 2) end
  local silence = opts.silence == nil and 3 or opts.silence
  if silence ~= false then silence = number_opt(silence, 3, fname, "silence", 0, 2) end
  local terms = opts.terminators == nil and "#" or opts.terminators
  if type(terms) ~= "string" then error(fname .. ": terminators must be a string", 2) end
  local w = begin(m, fname)
  local function out(...) finish(m, w) return ... end
  if opts.beep ~= false then
    if m.closed then return out("hangup", 0) end
    local id = m.rtp:tone(TONES.beep)
    local r = run_output(m, w, id)
    if r == "hangup" or r == "stopped" then return out(r, 0) end
  end
  if m.closed then return out("hangup", 0) end
  local id, err = m.rtp:record(path, { max_ms = max and math.floor(max * 1000) or nil,
    silence_ms = silence and silence > 0 and math.floor(silence * 1000) or nil,
    silence_level = opts.silence_level, append = opts.append or false })
  if not id then return out(nil, err, "error") end
  local t0, start = now(), m.seq
  while true do
    local ev = done_event(m, id)
    if ev then
      if ev.reason == "error" then return out(nil, ev.error or "record failed", "error") end
      return out(ev.reason, ev.ms or 0)
    end
    local d = terms ~= "" and peek(m, start, terms)
    if d then
      take(m, start, d)
      m.rtp:stop_record()
      local limit = now() + 0.5
      while not m.closed do
        local e2 = done_event(m, id)
        if e2 then return out("terminator", e2.ms or 0, d) end
        if pause(m, w, limit) then break end
      end
      return out("terminator", math.floor((now() - t0) * 1000), d)
    end
    local why = pause(m, w)
    if why then
      if why ~= "hangup" then m.rtp:stop_record() end
      return out(why, math.floor((now() - t0) * 1000))
    end
  end
end

local TONE_OPTIONS = { ms = true, barge_in = true }

-- dialog:tone(name | { freqs =, on_ms =, off_ms =, ms =, level = } [, { ms =, barge_in = }])
--   -> reason, ms [, digit]
local function tone(self, spec, opts)
  local fname = "luasip.dialog:tone"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if type(spec) == "string" then
    local t = TONES[spec]
    if not t then error(fname .. ": unknown tone '" .. spec .. "' (beep, ring, busy, dial)", 2) end
    spec = t
  elseif type(spec) ~= "table" or type(spec.freqs) ~= "table" or #spec.freqs < 1 then
    error(fname .. ": tone name or { freqs = { f1 [, f2] }, ... } expected", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, TONE_OPTIONS, fname)
  check_barge(opts.barge_in, fname, 2)
  local s = copy(spec)
  if opts.ms then s.ms = number_opt(opts.ms, nil, fname, "ms", 0, 2) end
  local w = begin(m, fname)
  if m.closed then
    finish(m, w)
    return "hangup", 0
  end
  local id, err = m.rtp:tone(s)
  if not id then
    finish(m, w)
    return nil, err, "error"
  end
  local r1, r2, r3 = run_output(m, w, id, barge_set(opts.barge_in))
  finish(m, w)
  return r1, r2, r3
end

-- dialog:silence(seconds [, { barge_in = }]) -> reason, ms [, digit]
local function silence(self, seconds, opts)
  local fname = "luasip.dialog:silence"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if type(seconds) ~= "number" or seconds < 0 then
    error(fname .. ": seconds must be a number >= 0", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, { barge_in = true }, fname)
  check_barge(opts.barge_in, fname, 2)
  local w = begin(m, fname)
  if m.closed then
    finish(m, w)
    return "hangup", 0
  end
  local id = m.rtp:silence(math.floor(seconds * 1000))
  local r1, r2, r3 = run_output(m, w, id, barge_set(opts.barge_in))
  finish(m, w)
  return r1, r2, r3
end

-- dialog:echo([{ terminators = "#", timeout = }]) -> reason, ms [, digit]: what the caller
-- says comes back (an echo test) until a terminator, the timeout, stop() or hangup
local function echo(self, opts)
  local fname = "luasip.dialog:echo"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, { terminators = true, timeout = true }, fname)
  local terms = opts.terminators == nil and "#" or opts.terminators
  if type(terms) ~= "string" then error(fname .. ": terminators must be a string", 2) end
  local timeout = opts.timeout and number_opt(opts.timeout, nil, fname, "timeout", 0, 2)
  local w = begin(m, fname)
  if m.closed then
    finish(m, w)
    return "hangup", 0
  end
  local id, start = m.rtp:echo(), m.seq
  local r1, r2, r3 = run_output(m, w, id, barge_set(terms),
    timeout and now() + timeout or nil)
  if r1 == "digit" then
    take(m, start, r3)
    r1 = "terminator"
  elseif r1 == "done" and timeout then
    r1 = "timeout"
  end
  finish(m, w)
  return r1, r2, r3
end

-- ------------------------------------------------------------------ say

local function prompt_dir(m, opts)
  local dir = opts and opts.prompts or m.prompts or M.prompts
  if not dir then return nil end
  return (dir:gsub("/+$", ""))
end

local DIGIT_FILES = { ["*"] = "star", ["#"] = "pound" }

-- the files that say the digits of s: digits/<d>.wav, star, pound
function M.digit_files(dir, s)
  local list = {}
  for ch in s:gmatch(".") do
    list[#list + 1] = dir .. "/digits/" .. (DIGIT_FILES[ch] or ch:upper()) .. ".wav"
  end
  return list
end

-- the files that say n in English: 0-19, tens, hundred, thousand, million
function M.number_files(dir, n)
  local names = {}
  local function below_1000(x)
    local h = math.floor(x / 100)
    local rest = x % 100
    if h > 0 then
      names[#names + 1] = tostring(h)
      names[#names + 1] = "hundred"
    end
    if rest > 0 then
      if rest < 20 then
        names[#names + 1] = tostring(rest)
      else
        names[#names + 1] = tostring(math.floor(rest / 10) * 10)
        if rest % 10 > 0 then names[#names + 1] = tostring(rest % 10) end
      end
    end
  end
  if n == 0 then
    names[1] = "0"
  else
    local millions = math.floor(n / 1000000)
    local thousands = math.floor(n / 1000) % 1000
    local rest = n % 1000
    if millions > 0 then
      below_1000(millions)
      names[#names + 1] = "million"
    end
    if thousands > 0 then
      below_1000(thousands)
      names[#names + 1] = "thousand"
    end
    below_1000(rest)
  end
  local list = {}
  for i, name in ipairs(names) do list[i] = dir .. "/digits/" .. name .. ".wav" end
  return list
end

local SAY_OPTIONS = { barge_in = true, prompts = true }

local function say_prep(self, fname, opts)
  local m = media_of(self, fname, 3)
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 3) end
  opts = opts or {}
  class.check_options(opts, SAY_OPTIONS, fname, 3)
  check_barge(opts.barge_in, fname, 3)
  if opts.prompts ~= nil and type(opts.prompts) ~= "string" then
    error(fname .. ": prompts must be a directory name", 3)
  end
  local dir = prompt_dir(m, opts)
  if not dir then
    error(fname .. ": no prompt set (set sip.media.prompts, the agent's media.prompts or prompts =)", 3)
  end
  return m, opts, dir
end

-- dialog:say_digits(digits [, { barge_in =, prompts = }]) -> as play
local function say_digits(self, s, opts)
  local fname = "luasip.dialog:say_digits"
  if type(s) == "number" and s >= 0 and s % 1 == 0 then s = ("%d"):format(s) end
  if type(s) ~= "string" or not s:match("^[0-9%*#]+$") then
    error(fname .. ": a string of digits 0-9, * and # expected", 2)
  end
  local m, o, dir = say_prep(self, fname, opts)
  dispatcher.current(fname)
  local w = begin(m, fname)
  local r1, r2, r3 = play_list(m, w, M.digit_files(dir, s), o)
  finish(m, w)
  return r1, r2, r3
end

-- dialog:say_number(n [, { barge_in =, prompts = }]) -> as play (English: "forty two")
local function say_number(self, n, opts)
  local fname = "luasip.dialog:say_number"
  if type(n) == "string" then n = tonumber(n) end
  if type(n) ~= "number" or n < 0 or n % 1 ~= 0 or n >= 1e9 then
    error(fname .. ": an integer 0-999999999 expected", 2)
  end
  local m, o, dir = say_prep(self, fname, opts)
  dispatcher.current(fname)
  local w = begin(m, fname)
  local r1, r2, r3 = play_list(m, w, M.number_files(dir, n), o)
  finish(m, w)
  return r1, r2, r3
end

-- ------------------------------------------------------------------ digits in and out

local SEND_OPTIONS = { mode = true, ms = true, gap = true }
local SEND_MODES = { auto = true, rfc4733 = true, info = true, inband = true }

-- dialog:send_dtmf(digits [, { mode = "auto" | "rfc4733" | "info" | "inband", ms = 100, gap = 80 }])
--   -> "done" | "hangup" | "stopped" | nil, err, code
local function send_dtmf(self, digits, opts)
  local fname = "luasip.dialog:send_dtmf"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if type(digits) ~= "string" or not digits:match("^[0-9%*#A-Da-d]+$") then
    error(fname .. ": digits 0-9, *, #, A-D expected", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, SEND_OPTIONS, fname)
  local mode = opts.mode or (m.dtmf ~= "auto" and m.dtmf) or "auto"
  if not SEND_MODES[mode] then
    error(fname .. ': mode must be "auto", "rfc4733", "info" or "inband"', 2)
  end
  local ms = number_opt(opts.ms, 100, fname, "ms", 40, 2)
  local gap = number_opt(opts.gap, 80, fname, "gap", 0, 2)
  if mode == "auto" then mode = m.te_send_pt and "rfc4733" or "info" end
  local w = begin(m, fname)
  local function out(...) finish(m, w) return ... end
  if m.closed then return out("hangup") end
  if mode == "info" then
    for ch in digits:gmatch(".") do
      local res, err, code = self:request("INFO", { content_type = "application/dtmf-relay",
        body = ("Signal=%s\r\nDuration=%d\r\n"):format(ch:upper(), ms) })
      if m.closed then return out("hangup") end
      if w.stopped then return out("stopped") end
      if not res then return out(nil, err, code) end
      if gap > 0 then
        local why = pause(m, w, now() + gap / 1000)
        if why and why ~= "timeout" then return out(why) end
      end
    end
    return out("done")
  end
  local id, err = m.rtp:send_dtmf(digits, { ms = ms, gap = gap, mode = mode })
  if not id then return out(nil, err, "error") end
  while true do
    if done_event(m, id) then return out("done") end
    local why = pause(m, w)
    if why then return out(why) end
  end
end

-- dialog:wait_digit([timeout]) -> digit | nil, "timeout" | "hangup" | "stopped"
local function wait_digit(self, timeout)
  local fname = "luasip.dialog:wait_digit"
  local m = media_of(self, fname)
  dispatcher.current(fname)
  if timeout ~= nil and (type(timeout) ~= "number" or timeout < 0) then
    error(fname .. ": timeout must be a number >= 0", 2)
  end
  local w = begin(m, fname)
  local deadline = timeout and now() + timeout
  while true do
    local d = take(m)
    if d then
      finish(m, w)
      return d
    end
    local why = pause(m, w, deadline)
    if why then
      finish(m, w)
      return nil, why
    end
  end
end

-- dialog:flush_digits() -> the digits dropped from the type-ahead buffer
local function flush_digits(self)
  local m = media_of(self, "luasip.dialog:flush_digits")
  local s = {}
  for i, e in ipairs(m.buffer) do s[i] = e.digit end
  m.buffer = {}
  return table.concat(s)
end

-- dialog:on_dtmf(fn(dialog, digit, source) | nil) -> previous: sees every digit (runs
-- inline, protected; it must not wait)
local function on_dtmf(self, fn)
  local fname = "luasip.dialog:on_dtmf"
  local m = media_of(self, fname)
  if fn ~= nil and type(fn) ~= "function" then error(fname .. ": function or nil expected", 2) end
  local old = m.on_dtmf
  m.on_dtmf = fn
  return old
end

-- dialog:stop() -> true: the verbs waiting on this call return "stopped"
local function stop(self)
  local m = media_of(self, "luasip.dialog:stop")
  if m.closed then return true end
  local list = {}
  for w in pairs(m.waiters) do list[#list + 1] = w end
  for _, w in ipairs(list) do w.stopped = true end
  m.rtp:stop_output()
  m.rtp:stop_record()
  wake_all(m)
  return true
end

-- dialog:hangup() -> true | nil, err, code: BYE (waiting verbs return "hangup")
local function hangup(self)
  media_of(self, "luasip.dialog:hangup")
  if self:state() == "terminated" then return true end
  return self:bye()
end

-- dialog:bridge(other) -> true | nil, err, code: media of both calls flows between them (in C)
local function bridge(self, other)
  local fname = "luasip.dialog:bridge"
  local m = media_of(self, fname)
  local ok, om = pcall(M.of, other)
  if not ok or type(other) ~= "userdata" then error(fname .. ": luasip.dialog expected", 2) end
  if not om then error(fname .. ": the other call has no media", 2) end
  if om == m then error(fname .. ": a call cannot be bridged to itself", 2) end
  if m.closed or om.closed then return nil, "call ended", "terminated" end
  local r, err = class.call(fname, 2, m.rtp.bridge, m.rtp, om.rtp)
  if not r then return nil, err, "error" end
  -- the engine unbridged either stream's previous peer: so do we
  for _, x in ipairs{ m, om } do
    if x.peer and x.peer.peer == x then x.peer.peer = nil end
  end
  m.peer, om.peer = om, m
  return true
end

-- dialog:unbridge() -> true
local function unbridge(self)
  local m = media_of(self, "luasip.dialog:unbridge")
  if m.peer then
    if not m.closed then m.rtp:unbridge() end
    m.peer.peer = nil
    m.peer = nil
  end
  return true
end

-- dialog:media_stats() -> the stream's counters (rtp:stats()) and its settings
local function media_stats(self)
  local m = media_of(self, "luasip.dialog:media_stats")
  local s = {}
  if not m.closed then s = copy(m.rtp:stats()) end
  s.closed = m.closed or false
  s.local_address, s.local_port = m.address, m.port
  s.remote_address, s.remote_port = m.remote_address, m.remote_port
  s.send_codec, s.send_pt = m.send_codec, m.send_pt
  s.te_send_pt, s.te_recv_pt = m.te_send_pt, m.te_recv_pt
  s.direction = m.direction_now
  s.dtmf = m.dtmf
  s.bridged = m.peer ~= nil
  return s
end

-- dialog:has_media() -> bool
local function has_media(self)
  return M.of(self) ~= nil
end

local VERBS = { play = play, collect = collect, record = record, tone = tone,
  silence = silence, echo = echo, say_digits = say_digits, say_number = say_number,
  send_dtmf = send_dtmf, wait_digit = wait_digit, flush_digits = flush_digits,
  on_dtmf = on_dtmf, stop = stop, hangup = hangup, bridge = bridge, unbridge = unbridge,
  media_stats = media_stats, has_media = has_media }
local names = {}
for k in pairs(VERBS) do names[#names + 1] = k end
table.sort(names)
for _, k in ipairs(names) do class.extend("luasip.dialog", k, VERBS[k]) end

-- ------------------------------------------------------------------ early media (UAS)

local PROGRESS_OPTIONS = { media = true, status = true, reason = true, headers = true,
  reliable = true, timeout = true }

-- req:progress{ media = true | {...}, status = 183, reliable = false } -> dialog | nil, err, code:
-- a 18x with our SDP answer; the early dialog it returns plays before the answer, and
-- req:answer() then answers with the same stream
function M.progress(req, opts)
  local fname = "luasip.request:progress"
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  opts = opts or {}
  class.check_options(opts, PROGRESS_OPTIONS, fname)
  if req.method ~= "INVITE" then error(fname .. ": INVITE only", 2) end
  local status = opts.status or 183
  if type(status) ~= "number" or status < 101 or status > 199 then
    error(fname .. ": status must be 101-199", 2)
  end
  if opts.media == nil then error(fname .. ": media option expected", 2) end
  if not req.body or req.body == "" then
    return nil, "early media needs an offer in the INVITE", "no offer"
  end
  local request = require "luasip.request"
  local d, derr, dcode = request.early_dialog(req, true)
  if not d then return nil, derr, dcode end
  local m = M.of(d)
  if not m then
    local err, code
    m, err, code = M.open(req.agent, opts.media, fname, 2)
    if not m then return nil, err, code end
    local ans, aerr, acode = M.answer(m, req.body)
    if not ans then
      M.close(m)
      req:reply(acode or 488)
      return nil, aerr, acode
    end
    M.attach(m, d)
  end
  local ro = { headers = opts.headers, body = m.local_sdp, content_type = "application/sdp" }
  if opts.reliable then
    local sup = false
    for _, name in ipairs{ "Supported", "Require" } do
      for _, v in ipairs(req:headers(name)) do
        if v:lower():find("100rel", 1, true) then sup = true end
      end
    end
    if sup then
      ro.reliable, ro.timeout = true, opts.timeout
    end
  end
  local ok, err, code
  if opts.reason then ok, err, code = req:reply(status, opts.reason, ro)
  else ok, err, code = req:reply(status, ro) end
  if not ok then return nil, err, code end
  return d
end

class.extend("luasip.request", "progress", M.progress)

return M
