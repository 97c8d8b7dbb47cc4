#!/usr/bin/env lua
--[[ bench/stateless.lua — the agent of bench/callgrind-stateless.sh: its OPTIONS handler
  is the smallest Lua handler, `req:reply(200)` (a stateless answer); a CANCEL that
  matches no INVITE is answered 481 by the core in C, without entering Lua. An OPTIONS
  to sip:stop@… answers and stops the loop, so the process exits and valgrind writes its
  profile.
Usage: lua bench/stateless.lua [host:port]     (loopback only; default 127.0.0.1:5060)
]]
local sip = require "luasip"

local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport
assert(host == "127.0.0.1" or host == "::1" or host == "localhost",
  "bench/stateless.lua listens on loopback only")
local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-bench" })

app:on("OPTIONS", function(req)
  req:reply(200)
  if req.ruri.user == "stop" then sip.stop() end
end)
sip.run()
