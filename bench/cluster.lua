#!/usr/bin/env lua
--[[ bench/cluster.lua — the scaling rows of bench/scaling.sh: runs an application
  script (examples/uas.lua, bench/registrar.lua) as $WORKERS worker processes behind
  luasip's stateless front on host:port (sip.cluster; drain 1 s).  Each worker runs the
  script with its own listen address as arg[1].
Usage: WORKERS=n lua bench/cluster.lua host:port script     (loopback only)
]]
local sip = require "luasip"

local hostport, script = arg and arg[1], arg and arg[2]
assert(hostport and script, "usage: WORKERS=n lua bench/cluster.lua host:port script")
local host = hostport:match("^%[?([^%]]+)%]?:%d+$")
assert(host == "127.0.0.1" or host == "::1", "bench/cluster.lua listens on loopback only")
local node = sip.cluster{ workers = tonumber(os.getenv("WORKERS") or "") or 2,
  listen = "sip:" .. hostport, drain = 1 }
-- a worker: the application as if started with its own address
rawset(_G, "arg", { [0] = script, (node.listen:gsub("^sip:", "")) })
dofile(script)
