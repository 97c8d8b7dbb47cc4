-- sipp as a peer for specs: runs a scenario of spec/peers/sipp/ (or a built-in one) in
-- the background on 127.0.0.1, bounded in time, with its error and message traces kept
-- in a temporary directory for failure reports.  Stop every process with S.stop.
local H = require "spec.helper"

local S = {}

local DIR = "spec/peers/sipp/"

-- available() -> true if a sipp binary is on PATH
function S.available()
  local r = os.execute("command -v sipp >/dev/null 2>&1")
  return r == true or r == 0
end

-- udp_bound(port) -> true if something is bound to UDP 127.0.0.1:port (reads /proc)
function S.udp_bound(port)
  local f = io.open("/proc/net/udp")
  if not f then return false end
  local needle = (" 0100007F:%04X "):format(port)
  local s = f:read("*a")
  f:close()
  return s:find(needle, 1, true) ~= nil
end

local function slurp(path)
  local f = io.open(path)
  if not f then return "" end
  local s = f:read("*a")
  f:close()
  return s
end

-- run{ scenario = name in spec/peers/sipp/ | sn = built-in name, target = "host:port"
--      (UAC) | nil (UAS), port = local SIP port (default: OS-chosen), calls = 1,
--      extra = {args...}, timeout = 15 } -> proc (see H.background) with proc.port,
--      proc.report() (exit code, output, error and message traces)
function S.run(o)
  local port = o.port or H.free_port()
  -- media base and base+2 (what sipp binds) must be free: sipp exits when one is taken
  local mp = H.media_port()
  for _ = 1, 20 do
    if not (S.udp_bound(mp) or S.udp_bound(mp + 2)) then break end
    mp = H.media_port()
  end
  local timeout = o.timeout or 15
  local argv = o.scenario and { "sipp", "-sf", DIR .. o.scenario .. ".xml" }
    or { "sipp", "-sn", (assert(o.sn, "scenario or sn")) }
  local traces = os.tmpname()
  os.remove(traces)
  assert(os.execute("mkdir -p " .. H.shquote(traces)))
  for _, w in ipairs{ "-i", "127.0.0.1", "-p", tostring(port),
    "-mp", tostring(mp), "-m", tostring(o.calls or 1), "-nostdin",
    "-timeout", tostring(timeout), "-timeout_error",
    "-trace_err", "-error_file", traces .. "/errors.log",
    "-trace_msg", "-message_file", traces .. "/messages.log" } do
    argv[#argv + 1] = w
  end
  for _, w in ipairs(o.extra or {}) do argv[#argv + 1] = w end
  argv[#argv + 1] = o.target
  local p = H.background(argv, timeout + 5)
  p.port, p.mp = port, mp
  local kill = p.kill
  function p.kill()
    kill()
    os.execute("rm -rf " .. H.shquote(traces))
  end
  function p.messages() return slurp(traces .. "/messages.log") end
  function p.report()
    return ("sipp exit code %s\n--- output\n%s\n--- errors\n%s\n--- messages\n%s")
      :format(tostring(p.done()), p.log(), slurp(traces .. "/errors.log"), p.messages())
  end
  return p
end

-- stop(proc): stops a background process (H.background) and waits (bounded) for its end
-- before proc.kill removes its directory, so that the exit code it writes cannot
-- recreate the directory's contents behind rm -rf
function S.stop(p)
  if p.done() == nil then
    local f = io.open(p.dir .. "/pid")
    local pid = f and f:read("*l")
    if f then f:close() end
    if pid and pid:match("^%d+$") then
      os.execute("pkill -TERM -P " .. pid .. " 2>/dev/null")
      pcall(H.run_until, function() return p.done() ~= nil end, 5, "process end")
    end
  end
  p.kill()
end

-- wait(proc [, timeout=20]) -> exit code, after stepping the luasip loop until it ends
function S.wait(p, timeout)
  H.run_until(function() return p.done() ~= nil end, timeout or 20, "sipp exit")
  return p.done()
end

-- settle(proc [, timeout=5]) -> true once proc's UDP port is bound (and, for a sipp of
-- S.run, its media sockets too: sipp 3.6 binds its SIP port first, then media base and
-- base+2, and exits when one of those is taken -- a request sent in between got an ICMP
-- port unreachable, which nta reports as a 503 of its own); false if proc ended first
local function settle(p, timeout)
  local function bound()
    return S.udp_bound(p.port) and (not p.mp or S.udp_bound(p.mp + 2))
  end
  H.run_until(function() return p.done() ~= nil or bound() end, timeout or 5,
    "UDP port " .. p.port .. " bound")
  return p.done() == nil
end

-- wait_bound(proc [, timeout=5]): steps the loop until proc's ports are bound (settle)
function S.wait_bound(p, timeout)
  assert(settle(p, timeout), "exited before binding its port\n" .. (p.report and p.report()
    or p.log()))
end

-- uac(agent, scenario [, {timeout =, calls =}]) -> proc: sipp calls the agent; stopped
-- when the test ends
function S.uac(a, scenario, o)
  o = o or {}
  local p = S.run{ scenario = scenario, target = "127.0.0.1:" .. a:transports()[1].port,
    timeout = o.timeout or 10, calls = o.calls }
  H.defer(function() S.stop(p) end)
  return p
end

-- uas(scenario [, {timeout =}]) -> proc, its URI: sipp answers, once its ports are
-- bound; a sipp that exits before (one of its randomly chosen media ports was taken) is
-- started again on other ports, twice at most
function S.uas(scenario, o)
  o = o or {}
  local p
  for attempt = 1, 3 do
    local q = S.run{ scenario = scenario, timeout = o.timeout or 10 }
    H.defer(function() S.stop(q) end)
    p = q
    if attempt == 3 or settle(q) then break end
  end
  S.wait_bound(p)
  return p, "sip:sipp@127.0.0.1:" .. p.port
end

-- passed(proc [, timeout]): asserts that sipp ended with every call passed (exit code 0)
function S.passed(p, timeout)
  local rc = S.wait(p, timeout or 12)
  if rc ~= 0 then error(("expected sipp exit code 0, got %s\n%s"):format(tostring(rc), p.report()), 2) end
  if os.getenv("SIPP_DEBUG") then print(p.report()) end
end

return S
