--[[ bench/luaprof.lua — a crude Lua-level sampling profile for the bench responders:
  LUAPROF_OUT=/tmp/x.txt LUA_INIT=@bench/luaprof.lua lua5.4 bench/registrar.lua ...
  A count hook every LUAPROF_EVERY (1000) VM instructions, in the main thread and in every
  coroutine made by coroutine.create (each luasip handler runs in one);
  each hit counts the running Lua function and line (so: VM instructions, not time, and
  no C functions). The table,
  most frequent first, is rewritten to LUAPROF_OUT every 500 hits (the process is stopped
  by a signal, so it never writes at exit). Bench only: not for production.
]]
local out = assert(os.getenv("LUAPROF_OUT"), "LUAPROF_OUT not set")
local every = tonumber(os.getenv("LUAPROF_EVERY") or "") or 1000
local counts, fcounts, hits = {}, {}, 0
local getinfo, sethook, sort, pairs = debug.getinfo, debug.sethook, table.sort, pairs

local function dump()
  local f = io.open(out, "w")
  if not f then return end
  local function top(t, n, title)
    local list = {}
    for k, v in pairs(t) do list[#list + 1] = { k, v } end
    sort(list, function(a, b) return a[2] > b[2] end)
    f:write(title, "\n")
    for i = 1, math.min(n, #list) do
      f:write(string.format("%6.2f%%  %s\n", 100 * list[i][2] / hits, list[i][1]))
    end
  end
  f:write(string.format("%d samples, one per %d VM instructions\n", hits, every))
  top(fcounts, 25, "-- by function (where defined)")
  top(counts, 25, "-- by line")
  f:close()
end

local function hook()
  local info = getinfo(2, "Sl")
  if not info then return end
  local src = info.short_src
  local fk = src .. ":" .. (info.linedefined or 0)
  fcounts[fk] = (fcounts[fk] or 0) + 1
  local lk = src .. ":" .. (info.currentline or 0)
  counts[lk] = (counts[lk] or 0) + 1
  hits = hits + 1
  if hits % 500 == 0 then dump() end
end

-- every handler runs in a coroutine of its own: hook each one as it is made (and the
-- main thread)
local create = coroutine.create
coroutine.create = function(fn)   -- luacheck: ignore 122
  local co = create(fn)
  sethook(co, hook, "", every)
  return co
end
sethook(hook, "", every)
