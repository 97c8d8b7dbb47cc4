-- luasip.rtpengine: a client of rtpengine's control protocol "ng" (bencoded dictionaries
-- in UDP datagrams, each prefixed by a cookie and a space) for luasip coroutines, so a
-- proxy script relays media the way Kamailio's rtpengine module does: offer, answer,
-- delete, query, ping.  One connected UDP socket per rtpengine (luasip.stream in "udp"
-- mode, watched by the loop); each command waits in its coroutine for the reply with
-- its cookie, retransmitted every `timeout` seconds, then tried on the next server.
-- A server that failed is skipped for `down_for` seconds; a call sticks to the server
-- that took its offer.
--   local rtp = sip.rtpengine{ servers = { "127.0.0.1:2223" } }
--   local sdp = rtp:offer(req, "ICE=remove replace-origin RTP/AVP")
local core = require "luasip.core"
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local M = {}

-- ------------------------------------------------------------------ bencode

-- encode(v) -> string: strings, integers, lists (tables with [1] or empty) and
-- dictionaries (keys sorted, as bencode wants); booleans as "yes"/"no"
local function encode(v, out)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = #v .. ":" .. v
  elseif t == "number" then
    if v ~= math.floor(v) then error("luasip.rtpengine: bencode has integers only", 0) end
    out[#out + 1] = ("i%de"):format(v)
  elseif t == "boolean" then
    encode(v and "yes" or "no", out)
  elseif t == "table" then
    if v[1] ~= nil or next(v) == nil then
      out[#out + 1] = "l"
      for _, x in ipairs(v) do encode(x, out) end
    else
      out[#out + 1] = "d"
      local keys = {}
      for k in pairs(v) do
        if type(k) ~= "string" then error("luasip.rtpengine: dictionary keys must be strings", 0) end
        keys[#keys + 1] = k
      end
      table.sort(keys)
      for _, k in ipairs(keys) do
        encode(k, out)
        encode(v[k], out)
      end
    end
    out[#out + 1] = "e"
  else
    error("luasip.rtpengine: cannot bencode a " .. t, 0)
  end
  return out
end

function M.encode(v) return table.concat(encode(v, {})) end

local MAX_DEPTH = 32

-- decode(s, i, depth) -> value, next | nil, err (never raises: replies come off the wire)
local function decode(s, i, depth)
  if depth > MAX_DEPTH then return nil, "nested too deep" end
  local c = s:sub(i, i)
  if c == "i" then
    local e = s:find("e", i + 1, true)
    local n = e and s:sub(i + 1, e - 1)
    if not n or not n:match("^%-?%d+$") or #n > 18 then return nil, "bad integer at " .. i end
    return tonumber(n), e + 1
  elseif c == "l" or c == "d" then
    local list, j = {}, i + 1
    while true do
      local ch = s:sub(j, j)
      if ch == "" then return nil, "unterminated " .. (c == "l" and "list" or "dictionary") end
      if ch == "e" then break end
      local v, nj = decode(s, j, depth + 1)
      if v == nil then return nil, nj end
      list[#list + 1] = v
      j = nj
    end
    if c == "l" then return list, j + 1 end
    if #list % 2 == 1 then return nil, "dictionary with an odd count at " .. i end
    local dict = {}
    for k = 1, #list, 2 do
      if type(list[k]) ~= "string" then return nil, "dictionary key not a string at " .. i end
      dict[list[k]] = list[k + 1]
    end
    return dict, j + 1
  elseif c:match("%d") then
    local colon = s:find(":", i, true)
    local len = colon and s:sub(i, colon - 1)
    if not len or not len:match("^%d+$") or #len > 9 then return nil, "bad string length at " .. i end
    local n = tonumber(len)
    if colon + n > #s then return nil, "string past the end at " .. i end
    return s:sub(colon + 1, colon + n), colon + n + 1
  end
  return nil, c == "" and "truncated" or ("unexpected '" .. c .. "' at " .. i)
end

-- decode(s) -> value | nil, err: the whole of s must be one value
function M.decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local v, nexti = decode(s, 1, 0)
  if v == nil then return nil, nexti end
  if nexti <= #s then return nil, "trailing bytes at " .. nexti end
  return v
end

-- ------------------------------------------------------------------ flags

-- Kamailio-style flag words ("ICE=remove replace-origin RTP/AVP trust-address") into
-- the ng dictionary d
local LIST_KEYS = { direction = true, replace = true, flags = true, ["rtcp-mux"] = true,
  SDES = true, ["T.38"] = true, ["received-from"] = true, codec = false }
local function add_word(d, w)
  local k, v = w:match("^([^=]+)=(.*)$")
  if w:match("^[A-Z/]*RTP/S?AVPF?$") or w:match("^UDP/TLS/RTP/") then
    d["transport-protocol"] = w
  elseif w:match("^replace%-") then
    d.replace = d.replace or {}
    table.insert(d.replace, w:sub(9))
  elseif w:match("^rtcp%-mux%-") then
    d["rtcp-mux"] = d["rtcp-mux"] or {}
    table.insert(d["rtcp-mux"], w:sub(10))
  elseif k then
    if LIST_KEYS[k] then
      d[k] = d[k] or {}
      table.insert(d[k], v)
    else
      d[k] = v
    end
  else
    d.flags = d.flags or {}
    table.insert(d.flags, w)
  end
end

-- merges opts (a flag string, or a table: words in its list part, ng keys with their
-- values) into the dictionary d
local function add_flags(d, opts, fname)
  if opts == nil then return end
  if type(opts) == "string" then
    for w in opts:gmatch("%S+") do add_word(d, w) end
    return
  end
  if type(opts) ~= "table" then error(fname .. ": flags must be a string or a table", 3) end
  for _, w in ipairs(opts) do add_word(d, tostring(w)) end
  for k, v in pairs(opts) do
    if type(k) == "string" then
      if k == "flags" and type(v) == "string" then
        for w in v:gmatch("%S+") do add_word(d, w) end
      elseif type(v) == "table" and type(d[k]) == "table" then
        for _, x in ipairs(v) do table.insert(d[k], x) end
      else
        d[k] = v
      end
    end
  end
end

-- flags(opts) -> the ng dictionary entries of a flag string or table
function M.flags(opts)
  local d = {}
  add_flags(d, opts, "luasip.rtpengine.flags")
  return d
end

-- ------------------------------------------------------------------ sockets

-- a server: { address =, host =, port =, sock =, down_until = }
local function parse_server(s, fname)
  if type(s) ~= "string" then error(fname .. ": servers must be \"host:port\" strings", 4) end
  local spec = s:gsub("^udp6?:", "")
  local host, port = spec:match("^%[([%x:.]+)%]:(%d+)$")
  if not host then host, port = spec:match("^([%d.]+):(%d+)$") end
  if not host and spec:match("^localhost:%d+$") then host, port = "127.0.0.1", spec:match("(%d+)$") end
  port = tonumber(port)
  if not host or not port or port < 1 or port > 65535 then
    error(fname .. ": bad server address '" .. s .. "' (an IP address and port expected)", 4)
  end
  return { address = s, host = host, port = port, down_until = 0, inflight = 0,
    queue = { first = 1, last = 0 } }
end

local Client = {}
Client.__index = Client

local OPTIONS = { servers = true, timeout = true, retries = true, down_for = true,
  window = true, offer = true, answer = true, delete = true, on_failure = true }

-- sip.rtpengine{ servers = { "host:port", ... } [, timeout = 1, retries = 2,
-- down_for = 60, on_failure = "fail" | "pass", offer =, answer =, delete = ] } -> client
function M.new(opts)
  local fname = "luasip.rtpengine"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  class.check_options(opts, OPTIONS, fname)
  local servers = opts.servers
  if type(servers) == "string" then servers = { servers } end
  if type(servers) ~= "table" or #servers == 0 then
    error(fname .. ": servers must be a non-empty list", 2)
  end
  local c = setmetatable({ servers = {}, calls = {}, pending = {}, seq = 0,
    timeout = opts.timeout or 1, retries = opts.retries or 2, down_for = opts.down_for or 60,
    window = opts.window or 32,
    on_failure = opts.on_failure or "fail",
    defaults = { offer = opts.offer, answer = opts.answer, delete = opts.delete } }, Client)
  for i, s in ipairs(servers) do c.servers[i] = parse_server(s, fname) end
  if type(c.timeout) ~= "number" or c.timeout <= 0 then
    error(fname .. ": timeout must be a positive number", 2)
  end
  if type(c.retries) ~= "number" or c.retries < 0 then
    error(fname .. ": retries must be a number >= 0", 2)
  end
  if type(c.window) ~= "number" or c.window < 1 then
    error(fname .. ": window must be a number >= 1", 2)
  end
  if c.on_failure ~= "fail" and c.on_failure ~= "pass" then
    error(fname .. ': on_failure must be "fail" or "pass"', 2)
  end
  c.prefix = core.random_hex(6) .. "_"
  return c
end

-- the events of luasip.stream's datagram mode: the socket's state names its client
local function owner(s)
  local st = s and core.state(s)
  return st and st.rtpengine, st and st.server
end

local function take_reply(c, server, data)
  local cookie, rest = data:match("^(%S+) (.*)$")
  local w = cookie and c.pending[cookie]
  if not w or w.server ~= server then return end      -- late, duplicate or foreign
  local v, err = M.decode(rest)
  if type(v) ~= "table" or v[1] ~= nil then
    dispatcher.log("warn", ("rtpengine %s: malformed reply to %s: %s"):format(server.address,
      w.command, tostring(err or "not a dictionary")))
    return                                             -- the retransmission may do better
  end
  c.pending[cookie] = nil
  dispatcher.fill(w.slot, v)
end

dispatcher.on_event("dgram_data", function(s)
  local c, server = owner(s)
  if c then take_reply(c, server, s:take()) end
end)

-- fails the commands waiting for server (every server: nil), collected first: a woken
-- command goes on to the next server and adds to c.pending
local function fail_pending(c, server, err, code)
  local slots = {}
  for _, w in pairs(c.pending) do
    if server == nil or w.server == server then slots[#slots + 1] = w.slot end
  end
  for _, slot in ipairs(slots) do dispatcher.fill(slot, nil, err, code) end
end

-- the ICMP refusal of a datagram: nobody listens there (rtpengine down)
dispatcher.on_event("dgram_error", function(s)
  local c, server = owner(s)
  if c then fail_pending(c, server, s:error(), "refused") end
end)

dispatcher.on_event("dgram_closed", function(s)
  local c, server = owner(s)
  if not c then return end
  server.sock = nil
  fail_pending(c, server, tostring(s:error()), "closed")
end)

local function socket_of(c, server)
  if server.sock then return server.sock end
  local s, err, code = core.stream_connect(server.host, server.port, "udp")
  if not s then return nil, err, code end
  local st = core.state(s)
  st.rtpengine, st.server = c, server
  server.sock = s
  return s
end

-- At most `window` commands in flight per server, the others wait their turn: a burst
-- (200 calls at once) overflowed rtpengine's socket buffer, and each datagram it dropped
-- cost a retransmission timeout.
local function acquire(c, server, fname)
  while server.inflight >= c.window do
    local q, slot = server.queue, dispatcher.new_slot(fname)
    q.last = q.last + 1
    q[q.last] = slot
    dispatcher.wait(slot)
  end
  server.inflight = server.inflight + 1
end

local function release(server)
  server.inflight = server.inflight - 1
  local q = server.queue
  while q.first <= q.last do
    local slot = q[q.first]
    q[q.first] = nil
    q.first = q.first + 1
    if dispatcher.fill(slot, true) then return end
  end
end

-- one exchange with one server: retransmitted every timeout, retries times
local function send_wait(c, server, cmd, fname)
  local s, err, code = socket_of(c, server)
  if not s then return nil, err, code end
  c.seq = c.seq + 1
  local cookie = c.prefix .. c.seq
  local packet = cookie .. " " .. M.encode(cmd)
  local w = { server = server, command = cmd.command }
  c.pending[cookie] = w
  local reply
  for _ = 0, c.retries do
    w.slot = dispatcher.new_slot(fname)
    local ok
    ok, err, code = s:send(packet)
    if ok then
      reply, err, code = dispatcher.wait(w.slot, c.timeout)
    end
    if reply or (code ~= "timeout" and code ~= "send") then break end
  end
  c.pending[cookie] = nil
  if not reply then
    if code == "timeout" then err = "no reply" end
    return nil, err, code
  end
  return reply
end

local function exchange(c, server, cmd, fname)
  acquire(c, server, fname)
  local reply, err, code = send_wait(c, server, cmd, fname)
  release(server)
  return reply, err, code
end

-- the servers to try, in order: the call's own first, then the others that are up,
-- then those marked down (better a late try than none)
local function order(c, call_id)
  local list, later, now = {}, {}, core.now()
  local own = call_id and c.calls[call_id]
  own = own and own.server
  if own then list[1] = own end
  for _, s in ipairs(c.servers) do
    if s ~= own then
      if s.down_until <= now then list[#list + 1] = s else later[#later + 1] = s end
    end
  end
  for _, s in ipairs(later) do list[#list + 1] = s end
  return list
end

-- A call sticks to the server that took its offer (with one server: nothing to keep).
-- Calls that never saw a delete (no BYE came) are forgotten after a day: the table is
-- swept every 1024 new calls.
local CALL_TTL = 86400
local function stick(c, call_id, server)
  if #c.servers < 2 then return end
  local now = core.now()
  if not c.calls[call_id] then
    c.ncalls = (c.ncalls or 0) + 1
    if c.ncalls % 1024 == 0 then
      for id, e in pairs(c.calls) do
        if now - e.at > CALL_TTL then c.calls[id] = nil end
      end
    end
  end
  c.calls[call_id] = { server = server, at = now }
end

-- client:command(dict) -> reply dict | nil, err, code: any ng command (dict.command),
-- with failover; code "rtpengine" for an error reply (result "error"), "timeout" when
-- no server answered
function Client:command(cmd)
  local fname = "luasip.rtpengine:command"
  if type(cmd) ~= "table" or type(cmd.command) ~= "string" then
    error(fname .. ": a dictionary with a command expected", 2)
  end
  dispatcher.current(fname)
  local errs = {}
  for _, server in ipairs(order(self, cmd["call-id"])) do
    if self.closed then return nil, "rtpengine client closed", "closed" end
    local reply, err, code = exchange(self, server, cmd, fname)
    if self.closed then return nil, "rtpengine client closed", "closed" end
    if reply then
      server.down_until = 0
      if cmd["call-id"] and cmd.command ~= "delete" then stick(self, cmd["call-id"], server) end
      if reply.result == "error" then
        return nil, "rtpengine: " .. tostring(reply["error-reason"] or "error"), "rtpengine", reply
      end
      return reply, server.address
    end
    server.down_until = core.now() + self.down_for
    errs[#errs + 1] = server.address .. ": " .. tostring(err)
    dispatcher.log("warn", ("rtpengine %s: %s failed: %s"):format(server.address, cmd.command,
      tostring(err)), cmd["call-id"])
    if code == "closed" then server.sock = nil end
  end
  return nil, "rtpengine unreachable (" .. table.concat(errs, "; ") .. ")", "timeout"
end

-- client:close() -> true: closes the sockets; waiting commands fail ("closed")
function Client:close()
  if not self.closed then
    self.closed = true
    for _, server in ipairs(self.servers) do
      if server.sock then server.sock:close() end
      server.sock = nil
    end
    fail_pending(self, nil, "rtpengine client closed", "closed")
  end
  return true
end

-- client:ping() -> true, server | nil, err, code
function Client:ping()
  local reply, server_or_err, code = self:command{ command = "ping" }
  if not reply then return nil, server_or_err, code end
  if reply.result ~= "pong" then
    return nil, "rtpengine: unexpected answer to ping: " .. tostring(reply.result), "rtpengine"
  end
  return true, server_or_err
end

-- The SIP message's part: call-id, tags, SDP
local function ids(msg, fname)
  if type(msg) ~= "table" and type(msg) ~= "userdata" then
    error(fname .. ": a request or response expected", 3)
  end
  local call_id = msg.call_id
  if type(call_id) ~= "string" then error(fname .. ": the message has no Call-ID", 3) end
  return call_id, msg.from_tag, msg.to_tag
end

local function sdp_of(msg)
  local body = msg.body
  if not body or body == "" then return nil end
  local ct = msg.content_type
  if ct and not ct:lower():match("^application/sdp") then return nil end
  return body
end

local function with_defaults(c, which, opts, fname)
  local d = {}
  add_flags(d, c.defaults[which], fname)
  add_flags(d, opts, fname)
  return d
end

-- offer or answer: the SDP rtpengine rewrote
local function sdp_command(c, which, msg, opts, fname)
  local call_id, from_tag, to_tag = ids(msg, fname)
  local sdp = sdp_of(msg)
  if not sdp then return nil, "no SDP in the message", "sdp" end
  local d = with_defaults(c, which, opts, fname)
  d.command, d.sdp, d["call-id"], d["from-tag"] = which, sdp, call_id, from_tag
  if which == "answer" then d["to-tag"] = to_tag end
  if d["received-from"] == nil and msg.source and msg.source.address then
    d["received-from"] = { msg.source.address:find(":", 1, true) and "IP6" or "IP4",
      msg.source.address }
  end
  local reply, err, code = c:command(d)
  if not reply then return nil, err, code end
  if type(reply.sdp) ~= "string" then
    return nil, "rtpengine: reply without sdp", "rtpengine"
  end
  return reply.sdp
end

-- client:offer(req | response [, flags]) -> sdp | nil, err, code
function Client:offer(msg, opts)
  return sdp_command(self, "offer", msg, opts, "luasip.rtpengine:offer")
end

-- client:answer(response | ack [, flags]) -> sdp | nil, err, code
function Client:answer(msg, opts)
  return sdp_command(self, "answer", msg, opts, "luasip.rtpengine:answer")
end

-- client:delete(msg | { call_id =, from_tag =, to_tag = } [, flags]) -> reply | nil, err, code
function Client:delete(msg, opts)
  local fname = "luasip.rtpengine:delete"
  local call_id, from_tag, to_tag = ids(msg, fname)
  local d = with_defaults(self, "delete", opts, fname)
  d.command, d["call-id"], d["from-tag"], d["to-tag"] = "delete", call_id, from_tag, to_tag
  local reply, err, code = self:command(d)
  self.calls[call_id] = nil
  return reply, err, code
end

-- client:query(msg | { call_id = }) -> reply | nil, err, code
function Client:query(msg, opts)
  local fname = "luasip.rtpengine:query"
  local call_id, from_tag = ids(msg, fname)
  local d = {}
  add_flags(d, opts, fname)
  d.command, d["call-id"], d["from-tag"] = "query", call_id, from_tag
  return self:command(d)
end

-- client:proxy(req, targets [, proxy_opts [, { offer =, answer = }]]) -> as req:proxy:
-- the INVITE's SDP goes through offer, every response's SDP through answer; the
-- media session is deleted when the call fails.  When rtpengine cannot be reached the
-- call fails 503 (on_failure = "fail") or goes on with its SDP unchanged ("pass").
function Client:proxy(req, targets, popts, flags)
  local fname = "luasip.rtpengine:proxy"
  if popts ~= nil and type(popts) ~= "table" then error(fname .. ": options must be a table", 2) end
  flags = flags or {}
  local o = {}
  for k, v in pairs(popts or {}) do o[k] = v end
  if o.body ~= nil or o.rewrite ~= nil then
    error(fname .. ": body and rewrite are rtpengine's (use req:proxy for your own)", 2)
  end
  local has_sdp = sdp_of(req) ~= nil
  local relayed = false
  if has_sdp then
    local sdp, err, code = self:offer(req, flags.offer)
    if sdp then
      o.body, relayed = sdp, true
    elseif self.on_failure == "fail" then
      dispatcher.log("error", "rtpengine offer failed: " .. tostring(err))
      req:reply(503, "Media Relay Unavailable")
      return nil, err, code
    else
      dispatcher.log("warn", "rtpengine offer failed, SDP passed unchanged: " .. tostring(err))
    end
  end
  if relayed then
    o.rewrite = function(res)
      if not sdp_of(res) then return nil end
      local sdp, err = self:answer(res, flags.answer)
      if not sdp then dispatcher.log("warn", "rtpengine answer failed: " .. tostring(err)) end
      return sdp
    end
  end
  local res, err, code, final = req:proxy(targets, o)
  -- a failed call ends its media session; a failed re-INVITE leaves the call's alone
  if not res and relayed and not req.to_tag then
    local ok, derr = self:delete(req)
    if not ok then dispatcher.log("warn", "rtpengine delete failed: " .. tostring(derr)) end
  end
  return res, err, code, final
end

return M
