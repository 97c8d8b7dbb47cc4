-- A UAS for spec/resolver_spec.lua: answers INVITE 200 (T1 = 20 ms, so a 2xx never ACKed
-- gets its BYE after 1.28 s) and OPTIONS 200; prints "port N", then log lines.
local sip = require "luasip"
sip.set_logger(function(level, msg)
  io.stdout:write(level, " ", msg, "\n")
  io.stdout:flush()
end, "debug")
local a = assert(sip.agent{ listen = "sip:127.0.0.1:0;transport=udp", t1 = 0.02 })
a:on("INVITE", function(req) req:reply(200) end)
a:on("OPTIONS", function(req) req:reply(200) end)
io.stdout:write("port ", a:transports()[1].port, "\n")
io.stdout:flush()
sip.timer(tonumber(arg[1]) or 10, function() sip.stop() end)
sip.run()
a:close()
