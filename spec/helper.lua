-- Shared spec helpers: agents on 127.0.0.1 with OS-chosen ports, a bounded loop driver,
-- coroutine runners and log capture.  Loaded by busted before every spec file.
package.path = "lua/?.lua;lua/?/init.lua;" .. package.path

local sip = require "luasip"
local testing = require "luasip.testing"

local H = { sip = sip }

-- Under scripts/check-asan.sh the sanitizer runtime is preloaded into the interpreter;
-- child processes (sipp, python, pkill, example scripts) must not inherit it (procps'
-- pkill deadlocks under it), so every command the specs run drops LD_PRELOAD, and the
-- Lua ones load the plain core.so (the ASan one aborts without the runtime first).
if os.getenv("LUASIP_SANITIZER") then
  local execute, popen = os.execute, io.popen
  local function plain(cmd)
    cmd = tostring(cmd):gsub("build/asan/", "build/5.4/")
    return "env -u LD_PRELOAD LUA_CPATH='build/5.4/?.so;;' sh -c '" .. cmd:gsub("'", "'\\''")
      .. "'"
  end
  os.execute = function(cmd, ...)       -- luacheck: ignore 122
    if cmd == nil then return execute() end
    return execute(plain(cmd), ...)
  end
  io.popen = function(cmd, ...) return popen(plain(cmd), ...) end  -- luacheck: ignore 122
end

local open_agents = {}

-- under valgrind every handler runs ~50 times slower: no runaway-script limit
-- (spec/watchdog_spec.lua sets its own)
if os.getenv("LUASIP_VALGRIND") then sip.cpu_limit(false) end

-- agent([opts]) -> an agent on 127.0.0.1 (UDP+TCP, OS-chosen port), closed after the test
function H.agent(opts)
  opts = opts or {}
  opts.listen = opts.listen or { "sip:127.0.0.1:0" }
  -- under valgrind every request waits long in the socket: load shedding would answer
  -- the specs' own calls 503
  if opts.overload == nil and os.getenv("LUASIP_VALGRIND") then opts.overload = false end
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

-- pcall across a yield works on LuaJIT and Lua 5.2+, not on plain Lua 5.1
local YIELDING_PCALL = rawget(_G, "jit") ~= nil or _VERSION ~= "Lua 5.1"
local dispatcher = require "luasip.dispatcher"

-- run(fn [, timeout]) -> results of fn, run in a luasip coroutine while the loop turns;
-- an error in fn is raised here, with fn's traceback
function H.run(fn, timeout)
  local done, res, err
  local function until_done()
    H.run_until(function() return done or err ~= nil end, timeout or 10, "coroutine end")
  end
  if YIELDING_PCALL then
    sip.spawn(function()
      local ok, r = xpcall(function() return { fn() } end, debug.traceback)
      if ok then res = r else err = r end
      done = true
    end)
    until_done()
  else
    -- no xpcall around fn (it yields): its coroutine dies with the error, which the
    -- dispatcher hands to its spawn error hook (after logging it)
    local mine
    local prev = dispatcher.spawn_error
    dispatcher.set_spawn_error(function(e, co)
      if co == mine then err = debug.traceback(co, tostring(e)) elseif prev then prev(e, co) end
    end)
    sip.spawn(function()
      mine = coroutine.running()
      res = { fn() }
      done = true
    end)
    local ok, e = pcall(until_done)
    dispatcher.set_spawn_error(prev)
    if not ok then error(e, 2) end
  end
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
H.interpreter = testing.interpreter

-- read_file(path) -> its contents, or nil when it cannot be opened
function H.read_file(path)
  local f = io.open(path)
  if not f then return nil end
  local s = f:read("*a")
  f:close()
  return s
end

-- a free UDP/TCP port on 127.0.0.1 chosen by the OS (bound by a throwaway agent)
H.free_port = testing.free_port

-- defer(fn): runs fn when the current test ends, after the functions deferred later.
-- busted keeps only the last `finally` of a test; a test that starts several processes
-- defers the stop of each.  busted's `finally` lives in the spec file's environment, so
-- a spec file hands it over once, looked up when a test runs:
--   local defer = H.defer_with(function(f) finally(f) end)
local deferred, busted_finally = {}, nil
function H.defer_with(fin)
  busted_finally = fin
  return H.defer
end

function H.defer(fn)
  deferred[#deferred + 1] = fn
  assert(busted_finally, "H.defer: call H.defer_with(finally) in the spec file first")
  busted_finally(function()
    local list = deferred
    deferred = {}
    for i = #list, 1, -1 do pcall(list[i]) end
  end)
end

local function shquote(s) return "'" .. tostring(s):gsub("'", "'\\''") .. "'" end
H.shquote = shquote

-- have(cmd) -> boolean: cmd is on PATH (an external peer a spec needs)
function H.have(cmd)
  local ok = os.execute("command -v " .. shquote(cmd) .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

-- test_certs() -> dir: a private directory (0700) with the certificates of
-- spec/peers/make-certs.sh (ca, server, wrong, expired: .pem and .key), made by the
-- openssl CLI; the caller removes it (os.execute("rm -rf " .. H.shquote(dir)))
function H.test_certs()
  local dir = os.tmpname()
  os.remove(dir)
  local ok = os.execute("mkdir -m 700 " .. shquote(dir) .. " && sh spec/peers/make-certs.sh "
    .. shquote(dir) .. " >/dev/null 2>&1")
  assert(ok == true or ok == 0, "openssl could not make the test certificates")
  return dir
end

-- background(argv, max_seconds) -> proc: runs a command (list of words) in the
-- background, bounded by timeout(1) (luasip.testing.process).  proc:done() -> exit code
-- or nil; proc:log(); proc:kill().  Always kill in `finally` (busted keeps only the last
-- finally of a test: one finally must stop every process the test started).
function H.background(argv, max_seconds)
  return testing.process(argv, { max_seconds = max_seconds or 30 })
end

-- send_raw(port, bytes [, proto = "udp", timeout = 3, all]) -> the status line of the
-- first final answer to bytes sent to 127.0.0.1:port by spec/peers/rawsip.py (the last
-- provisional one when no final came), or "NONE" when none came within timeout seconds;
-- with all, the status lines of every answer up to the final one, joined by " | "; with
-- all = "reply", the whole final answer (its CRLFs kept)
function H.send_raw(port, msg, proto, timeout, all)
  local file = os.tmpname()
  local f = assert(io.open(file, "wb"))
  f:write(msg)
  f:close()
  local p = H.background({ "python3", "spec/peers/rawsip.py", tostring(port), file,
    proto or "udp", tostring(timeout or 3), all == "reply" and "reply" or all and "all" or nil },
    10)
  local ok, err = pcall(H.run_until, function() return p.done() end, 10, "rawsip.py")
  local line = all == "reply" and p.log() or p.log():gsub("%s+$", "")
  p.kill()
  os.remove(file)
  if not ok then error(err, 2) end
  return line
end

-- raw_request(method, uri [, extra, content_length = "0", body]) -> the bytes of a request
-- for send_raw: a unique Call-ID and branch, From/To/CSeq/Max-Forwards, then the extra
-- header lines (each ending in CRLF), Content-Length and the body
local raw_n = 0
function H.raw_request(method, uri, extra, content_length, body)
  raw_n = raw_n + 1
  local id = ("%d-%d@raw"):format(os.time(), raw_n)
  return table.concat{
    method, " ", uri, " SIP/2.0\r\n",
    "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK", (id:gsub("[^%w]", "")), "\r\n",
    "From: <sip:a@127.0.0.1>;tag=1\r\nTo: <sip:x@127.0.0.1>\r\n",
    "Call-ID: ", id, "\r\nCSeq: 1 ", method, "\r\nMax-Forwards: 70\r\n",
    extra or "", "Content-Length: ", content_length or "0", "\r\n\r\n", body or "" }
end

-- a base port for sipp's media sockets (-mp): sipp binds base..base+3 (audio and video
-- RTP/RTCP), so an OS-chosen single free port can collide on base+2; take them below
-- the kernel's ephemeral range (32768-60999), where nothing else on loopback binds
math.randomseed(os.time() + math.floor(os.clock() * 1e6))
function H.media_port()
  return 16384 + 4 * math.random(0, 4000)
end

-- a sipp run against target (host:port) with a scenario file; returns the process
function H.sipp(scenario, target, extra, max_seconds)
  local argv = { "sipp", "-sf", scenario, "-i", "127.0.0.1", "-p", tostring(H.free_port()),
    "-mp", tostring(H.media_port()), "-m", "1", "-nostdin", "-timeout", tostring(max_seconds or 20),
    "-timeout_error" }
  for _, w in ipairs(extra or {}) do argv[#argv + 1] = w end
  argv[#argv + 1] = target
  return H.background(argv, (max_seconds or 20) + 5)
end

-- redis_server(port, dir [, extra args]) -> proc: a redis-server on 127.0.0.1:port (its
-- files in dir), once it answers; kill it in `finally`
function H.redis_server(port, dir, extra)
  local argv = { "redis-server", "--port", tostring(port), "--bind", "127.0.0.1",
    "--save", "", "--dir", dir }
  for _, w in ipairs(extra or { "--appendonly", "no" }) do argv[#argv + 1] = w end
  local server = H.background(argv, 300)
  local c
  H.run(function()
    local t0 = sip.now()
    repeat                         -- until the server listens (bounded)
      c = sip.redis{ host = "127.0.0.1", port = port, timeout = 1 }
      if not c then sip.sleep(0.05) end
    until c or sip.now() - t0 > 10 or server.done()
  end, 15)
  assert(c, "redis-server did not start: " .. server.log())
  H.run(function() c:close() end)
  return server
end

return H
