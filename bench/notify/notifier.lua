-- bench/notify/notifier.lua PORT N: a presence notifier; once N subscriptions exist it
-- prints Lua heap and RSS per subscription, then times three notify() fan-outs to all N.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path
local sip = require "luasip"
local port, N = arg[1], tonumber(arg[2])
local app = assert(sip.agent{ listen = { "sip:127.0.0.1:" .. port } })
local h, presence = sip.events{ package = "presence" }
app:on("SUBSCRIBE", h)
local function rss()
  local f = io.open("/proc/self/status"); local s = f:read("*a"); f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)"))
end
collectgarbage(); collectgarbage()
local kb0, rss0 = collectgarbage("count"), rss()
print("ready"); io.stdout:flush()
sip.spawn(function()
  while presence.count < N do sip.sleep(0.05) end
  sip.sleep(0.5)
  collectgarbage(); collectgarbage()
  local kb1, rss1 = collectgarbage("count"), rss()
  print(("subs=%d lua_kb_per_sub=%.2f rss_kb_per_sub=%.2f"):format(presence.count,
    (kb1 - kb0) / N, (rss1 - rss0) / N))
  local res = "sip:x@127.0.0.1:" .. port
  for round = 1, 3 do
    local subs = presence:subscriptions(res)
    local before = 0
    for _, s in ipairs(subs) do before = before + s.notified end
    local t0 = sip.now()
    presence:notify(res, "<round" .. round .. "/>")
    local done
    repeat
      sip.sleep(0.001)
      done = 0
      for _, s in ipairs(subs) do done = done + s.notified end
    until done - before >= #subs or sip.now() - t0 > 30
    local dt = sip.now() - t0
    print(("round %d: %d NOTIFYs answered in %.3f s = %.0f/s"):format(round, done - before, dt, (done - before) / dt))
    io.stdout:flush()
  end
  sip.stop()
end)
sip.run()
