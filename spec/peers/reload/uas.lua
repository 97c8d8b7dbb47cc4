-- A UAS for spec/reload_spec.lua: its handlers come from reload_uas_app.lua, reloaded on
-- SIGHUP.  Usage: lua uas.lua host:port ready-file   (writes "ready\n" when listening)
local here = arg[0]:match("^(.*)[/\\]") or "."
package.path = here .. "/?.lua;" .. package.path
local sip = require "luasip"

local a = assert(sip.agent{ listen = { "sip:" .. arg[1] } })
assert(a:load("reload_uas_app"))
sip.on_signal("HUP", function()
  local ok, err = sip.reload("reload_uas_app")
  print(ok and "reloaded" or ("reload failed: " .. tostring(err)))
  io.stdout:flush()
end)
local f = assert(io.open(arg[2], "w"))
f:write("ready\n")
f:close()
sip.run()
