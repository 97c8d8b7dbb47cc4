#!/usr/bin/env lua
--[[ bench/registrar.lua — bench-only registrar for `BENCH_KINDS=register`: sip.registrar
  with digest authentication (sip.auth.authorizer), users u<N> with password pw<N> (the
  user space of ../shared/bench/reg.sh and Kamailio's registrar-auth configs).
Usage: lua bench/registrar.lua [host:port]
]]
local sip = require "luasip"
local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport
local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-bench-registrar" })
local function password(user)
  local n = user:match("^u(%d+)$")
  return n and ("pw" .. n) or nil
end
local registrar = sip.registrar{
  realm = host,
  authorize = sip.auth.authorizer{ realm = host, password = password },
}
app:on("REGISTER", function(req) registrar(req) end)
sip.run()
