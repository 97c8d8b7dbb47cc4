-- bench/soak-pbx.lua: examples/pbx.lua with a sampler, for bench/soak.sh.  Every
-- SOAK_SAMPLE seconds (5) it appends one line to $SOAK_SAMPLES:
--   seconds rss_kb fds lua_kb objects requests dialogs client_txs cpu_s lag_ms gc_ms
-- (lag_ms: the longest the loop was late for a 10 ms timer since the last sample; each
-- lateness over 100 ms is also logged with the Lua heap.  lua_kb and the objects are
-- counted after a full collection, which took gc_ms: what is live, not how far the
-- incremental collector happens to be in its cycle (between two cycles the garbage
-- userdata double or halve the count).  That pause is not counted in lag_ms.)
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

local function cpu_s()                 -- utime + stime of this process, seconds
  local f = io.open("/proc/self/stat")
  if not f then return 0 end
  local line = f:read("*l")
  f:close()
  local rest = line:match("%) (.*)$")
  local fields = {}
  for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
  return (tonumber(fields[12]) + tonumber(fields[13])) / 100   -- (fields 14, 15; USER_HZ)
end

local max_lag, tick_due, skip_lag = 0, nil, false
local function tick()
  local now = sip.now()
  if tick_due and skip_lag then
    skip_lag = false
  elseif tick_due then
    local lag = (now - tick_due) * 1000
    if lag > max_lag then max_lag = lag end
    if lag > 100 then
      io.stderr:write(("stall %.0f ms at %.1f s, lua_kb %d\n"):format(lag, now - t0,
        math.floor(collectgarbage("count"))))
    end
  end
  tick_due = now + 0.01
  sip.timer(0.01, tick)
end
tick()

local function sample()
  local g0 = sip.now()
  collectgarbage("collect")
  local gc_ms = (sip.now() - g0) * 1000
  skip_lag = true                 -- the next tick is late by this collection: not counted
  local st, objects = sip.stats(), 0
  for _, n in pairs(st) do objects = objects + n end
  local f = assert(io.open(out, "a"))
  f:write(("%.1f %d %d %d %d %d %d %d %.2f %.0f %.1f\n"):format(sip.now() - t0, rss_kb(),
    fds(), math.floor(collectgarbage("count")), objects, st["luasip.request"] or 0,
    st["luasip.dialog"] or 0, st["luasip.client_tx"] or 0, cpu_s(), max_lag, gc_ms))
  max_lag = 0
  f:close()
  if os.getenv("SOAK_STATS") then              -- every class, to the PBX's log
    local parts = {}
    for k, n in pairs(st) do parts[#parts + 1] = k:gsub("^luasip%.", "") .. "=" .. n end
    table.sort(parts)
    io.stderr:write("stats ", table.concat(parts, " "), "\n")
  end
  sip.timer(every, sample)
end
sip.timer(every, sample)

arg = { [0] = "examples/pbx.lua", arg[1] }   -- luacheck: ignore 121 (pbx.lua reads arg)
dofile("examples/pbx.lua")
