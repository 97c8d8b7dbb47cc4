-- bench/soak-pbx.lua: examples/pbx.lua with a sampler, for bench/soak.sh.  Every
-- SOAK_SAMPLE seconds (5) it appends one line to $SOAK_SAMPLES:
--   seconds rss_kb fds lua_kb objects requests dialogs client_txs
-- (objects: every live C object of sip.stats(); the process's RSS and open descriptors
-- from /proc/self).  Usage: lua bench/soak-pbx.lua host:port
local sip = require "luasip"

local out = assert(os.getenv("SOAK_SAMPLES"), "SOAK_SAMPLES: the samples file")
local every = tonumber(os.getenv("SOAK_SAMPLE") or "") or 5
local t0 = sip.now()

local function rss_kb()
  local f = io.open("/proc/self/status")
  if not f then return 0 end
  local s = f:read("*a")
  f:close()
  return tonumber(s:match("VmRSS:%s*(%d+)")) or 0
end

local pid do
  local f = assert(io.open("/proc/self/stat"))
  pid = f:read("*l"):match("^%d+")
  f:close()
end

local function fds()
  local p = io.popen("ls /proc/" .. pid .. "/fd")
  local n = 0
  for _ in p:lines() do n = n + 1 end
  p:close()
  return n - 1                       -- (the pipe from ls)
end

local function sample()
  local st, objects = sip.stats(), 0
  for _, n in pairs(st) do objects = objects + n end
  local f = assert(io.open(out, "a"))
  f:write(("%.1f %d %d %d %d %d %d %d\n"):format(sip.now() - t0, rss_kb(), fds(),
    math.floor(collectgarbage("count")), objects, st["luasip.request"] or 0,
    st["luasip.dialog"] or 0, st["luasip.client_tx"] or 0))
  f:close()
  sip.timer(every, sample)
end
sip.timer(every, sample)

arg = { [0] = "examples/pbx.lua", arg[1] }   -- luacheck: ignore 121 (pbx.lua reads arg)
dofile("examples/pbx.lua")
