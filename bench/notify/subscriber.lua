-- bench/notify/subscriber.lua PORT N: makes N presence subscriptions to the notifier
-- (200 at a time), answering every NOTIFY 200.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local sip = require "luasip"
local port, N = arg[1], tonumber(arg[2])
local app = assert(sip.agent{ listen = { "sip:127.0.0.1:0" } })
local ok, pending, got = 0, 0, 0
local function one()
  pending = pending + 1
  local res = app:request{ method = "SUBSCRIBE", uri = "sip:x@127.0.0.1:" .. port, dialog = true,
    headers = { Event = "presence", Expires = "3600" } }
  pending = pending - 1
  if res then ok = ok + 1; res.dialog:on("NOTIFY", function(req) got = got + 1; req:reply(200) end) end
end
sip.spawn(function()
  for _ = 1, N do
    while pending >= 200 do sip.sleep(0.005) end
    sip.spawn(one)
  end
  while pending > 0 do sip.sleep(0.01) end
  print("subscribed", ok); io.stdout:flush()
end)
sip.run()
