#!/usr/bin/env lua
--[[ workers.lua — a registrar, a record-routing proxy and a presence server run as N
  worker processes behind luasip's stateless front (sip.cluster; README "Scaling out").
  The front listens on host:port and spreads requests over the workers by Call-ID; each
  worker listens on a port of its own and puts it in Via, Record-Route and Contact.
  With $REDIS (host:port or a Unix socket path) registrations, subscriptions and
  publications are in Redis, so a user registered through one worker is reached by a
  call or MESSAGE that another worker handles; without it each worker has its own.
  Each worker's responses carry `Server: luasip-worker-<n>`.
Usage: lua examples/workers.lua [host:port]     (default 127.0.0.1:5060)
  WORKERS=n (default 2); SIGTERM drains: new calls get 503, current ones finish (30 s)
]]
local sip = require "luasip"

local hostport = arg and arg[1] or "127.0.0.1:5060"
local calls = {}                   -- Call-ID -> true: calls connected, until their BYE
local node = sip.cluster{ workers = tonumber(os.getenv("WORKERS") or "") or 2,
  listen = "sip:" .. hostport, busy = function() return next(calls) ~= nil end }
-- from here on this is one worker, listening on node.listen

local store
if os.getenv("REDIS") then
  local rh, rp = os.getenv("REDIS"):match("^%[?([^%]]+)%]?:(%d+)$")
  store = assert(sip.store.redis{ path = not rh and os.getenv("REDIS") or nil, host = rh,
    port = tonumber(rp), prefix = os.getenv("REDIS_PREFIX") })
end

local app = assert(sip.agent{ listen = node.listen, in_dialog = "handler",
  user_agent = "luasip-worker-" .. node.index })
local registrar, location = sip.registrar{ store = store }
local on_subscribe, presence = sip.events{ package = "presence", store = store }
local on_publish = sip.publications{ package = "presence", notifier = presence, store = store }
app:on("REGISTER", registrar)
app:on("SUBSCRIBE", on_subscribe)
app:on("PUBLISH", on_publish)

-- in-dialog requests only along the Record-Route this worker put in (no open relay)
local function in_dialog(req)
  if req:loose_route() then return req:proxy(req.uri) end
  return req:reply(403, "Not Routed Here")
end
app:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)
app:on("BYE", function(req)
  in_dialog(req)
  calls[req.call_id] = nil
end)
local function route(req)
  if req.to_tag then return in_dialog(req) end
  local targets = location:lookup(req.uri) or {}
  if #targets == 0 then return req:reply(480, "Temporarily Unavailable") end
  local invite = req.method == "INVITE"
  local res = req:proxy(targets, { record_route = invite })
  if invite and res then calls[req.call_id] = true end
end
app:on("INVITE", route)
app:on("MESSAGE", route)
app:on("OPTIONS", function(req) req:reply(200) end)

sip.run{ shutdown_timeout = node.drain }
