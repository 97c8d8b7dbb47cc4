-- A stand-in for the C class luasip.rtp (the contract in media-api.md), in Lua: streams
-- "send" to each other by port inside the process on a 20 ms tick, so the specs of the
-- verb layer (luasip.media) run without the engine and without timing noise.  Outputs end
-- after their length (a WAV's length from its header), digits sent by one stream arrive as
-- "digit" events on the stream its remote port names, recording writes nothing.
--   local F = require "spec.peers.fake_rtp"; F.install() ... F.uninstall()
local dispatcher = require "luasip.dispatcher"
local media = require "luasip.media"

local F = {}

local by_port, open = {}, {}
local next_port, next_id = 20000, 0
local ticker
local saved_open

local function id()
  next_id = next_id + 1
  return next_id
end

-- the length in ms of a 16-bit mono 8 kHz WAV (the data chunk's size)
local function wav_ms(path)
  local f = io.open(path, "rb")
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  local i = s:find("data", 13, true)
  if not i then return 0 end
  local b1, b2, b3, b4 = s:byte(i + 4, i + 7)
  local n = b1 + b2 * 256 + b3 * 65536 + b4 * 16777216
  return math.floor(n / 16)
end

local S = {}
S.__index = S

function S:local_port() return self.port end
function S:local_address() return self.address end
function S:set_remote(address, port) self.remote = { address, port } end
function S:set_codecs(t) self.codecs = t end

function S:push(ev)
  self.q[#self.q + 1] = ev
end

function S:end_output(reason)
  local o = self.output
  if not o then return end
  self.output = nil
  self:push{ "output_done", id = o.id, reason = reason, ms = o.played }
end

function S:start_output(kind, ms)
  self:end_output("stopped")
  local o = { id = id(), kind = kind, left = ms, played = 0 }
  self.output = o
  return o.id
end

function S:play(paths, _)
  if type(paths) == "string" then paths = { paths } end
  local total = 0
  for _, p in ipairs(paths) do
    local ms = wav_ms(p)
    if not ms then return nil, "cannot open " .. p .. ": No such file or directory" end
    total = total + ms
  end
  self.played = self.played or {}
  for _, p in ipairs(paths) do self.played[#self.played + 1] = p end
  return self:start_output("play", total)
end

function S:tone(t) return self:start_output("tone", t.ms) end
function S:silence(ms) return self:start_output("silence", ms) end
function S:echo() return self:start_output("echo", nil) end
function S:stop_output()
  self:end_output("stopped")
  return true
end

function S:send_dtmf(digits, o)
  o = o or {}
  local mode = o.mode or "rfc4733"
  if mode == "rfc4733" and not (self.codecs and self.codecs.te_send_pt) then
    return nil, "peer has no telephone-event"
  end
  local did = id()
  local at = 0
  for ch in digits:gmatch(".") do
    at = at + (o.ms or 100)
    self.dtmf[#self.dtmf + 1] = { digit = ch, at = at, mode = mode }
    at = at + (o.gap or 80)
  end
  self.dtmf[#self.dtmf + 1] = { done = did, at = at }
  self.dtmf_clock = 0
  return did
end

function S:record(path, o)
  local f = io.open(path, "wb")
  if not f then return nil, "cannot open " .. path end
  f:close()
  self.recording = { id = id(), max = o.max_ms, silence = o.silence_ms, ms = 0, quiet = 0 }
  return self.recording.id
end

function S:stop_record()
  local r = self.recording
  if r then
    self.recording = nil
    self:push{ "record_done", id = r.id, reason = "stopped", ms = r.ms }
  end
  return true
end

function S:bridge(other)
  self.bridged, other.bridged = other, self
  return true
end

function S:unbridge()
  if self.bridged then self.bridged.bridged = nil end
  self.bridged = nil
  return true
end

function S:events()
  local q = self.q
  self.q = {}
  return q
end

function S:stats()
  return { packets_sent = self.sent, packets_received = self.received, octets_sent = 0,
    octets_received = 0, lost = 0, jitter_ms = 0, strangers = 0, bad_packets = 0,
    ssrc_changes = 0, late_ticks = 0 }
end

function S:close()
  if self.closed then return true end
  self.closed = true
  if self.output then self.output = nil end
  if self.bridged then self:unbridge() end
  by_port[self.port] = nil
  open[self] = nil
  return true
end

local function peer(s)
  return s.remote and by_port[s.remote[2]]
end

local function direction(s)
  return s.codecs and s.codecs.direction or "sendrecv"
end

function S:tick()
  local p = peer(self)
  local can_send = direction(self) == "sendrecv" or direction(self) == "sendonly"
  if can_send and p then
    self.sent = self.sent + 1
    local pd = direction(p)
    if pd == "sendrecv" or pd == "recvonly" then p.received = p.received + 1 end
  end
  local o = self.output
  if o then
    o.played = o.played + 20
    if o.left and o.played >= o.left then self:end_output("done") end
  end
  if self.dtmf_clock then
    self.dtmf_clock = self.dtmf_clock + 20
    while self.dtmf[1] and self.dtmf[1].at <= self.dtmf_clock do
      local e = table.remove(self.dtmf, 1)
      if e.done then
        self:push{ "dtmf_done", id = e.done }
        self.dtmf_clock = nil
      elseif p and not p.closed then
        local ok = (e.mode == "inband" and p.codecs and p.codecs.inband)
          or (e.mode == "rfc4733" and p.codecs and p.codecs.te_recv_pt)
        if ok then p:push{ "digit", digit = e.digit, source = e.mode, ms = 100 } end
      end
    end
  end
  local r = self.recording
  if r then
    r.ms = r.ms + 20
    local talking = p and p.output and p.output.kind ~= "silence"
    r.quiet = talking and 0 or r.quiet + 20
    local reason = (r.max and r.ms >= r.max and "max") or (r.silence and r.quiet >= r.silence
      and "silence")
    if reason then
      self.recording = nil
      self:push{ "record_done", id = r.id, reason = reason, ms = r.ms }
    end
  end
end

local function tick()
  local list = {}
  for s in pairs(open) do list[#list + 1] = s end
  table.sort(list, function(a, b) return a.port < b.port end)
  for _, s in ipairs(list) do if not s.closed then s:tick() end end
  for _, s in ipairs(list) do
    if not s.closed and #s.q > 0 then dispatcher.dispatch("media", s) end
  end
  ticker = dispatcher.timer_in(0.02, tick)
end

function F.open(o)
  local s = setmetatable({ address = o.address, port = next_port, q = {}, dtmf = {},
    sent = 0, received = 0 }, S)
  next_port = next_port + 2
  by_port[s.port] = s
  open[s] = true
  F.last = s
  return s
end

-- streams still open (a spec checks that calls close theirs)
function F.open_count()
  local n = 0
  for _ in pairs(open) do n = n + 1 end
  return n
end

function F.install()
  saved_open = saved_open or media.open_rtp
  media.open_rtp = F.open
  if not ticker then ticker = dispatcher.timer_in(0.02, tick) end
end

function F.uninstall()
  media.open_rtp = saved_open
  if ticker then ticker:cancel() end
  ticker = nil
  for s in pairs(open) do s:close() end
end

return F
