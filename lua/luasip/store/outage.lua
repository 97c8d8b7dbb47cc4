-- luasip.store.outage: how a handler answers a request when its store fails.  A store
-- that cannot be reached (code "unavailable": a Redis outage) gives 503 Service
-- Unavailable with Retry-After (RFC 3261 21.5.4): the outage is temporary, the store
-- reconnects by itself, and a phone or proxy that gets 503 tries again later or tries
-- another server (RFC 3263 4.3); any other store failure is a 500 of the server.
-- The handler logs nothing per request for an outage: the store logs it once per cause.
local dispatcher = require "luasip.dispatcher"

local M = {}

-- seconds a client is asked to wait: the Redis store's longest reconnect interval
M.RETRY_AFTER = 5

-- reply(req, what, err, code) -> nil, status, "store": answers req; what names the
-- store in the reason phrase ("Location" -> "Location Store Unavailable")
function M.reply(req, what, err, code)
  if code == "unavailable" then
    req:reply(503, what .. " Store Unavailable",
      { headers = { ["Retry-After"] = tostring(M.RETRY_AFTER) } })
    return nil, 503, "store"
  end
  dispatcher.log("error", what:lower() .. " store failed: " .. tostring(err))
  req:reply(500, what .. " Store Failure")
  return nil, 500, "store"
end

return M
