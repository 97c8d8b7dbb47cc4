-- luasip.store.memory: the embedded store (DESIGN D10), plain Lua tables in this process.
-- Every store (memory, and later Redis) has the same interface; its functions may yield,
-- so callers run in luasip coroutines.  Values are serialisable tables (strings, numbers,
-- booleans, nested tables): they are copied in and out, never shared with the caller.
--   store:now() -> seconds on the store's clock (expiry times are on this clock)
--   store:get(key) -> value | nil
--   store:set(key, value [, ttl]) -> true
--   store:del(key) -> true
--   store:update(key, fn) -> true: atomic read-modify-write; fn(value | nil, now) returns
--     value [, ttl] to write, nil to delete, false to leave the key as it is.  fn must not
--     yield and may run more than once (a Redis store retries it on a conflict).
--   store:keys(prefix) -> sorted list of the live keys that start with prefix
--   store:advance(key, n, ttl) -> true when n is above the number stored at key (or none
--     is), which it now is (for ttl seconds); false otherwise (nonce counts: one atomic
--     step, the same count accepted once in all the processes sharing the store)
--   store:publish(channel, message) -> true: fn(message) of every subscriber of channel
--     (of every process sharing the store, this one too) runs in a luasip coroutine
--   store:subscribe(channel, fn(message | nil)) -> true, without waiting; fn(nil) tells
--     that messages may have been lost (a shared store's outage is over)
--   store:status() -> "up" | "down", why
--   store:purge() -> number of expired keys dropped;  store:close() -> true
-- Runtime failures (a server gone) return nil, message, code; misuse raises.
-- Expired keys vanish on access; a sweep of the whole table runs at most every
-- sweep_interval seconds, on a write, so no timer is needed.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local check = require "luasip.store.args"

local M = {}

local Store = {}
Store.__index = Store

-- copy(v, fname) -> deep copy of a serialisable value (core.copy_value, in C); raises on
-- anything else, or on a table nested more than 32 deep (a cycle?)
local copy_value = core.copy_value
local function copy(v, fname)
  local c, why = copy_value(v)
  if c == nil then error(fname .. ": " .. why, 3) end
  return c
end

-- memory{ clock = fn() -> seconds (default sip.now), sweep_interval = 60 } -> store
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("luasip.store.memory: options table expected", 2) end
  if opts.clock ~= nil and type(opts.clock) ~= "function" then
    error("luasip.store.memory: clock must be a function", 2)
  end
  local sweep = opts.sweep_interval or 60
  if type(sweep) ~= "number" or sweep < 0 then
    error("luasip.store.memory: sweep_interval must be a number >= 0", 2)
  end
  local clock = opts.clock or core.now
  return setmetatable({
    _data = {}, _expires = {}, _clock = clock, _sweep = sweep, _swept = clock(),
    _channels = {},
  }, Store)
end

function Store:now()
  return self._clock()
end

-- live(key, now) -> the stored value (not a copy) or nil; drops it if expired
local function live(self, key, now)
  local exp = self._expires[key]
  if exp and exp <= now then
    self._data[key], self._expires[key] = nil, nil
    return nil
  end
  return self._data[key]
end

function Store:purge()
  local now, n = self._clock(), 0
  for key, exp in pairs(self._expires) do
    if exp <= now then
      self._data[key], self._expires[key] = nil, nil
      n = n + 1
    end
  end
  self._swept = now
  return n
end

local function write(self, key, value, ttl, now)
  self._data[key] = value
  self._expires[key] = ttl and now + ttl or nil
  if now - self._swept >= self._sweep then self:purge() end
end

function Store:get(key)
  check.key(key, "luasip.store:get")
  local v = live(self, key, self._clock())
  if v == nil then return nil end
  return copy(v, "luasip.store:get")
end

function Store:set(key, value, ttl)
  check.key(key, "luasip.store:set")
  check.ttl(ttl, "luasip.store:set")
  if value == nil then error("luasip.store:set: value expected (use store:del)", 2) end
  write(self, key, copy(value, "luasip.store:set"), ttl, self._clock())
  return true
end

function Store:del(key)
  check.key(key, "luasip.store:del")
  self._data[key], self._expires[key] = nil, nil
  return true
end

function Store:update(key, fn)
  check.key(key, "luasip.store:update")
  if type(fn) ~= "function" then error("luasip.store:update: function expected", 2) end
  local now = self._clock()
  local old = live(self, key, now)
  if old ~= nil then old = copy(old, "luasip.store:update") end
  local new, ttl = fn(old, now)
  if new == false then return true end
  if new == nil then
    self._data[key], self._expires[key] = nil, nil
    return true
  end
  check.ttl(ttl, "luasip.store:update")
  write(self, key, copy(new, "luasip.store:update"), ttl, now)
  return true
end

function Store:advance(key, n, ttl)
  check.advance(key, n, ttl)
  local now = self._clock()
  local h = live(self, key, now)
  if type(h) == "number" and h >= n then return false end
  write(self, key, n, ttl, now)
  return true
end

function Store:publish(channel, message)
  check.publish(channel, message)
  local fns = self._channels[channel]
  if fns then
    for _, fn in ipairs(fns) do dispatcher.spawn(fn, message) end
  end
  return true
end

function Store:subscribe(channel, fn)
  check.subscribe(channel, fn)
  local fns = self._channels[channel] or {}
  self._channels[channel] = fns
  fns[#fns + 1] = fn
  return true
end

function Store:status() -- luacheck: ignore 212
  return "up"
end

function Store:keys(prefix)
  check.prefix(prefix)
  prefix = prefix or ""
  local now, list = self._clock(), {}
  for key in pairs(self._data) do
    if key:sub(1, #prefix) == prefix and live(self, key, now) ~= nil then
      list[#list + 1] = key
    end
  end
  table.sort(list)
  return list
end

function Store:close() -- luacheck: ignore 212
  return true
end

return M
