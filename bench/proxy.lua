#!/usr/bin/env lua
--[[ bench/proxy.lua — bench-only record-routing stateful proxy for `BENCH_KINDS=proxy`:
  the routing logic of Kamailio's ../shared/bench/kamailio/proxy.lua (proxy-lua.cfg),
  written with luasip's API, so the two can be measured on the same work:
    * Max-Forwards 0: 483 Too Many Hops (req:proxy decrements it, adds it when absent);
    * a request with a To tag follows the Record-Route set when its top Route is ours
      (loose routing: ACK of a 2xx forwarded statelessly, the rest proxied statefully
      to the Request-URI); an ACK not routed here is dropped; anything else 404 Not here;
    * CANCEL and retransmissions of initial requests: absorbed by the core's transactions;
    * an initial request: Route removed, Record-Route added to INVITE and SUBSCRIBE,
      relayed statefully to its Request-URI (no location lookup: the Request-URI is
      the target, as in Kamailio's script).
Usage: lua bench/proxy.lua [host:port]     (loopback only; default 127.0.0.1:5060)
]]
local sip = require "luasip"

local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport
assert(host == "127.0.0.1" or host == "::1" or host == "localhost",
  "bench/proxy.lua listens on loopback only")

local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-bench-proxy",
  in_dialog = "handler" })

-- loose_route: is the top Route this proxy (the Record-Route it inserted)?
local function loose_route(req) return req:loose_route() end

local record = { INVITE = true, SUBSCRIBE = true }

local function route(req)
  if req.max_forwards == 0 then return req:reply(483, "Too Many Hops") end
  if req.to_tag then
    if loose_route(req) then return req:proxy(req.uri) end
    return req:reply(404, "Not here")
  end
  -- initial request: a Route naming us is removed by req:proxy; other Routes are kept
  -- by it, Kamailio's script removes them all: none occur in this benchmark
  return req:proxy(req.uri, record[req.method] and { record_route = true } or nil)
end

for _, m in ipairs{ "INVITE", "BYE", "OPTIONS", "INFO", "UPDATE", "MESSAGE", "NOTIFY",
                    "SUBSCRIBE", "REFER", "PRACK", "PUBLISH", "REGISTER" } do
  app:on(m, route)
end
-- ACK of a 2xx (a non-2xx ACK is absorbed by the INVITE's transaction): along the Route
app:on("ACK", function(ack)
  if ack.to_tag and loose_route(ack) then ack:forward() end
end)

sip.run()
