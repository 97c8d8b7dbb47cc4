-- Shared spec helpers: agents on 127.0.0.1 with OS-chosen ports, a bounded loop driver,
-- coroutine runners and log capture.  Loaded by busted before every spec file.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local sip = require "luasip"

local H = { sip = sip }

local open_agents = {}

-- agent([opts]) -> an agent on 127.0.0.1 (UDP+TCP, OS-chosen port), closed after the test
function H.agent(opts)
  opts = opts or {}
  opts.listen = opts.listen or { "sip:127.0.0.1:0" }
  local a = assert(sip.agent(opts))
  open_agents[#open_agents + 1] = a
  return a
end

-- closes every agent made by H.agent; returns how many were still open
function H.close_agents()
  local n = 0
  for _, a in ipairs(open_agents) do
    if not a:closed() then
      n = n + 1
      a:close()
    end
  end
  open_agents = {}
  return n
end

-- run_until(pred [, timeout=5]): steps the loop until pred() is true; fails on timeout
function H.run_until(pred, timeout, what)
  timeout = timeout or 5
  local t0 = sip.now()
  while not pred() do
    if sip.now() - t0 > timeout then
      error(("run_until: %s not reached within %gs"):format(what or "condition", timeout), 2)
    end
    sip.step(10)
  end
end

-- run(fn [, timeout]) -> results of fn, run in a luasip coroutine while the loop turns
function H.run(fn, timeout)
  local done, res, err
  sip.spawn(function()
    local ok, r = xpcall(function() return { fn() } end, debug.traceback)
    if ok then res = r else err = r end
    done = true
  end)
  H.run_until(function() return done end, timeout or 10, "coroutine end")
  if err then error(err, 2) end
  return (table.unpack or unpack)(res)
end

-- step for a while (bounded), for checking that something does NOT happen
function H.settle(seconds)
  local t0 = sip.now()
  while sip.now() - t0 < seconds do sip.step(10) end
end

-- capture_logs() -> list of {level, msg}; restore with the returned function
function H.capture_logs()
  local logs = {}
  local old = sip.set_logger(function(level, msg) logs[#logs + 1] = { level = level, msg = msg } end)
  return logs, function() sip.set_logger(old) end
end

-- the Lua interpreter running the suite, for starting example scripts
function H.interpreter()
  local i = -1
  while arg and arg[i - 1] do i = i - 1 end
  return arg and arg[i] or "lua5.4"
end

-- a free UDP/TCP port on 127.0.0.1 chosen by the OS (bound by a throwaway agent)
function H.free_port()
  local a = assert(sip.agent{ listen = { "sip:127.0.0.1:0" } })
  local port = a:transports()[1].port
  a:close()
  return port
end

return H
