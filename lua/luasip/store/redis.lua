-- luasip.store.redis: the store interface of luasip.store.memory on a Redis server, so
-- several processes (or hosts) share registrations and other state (DESIGN D10).
-- Calls yield (they run in luasip coroutines).  Keys are prefixed; values are serialised
-- Lua tables; TTLs are Redis expiries; update() is WATCH/MULTI/EXEC, retried on a
-- conflict; one connection per store, commands of concurrent coroutines are serialised
-- while an update holds its WATCH.  The clock is the wall clock (sip.time()), shared by
-- every process of the host.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
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

-- ---------------------------------------------------------------- store

-- redis{ path = | host =, port =, prefix = "luasip:" } -> store | nil, err, code
function M.new(opts)
  if type(opts) ~= "table" then error("luasip.store.redis: options table expected", 2) end
  local c, err, code = redis.connect(opts)
  if not c then return nil, err, code end
  return setmetatable({ _c = c, _prefix = opts.prefix or "luasip:", _queue = {} }, Store)
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

local function check_key(key, fname)
  if type(key) ~= "string" then error(fname .. ": key must be a string", 3) end
end

function Store:now() -- luacheck: ignore 212
  return core.time()
end

function Store:get(key)
  check_key(key, "luasip.store:get")
  lock(self)
  local v, err, code = self._c:call("GET", self._prefix .. key)
  if v == nil and err then return unlock(self, nil, err, code) end
  return unlock(self, v and deserialise(v) or nil)
end

local function set_args(self, key, value, ttl)
  local args = { "SET", self._prefix .. key, serialise(value) }
  if ttl then
    args[#args + 1] = "PX"
    args[#args + 1] = math.max(1, math.floor(ttl * 1000 + 0.5))
  end
  return args
end

local unpack = table.unpack or unpack

function Store:set(key, value, ttl)
  check_key(key, "luasip.store:set")
  if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
    error("luasip.store:set: ttl must be a number of seconds > 0", 2)
  end
  if value == nil then error("luasip.store:set: value expected (use store:del)", 2) end
  local args = set_args(self, key, value, ttl)
  lock(self)
  local ok, err, code = self._c:call(unpack(args))
  if not ok then return unlock(self, nil, err, code) end
  return unlock(self, true)
end

function Store:del(key)
  check_key(key, "luasip.store:del")
  lock(self)
  local ok, err, code = self._c:call("DEL", self._prefix .. key)
  if not ok then return unlock(self, nil, err, code) end
  return unlock(self, true)
end

function Store:update(key, fn)
  check_key(key, "luasip.store:update")
  if type(fn) ~= "function" then error("luasip.store:update: function expected", 2) end
  local rkey = self._prefix .. key
  lock(self)
  for attempt = 1, 32 do
    local c = self._c
    local ok, err, code = c:call("WATCH", rkey)
    if not ok then return unlock(self, nil, err, code) end
    local raw
    raw, err, code = c:call("GET", rkey)
    if raw == nil and err then return unlock(self, nil, err, code) end
    local pok, new, ttl = pcall(fn, raw and deserialise(raw) or nil, self:now())
    if not pok then
      c:call("UNWATCH")
      unlock(self)
      error(new, 0)
    end
    if new == false then
      c:call("UNWATCH")
      return unlock(self, true)
    end
    local args
    if new == nil then
      args = { "DEL", rkey }
    else
      if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
        c:call("UNWATCH")
        unlock(self)
        error("luasip.store:update: ttl must be a number of seconds > 0", 2)
      end
      args = set_args(self, key, new, ttl)
    end
    c:call("MULTI")
    c:call(unpack(args))
    local res
    res, err, code = c:call("EXEC")
    if res == nil and err then return unlock(self, nil, err, code) end
    if res then return unlock(self, true) end
    -- nil EXEC: another client wrote the key meanwhile; read it again after a random
    -- pause, or two busy writers in lockstep starve one of them
    dispatcher.sleep(math.random() * 0.002 * attempt)
  end
  return unlock(self, nil, "store update kept conflicting", "conflict")
end

local function glob_escape(s)
  return (s:gsub("[%*%?%[%]\\]", "\\%0"))
end

function Store:keys(prefix)
  if prefix ~= nil and type(prefix) ~= "string" then
    error("luasip.store:keys: prefix must be a string", 2)
  end
  local pattern = glob_escape(self._prefix .. (prefix or "")) .. "*"
  local list, seen, cursor = {}, {}, "0"
  lock(self)
  repeat
    local r, err, code = self._c:call("SCAN", cursor, "MATCH", pattern, "COUNT", 1000)
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

function Store:purge() -- luacheck: ignore 212
  return 0                                 -- Redis expires keys itself
end

function Store:close()
  return self._c:close()
end

return M
