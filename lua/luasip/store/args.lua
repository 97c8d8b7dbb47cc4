-- luasip.store.args: the argument checks of the store interface, written once for every
-- store (memory, Redis); each raises at the level of the caller of the store method.
local M = {}

function M.key(key, fname)
  if type(key) ~= "string" then error(fname .. ": key must be a string", 3) end
end

-- ttl: nil (none) or seconds > 0
function M.ttl(ttl, fname)
  if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
    error(fname .. ": ttl must be a number of seconds > 0", 3)
  end
end

function M.prefix(prefix)
  if prefix ~= nil and type(prefix) ~= "string" then
    error("luasip.store:keys: prefix must be a string", 3)
  end
end

function M.advance(key, n, ttl)
  if type(key) ~= "string" then error("luasip.store:advance: key must be a string", 3) end
  if type(n) ~= "number" then error("luasip.store:advance: number expected", 3) end
  if type(ttl) ~= "number" or ttl <= 0 then
    error("luasip.store:advance: ttl must be a number of seconds > 0", 3)
  end
end

function M.publish(channel, message)
  if type(channel) ~= "string" or type(message) ~= "string" then
    error("luasip.store:publish: channel and message must be strings", 3)
  end
end

function M.subscribe(channel, fn)
  if type(channel) ~= "string" or type(fn) ~= "function" then
    error("luasip.store:subscribe: channel (string) and function expected", 3)
  end
end

return M
