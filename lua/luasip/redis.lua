-- luasip.redis: a minimal Redis client (RESP2) on a luasip.stream, for luasip
-- coroutines: commands are pipelined on one connection and each caller yields until
-- its reply.  Replies: status/bulk strings as Lua strings, integers as numbers, arrays
-- as tables, nil bulk as false-y nil; a server error returns nil, message, "redis".
--   local r = assert(redis.connect{ path = "/tmp/redis.sock" })   -- or host=, port=
--   r:call("SET", "k", "v"); local v = r:call("GET", "k")
-- A lost connection fails every pending call (nil, "redis connection lost: ...",
-- "closed") and runs client.on_close(why), if set; a call that gets no reply within
-- call_timeout seconds closes the connection the same way (its replies would come out
-- of order).  Pub/sub: client:on_message(fn) turns the connection into a subscriber one:
-- fn(channel, message) runs in a new luasip coroutine for each message.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local dns = require "luasip.dns"

local M = {}
local Client = {}
Client.__index = Client

local NULL = {}                  -- a nil inside an array reply

local function encode(args)
  local out = { "*", tostring(#args), "\r\n" }
  for _, a in ipairs(args) do
    a = tostring(a)
    out[#out + 1] = "$" .. #a .. "\r\n" .. a .. "\r\n"
  end
  return table.concat(out)
end

-- parse(buf, pos) -> value, next_pos | nil (incomplete) ; errors as { err = msg }
local function parse(buf, pos)
  local line_end = buf:find("\r\n", pos, true)
  if not line_end then return nil end
  local kind, line = buf:sub(pos, pos), buf:sub(pos + 1, line_end - 1)
  local nextp = line_end + 2
  if kind == "+" then return line, nextp end
  if kind == "-" then return { err = line }, nextp end
  if kind == ":" then return tonumber(line), nextp end
  if kind == "$" then
    local n = tonumber(line)
    if n < 0 then return NULL, nextp end
    if #buf < nextp + n + 1 then return nil end
    return buf:sub(nextp, nextp + n - 1), nextp + n + 2
  end
  if kind == "*" then
    local n = tonumber(line)
    if n < 0 then return NULL, nextp end
    local list = {}
    for i = 1, n do
      local v
      v, nextp = parse(buf, nextp)
      if v == nil then return nil end
      list[i] = v ~= NULL and v or nil
      if v == NULL then list[i] = false end
    end
    return list, nextp
  end
  return { err = "protocol error: unexpected " .. kind }, #buf + 1
end

-- the first address of a host name: the hosts file, else an A/AAAA query on sofia's
-- resolver (lua/luasip/dns.lua; agent: use its dns option), which needs a coroutine
local function resolve(host, port, agent)
  local addrs = dns.hosts(host, agent and core.state(agent).dns_hosts)
  if addrs then return addrs[1] end
  if not pcall(dispatcher.current, "luasip.redis.connect") then
    return nil, "cannot resolve " .. host .. " outside a luasip coroutine"
  end
  local list, err = dns.resolve(("sip:%s:%d;transport=tcp"):format(host, port), agent)
  if not list then return nil, err end
  return list[1].address
end

-- connect{ path = unix socket | host =, port =, timeout = seconds (5), agent = }
--   -> client | nil, err, "connect"
-- A host name is resolved without blocking (the hosts file, then DNS through sofia's
-- resolver, with agent's dns option when given).
-- The connect never blocks the loop.  In a luasip coroutine it waits (at most timeout)
-- until the connection is up or has failed (nil, "connection refused", "connect" or
-- nil, "timeout", "connect").  Outside one it returns at once: commands wait for the
-- connection, and a failure to connect shows at the first call.
function M.connect(opts)
  if type(opts) ~= "table" then error("luasip.redis.connect: options table expected", 2) end
  local timeout = opts.timeout
  if timeout == nil then
    timeout = 5
  elseif type(timeout) ~= "number" or timeout <= 0 then
    error("luasip.redis.connect: timeout must be a positive number", 2)
  end
  local s, err, code
  if opts.path then
    s, err, code = core.stream_connect(opts.path)
  else
    local host, port = opts.host or "127.0.0.1", opts.port or 6379
    if not dns.numeric(host) then
      host, err = resolve(host, port, opts.agent)
      if not host then return nil, err, "connect" end
    end
    s, err, code = core.stream_connect(host, port)
  end
  if not s then return nil, err, code end
  local call_timeout = opts.call_timeout
  if call_timeout ~= nil and (type(call_timeout) ~= "number" or call_timeout <= 0) then
    error("luasip.redis.connect: call_timeout must be a positive number", 2)
  end
  local c = setmetatable({ _s = s, _buf = "", _pending = {}, _head = 1, _tail = 0,
    _call_timeout = call_timeout }, Client)
  core.state(s).client = c
  if s:state() == "connecting" and pcall(dispatcher.current, "luasip.redis.connect") then
    local slot = dispatcher.new_slot("luasip.redis.connect")
    c._connecting = slot
    local ok, why = dispatcher.wait(slot, timeout)
    c._connecting = nil
    if not ok then
      c._closed = true
      s:close()
      return nil, why, "connect"
    end
  end
  return c
end

-- client:call(cmd, ...) -> reply | nil, err, code
function Client:call(...)
  if self._closed then return nil, "redis connection closed", "closed" end
  local slot = dispatcher.new_slot("luasip.redis:call")
  local ok, err, code = self._s:send(encode({ ... }))
  if not ok then
    -- a connection the server dropped before the loop saw it: the same words as when
    -- the loop saw it first (stream_closed)
    if code == "closed" then err = "redis connection lost: " .. tostring(err) end
    return nil, err, code
  end
  self._tail = self._tail + 1
  self._pending[self._tail] = slot
  local v, err2, code2 = dispatcher.wait(slot, self._call_timeout)
  if v == nil and code2 == "timeout" and err2 == "timeout" then
    self:_lost("redis command timed out")
    return nil, "redis command timed out", "timeout"
  end
  return v, err2, code2
end

-- client:on_message(fn(channel, message)): this connection now carries pub/sub
-- messages (send SUBSCRIBE with call; its confirmations are the replies)
function Client:on_message(fn)
  self._on_message = fn
end

-- the connection is gone under us: fail what waits, tell the owner once
function Client:_lost(why)
  if self._closed then return end
  self._closed = true
  self._s:close()
  self:_fail(why)
  if self.on_close then self.on_close(why) end
end

function Client:close()
  if not self._closed then
    self._closed = true
    self._s:close()
    self:_fail("redis connection closed")
  end
  return true
end

function Client:_fail(why)
  while self._head <= self._tail do
    local slot = self._pending[self._head]
    self._pending[self._head] = nil
    self._head = self._head + 1
    dispatcher.fill(slot, nil, why, "closed")
  end
end

-- the next reply goes to the oldest waiting call
local function deliver(c, v)
  local slot = c._pending[c._head]
  c._pending[c._head] = nil
  c._head = c._head + 1
  if type(v) == "table" and v.err then
    dispatcher.fill(slot, nil, v.err, "redis")
  elseif v == NULL then
    dispatcher.fill(slot, nil)
  else
    dispatcher.fill(slot, v)
  end
end

dispatcher.on_event("stream_data", function(s)
  local c = s and core.state(s).client
  if not c then return end
  local buf, pos = c._buf .. s:take(), 1
  local on_message = c._on_message
  while on_message or c._head <= c._tail do
    local v, nextp = parse(buf, pos)
    if v == nil then break end
    pos = nextp
    if on_message and type(v) == "table" and v[1] == "message" then
      dispatcher.spawn(on_message, v[2], v[3])
    elseif c._head <= c._tail then
      deliver(c, v)
    end
  end
  c._buf = buf:sub(pos)
end)

dispatcher.on_event("stream_connected", function(s)
  local c = s and core.state(s).client
  if c and c._connecting then dispatcher.fill(c._connecting, true) end
end)

dispatcher.on_event("stream_closed", function(s)
  local c = s and core.state(s).client
  if c and not c._closed then
    c._closed = true
    if c._connecting then dispatcher.fill(c._connecting, nil, tostring(s:error())) end
    local why = "redis connection lost: " .. tostring(s:error())
    c:_fail(why)
    if c.on_close then c.on_close(why) end
  end
end)

return M
