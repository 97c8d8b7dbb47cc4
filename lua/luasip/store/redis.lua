-- luasip.store.redis: the store interface of luasip.store.memory on a Redis server, so
-- several processes (or hosts) share registrations and other state (DESIGN D10).
-- Calls yield (they run in luasip coroutines).  Keys are prefixed; values are serialised
-- Lua tables; TTLs are Redis expiries; update() is WATCH/MULTI/EXEC, retried on a
-- conflict; one connection per store, commands of concurrent coroutines are serialised
-- while an update holds its WATCH.  The clock is the wall clock (sip.time()), shared by
-- every process of the host.  advance() is one server-side script (atomic across
-- processes); publish/subscribe use a second connection, opened on the first subscribe.
-- Outages: a lost connection is opened again in the background, after 0.1 s, then twice
-- as long each time up to reconnect_max seconds (5), logged once per cause; meanwhile
-- every call returns nil, "redis unavailable (...)", "unavailable" at once (handlers
-- answer 503 with Retry-After: luasip.store.outage), and subscribers get fn(nil) once
-- the subscriptions are back (messages may have been lost meanwhile).
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local check = require "luasip.store.args"
local redis = require "luasip.redis"

local M = {}
local Store = {}
Store.__index = Store

-- ---------------------------------------------------------------- serialisation

local function ser(v, out, depth)
  local t = type(v)
  if t == "string" then
    out[#out + 1] = ("%q"):format(v)
  elseif t == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      error("luasip.store.redis: numbers must be finite", 4)
    end
    out[#out + 1] = v % 1 == 0 and ("%d"):format(v) or ("%.17g"):format(v)
  elseif t == "boolean" then
    out[#out + 1] = tostring(v)
  elseif t == "table" then
    if depth > 32 then error("luasip.store.redis: value nested too deep", 4) end
    out[#out + 1] = "{"
    for k, x in pairs(v) do
      if type(k) ~= "string" and type(k) ~= "number" then
        error("luasip.store.redis: table keys must be strings or numbers", 4)
      end
      out[#out + 1] = "["
      ser(k, out, depth + 1)
      out[#out + 1] = "]="
      ser(x, out, depth + 1)
      out[#out + 1] = ","
    end
    out[#out + 1] = "}"
  else
    error("luasip.store.redis: values must be strings, numbers, booleans or tables, got "
      .. t, 4)
  end
end

local function serialise(v)
  local out = {}
  ser(v, out, 1)
  return table.concat(out)
end

-- our own data, read back in an empty environment
local function deserialise(s)
  local f
  if setfenv then
    f = loadstring("return " .. s, "=store")
    if f then setfenv(f, {}) end
  else
    f = load("return " .. s, "=store", "t", {})
  end
  if not f then return nil end
  local ok, v = pcall(f)
  return ok and v or nil
end

-- ---------------------------------------------------------------- connections

local MIN_DELAY = 0.1

-- A link is one connection that comes back after an outage: { c = client | nil,
-- down = why | nil, delay =, timer =, logged =, on_up = fn(client) }
local function new_link(name, on_up)
  return { name = name, delay = MIN_DELAY, on_up = on_up }
end

local reconnect

local function attach(self, link, c)
  link.c, link.down, link.delay = c, nil, MIN_DELAY
  c.on_close = function(why)
    if link.c ~= c then return end
    link.c = nil
    link.down = why
    if self._closed then return end
    -- an idle subscriber connection would not notice a server that vanished without a
    -- word: when the command connection goes, it goes too (and comes back with it)
    local sub = self._sub
    if link == self._cmd and sub and sub.c then sub.c:_lost(why) end
    -- logged once per cause, not per attempt
    if link.logged ~= why then
      dispatcher.log("warn", link.name .. ": " .. why .. "; reconnecting")
      link.logged = why
    end
    reconnect(self, link)
  end
end

-- schedules the next attempt (bounded backoff); runs on the loop, never blocks it
function reconnect(self, link)
  if link.timer or self._closed then return end
  link.timer = dispatcher.timer(link.delay, function()
    link.timer = nil
    if self._closed then return end
    local c, err = redis.connect(self._conn)
    if self._closed then
      if c then c:close() end
      return
    end
    if not c then
      local why = "redis unreachable: " .. tostring(err)
      link.down = why
      if link.logged ~= why then
        dispatcher.log("warn", link.name .. ": " .. why .. "; retrying")
        link.logged = why
      end
      link.delay = math.min(link.delay * 2, self._max_delay)
      return reconnect(self, link)
    end
    attach(self, link, c)
    if link.logged then
      dispatcher.log("info", link.name .. ": connection back")
      link.logged = nil
    end
    if link.on_up then link.on_up(c) end
  end)
end

local function unavailable(link)
  return nil, "redis unavailable (" .. tostring(link.down or "connecting") .. ")", "unavailable"
end

-- call(self, cmd, ...) -> reply | nil, err, code ("redis": an error reply; anything
-- else is an outage: "unavailable")
local function call(self, ...)
  local c = self._cmd.c
  if not c then return unavailable(self._cmd) end
  local v, err, code = c:call(...)
  if v == nil and err and code ~= "redis" then
    return nil, "redis unavailable (" .. tostring(err) .. ")", "unavailable"
  end
  return v, err, code
end

-- ---------------------------------------------------------------- store

local OPTIONS = { path = true, host = true, port = true, prefix = true, timeout = true,
  call_timeout = true, reconnect_max = true }

-- redis{ path = | host =, port =, prefix = "luasip:", timeout = 5, call_timeout = 5,
--   reconnect_max = 5 } -> store | nil, err, code
function M.new(opts)
  if type(opts) ~= "table" then error("luasip.store.redis: options table expected", 2) end
  for k in pairs(opts) do
    if not OPTIONS[k] then error("luasip.store.redis: unknown option '" .. tostring(k) .. "'", 2) end
  end
  local max = opts.reconnect_max or 5
  if type(max) ~= "number" or max <= 0 then
    error("luasip.store.redis: reconnect_max must be a number of seconds > 0", 2)
  end
  local conn = { path = opts.path, host = opts.host, port = opts.port,
    timeout = opts.timeout or 5, call_timeout = opts.call_timeout or 5 }
  local c, err, code = redis.connect(conn)
  if not c then return nil, err, code end
  local self = setmetatable({ _conn = conn, _prefix = opts.prefix or "luasip:", _queue = {},
    _max_delay = max, _channels = {}, _nchannels = 0 }, Store)
  self._cmd = new_link("redis store")
  attach(self, self._cmd, c)
  return self
end

-- store:status() -> "up" | "down", why: the command connection now
function Store:status()
  if self._cmd.c then return "up" end
  return "down", self._cmd.down
end

-- one command sequence at a time on the connection (WATCH state is per connection)
local function lock(self)
  if self._busy then
    local slot = dispatcher.new_slot("luasip.store")
    self._queue[#self._queue + 1] = slot
    dispatcher.wait(slot)
  end
  self._busy = true
end

local function unlock(self, ...)
  self._busy = false
  local nxt = table.remove(self._queue, 1)
  if nxt then dispatcher.fill(nxt, true) end
  return ...
end

local function ms(ttl)
  return math.max(1, math.floor(ttl * 1000 + 0.5))
end

function Store:now() -- luacheck: ignore 212
  return core.time()
end

function Store:get(key)
  check.key(key, "luasip.store:get")
  lock(self)
  local v, err, code = call(self, "GET", self._prefix .. key)
  if v == nil and err then return unlock(self, nil, err, code) end
  return unlock(self, v and deserialise(v) or nil)
end

local function set_args(self, key, value, ttl)
  local args = { "SET", self._prefix .. key, serialise(value) }
  if ttl then
    args[#args + 1] = "PX"
    args[#args + 1] = ms(ttl)
  end
  return args
end

local unpack = table.unpack or unpack

function Store:set(key, value, ttl)
  check.key(key, "luasip.store:set")
  check.ttl(ttl, "luasip.store:set")
  if value == nil then error("luasip.store:set: value expected (use store:del)", 2) end
  local args = set_args(self, key, value, ttl)
  lock(self)
  local ok, err, code = call(self, unpack(args))
  if not ok then return unlock(self, nil, err, code) end
  return unlock(self, true)
end

function Store:del(key)
  check.key(key, "luasip.store:del")
  lock(self)
  local ok, err, code = call(self, "DEL", self._prefix .. key)
  if not ok then return unlock(self, nil, err, code) end
  return unlock(self, true)
end

function Store:update(key, fn)
  check.key(key, "luasip.store:update")
  if type(fn) ~= "function" then error("luasip.store:update: function expected", 2) end
  local rkey = self._prefix .. key
  lock(self)
  for attempt = 1, 32 do
    local ok, err, code = call(self, "WATCH", rkey)
    if not ok then return unlock(self, nil, err, code) end
    local raw
    raw, err, code = call(self, "GET", rkey)
    if raw == nil and err then return unlock(self, nil, err, code) end
    local pok, new, ttl = pcall(fn, raw and deserialise(raw) or nil, self:now())
    if not pok then
      call(self, "UNWATCH")
      unlock(self)
      error(new, 0)
    end
    if new == false then
      call(self, "UNWATCH")
      return unlock(self, true)
    end
    local args
    if new == nil then
      args = { "DEL", rkey }
    else
      if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
        call(self, "UNWATCH")
        unlock(self)
        error("luasip.store:update: ttl must be a number of seconds > 0", 2)
      end
      args = set_args(self, key, new, ttl)
    end
    call(self, "MULTI")
    call(self, unpack(args))
    local res
    res, err, code = call(self, "EXEC")
    if res == nil and err then return unlock(self, nil, err, code) end
    if res then return unlock(self, true) end
    -- nil EXEC: another client wrote the key meanwhile; read it again after a random
    -- pause, or two busy writers in lockstep starve one of them
    dispatcher.sleep(math.random() * 0.002 * attempt)
  end
  return unlock(self, nil, "store update kept conflicting", "conflict")
end

-- the number stored at KEYS[1] rises to ARGV[1] (TTL ARGV[2] ms) unless it is there
-- already: one script, so two processes cannot both accept the same count
local ADVANCE = [[
local h = tonumber(redis.call('GET', KEYS[1]))
if h and h >= tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1]]

function Store:advance(key, n, ttl)
  check.advance(key, n, ttl)
  lock(self)
  local r, err, code = call(self, "EVAL", ADVANCE, 1, self._prefix .. key,
    ("%.17g"):format(n), ms(ttl))
  if r == nil then return unlock(self, nil, err, code) end
  return unlock(self, r == 1)
end

local function glob_escape(s)
  return (s:gsub("[%*%?%[%]\\]", "\\%0"))
end

function Store:keys(prefix)
  check.prefix(prefix)
  local pattern = glob_escape(self._prefix .. (prefix or "")) .. "*"
  local list, seen, cursor = {}, {}, "0"
  lock(self)
  repeat
    local r, err, code = call(self, "SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
    if not r then return unlock(self, nil, err, code) end
    cursor = r[1]
    for _, k in ipairs(r[2] or {}) do
      local short = k:sub(#self._prefix + 1)
      if not seen[short] then
        seen[short] = true
        list[#list + 1] = short
      end
    end
  until cursor == "0"
  table.sort(list)
  return unlock(self, list)
end

-- ---------------------------------------------------------------- pub/sub

function Store:publish(channel, message)
  check.publish(channel, message)
  local ok, err, code = call(self, "PUBLISH", self._prefix .. channel, message)
  if not ok then return nil, err, code end
  return true
end

local function subscribe_all(self, c, resync)
  local args = { "SUBSCRIBE" }
  for full in pairs(self._channels) do args[#args + 1] = full end
  if #args > 1 then c:call(unpack(args)) end
  if resync then
    for _, fns in pairs(self._channels) do
      for _, fn in ipairs(fns) do dispatcher.spawn(fn, nil) end
    end
  end
end

local function open_sub(self, link)
  local c = redis.connect(self._conn)
  if self._closed then
    if c then c:close() end
    return
  end
  if not c then
    link.down = "redis unreachable"
    link.logged = link.down
    dispatcher.log("warn", link.name .. ": redis unreachable; retrying")
    return reconnect(self, link)
  end
  attach(self, link, c)
  link.on_up(c, true)
end

-- store:subscribe(channel, fn(message | nil)) -> true, at once (the connection opens in
-- the background); fn runs in a luasip coroutine, with nil after an outage
function Store:subscribe(channel, fn)
  check.subscribe(channel, fn)
  local full = self._prefix .. channel
  local fns = self._channels[full]
  local new = fns == nil
  if new then
    fns = {}
    self._channels[full] = fns
  end
  fns[#fns + 1] = fn
  local link = self._sub
  if not link then
    link = new_link("redis store (pub/sub)", function(c, first)
      c:on_message(function(ch, msg)
        for _, f in ipairs(self._channels[ch] or {}) do f(msg) end
      end)
      subscribe_all(self, c, not first)
    end)
    self._sub = link
    dispatcher.spawn(open_sub, self, link)
  elseif new and link.c then
    local c = link.c
    dispatcher.spawn(function() c:call("SUBSCRIBE", full) end)
  end
  return true
end

function Store:purge() -- luacheck: ignore 212
  return 0                                 -- Redis expires keys itself
end

function Store:close()
  self._closed = true
  for _, link in ipairs{ self._cmd, self._sub or false } do
    if link then
      if link.timer then link.timer:cancel(); link.timer = nil end
      local c = link.c
      link.c = nil
      if c then c:close() end
    end
  end
  return true
end

return M
