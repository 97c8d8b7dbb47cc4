--[[ luasip.cluster — one application as N worker processes on one host (DESIGN D11).
  sip.cluster{ workers = N, listen = "sip:host:port" } is called near the top of the
  application's script.  In the process started by the user (the launcher) it never
  returns: it re-runs the same script N times as workers, each on a port of its own on
  the same address, and serves the public port itself as a stateless front (RFC 3261
  16.11: no transaction, no Lua: agent:spread in C) that spreads requests over the workers by a hash
  of their Call-ID, so a CANCEL, the ACK of a non-2xx or an in-dialog request that comes
  to the front reaches the worker that has the INVITE or the dialog.  Each worker's Via,
  Record-Route and Contact carry its own port: responses and requests along the route set
  go to it directly.  A worker that exits is restarted (with backoff) and takes requests
  again once it answers an OPTIONS probe; meanwhile its share goes to the next live one,
  and with none alive the front answers 503 + Retry-After.  SIGTERM or SIGINT to the
  launcher drains: new initial requests get 503, the workers get SIGTERM and finish the
  calls they have (bounded by `drain` seconds), then everything stops.  Workers die with
  the launcher (PR_SET_PDEATHSIG), so no process is ever orphaned.
  In a worker it returns the worker's node table (see M.start).
]]
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local class = require "luasip.class"

local M = {}

local OPTIONS = { workers = true, listen = true, ports = true, drain = true, busy = true,
  command = true, probe = true, user_agent = true }
local ENV = "LUASIP_CLUSTER_"

-- "sip:127.0.0.1:5060" -> "127.0.0.1", 5060 (an IPv6 host keeps its brackets)
local function split_listen(uri)
  local host, port = tostring(uri):match("^sip:(%[[^%]]+%]):(%d+)$")
  if not host then host, port = tostring(uri):match("^sip:([^:;]+):(%d+)$") end
  if not host then
    error('luasip.cluster: listen must be "sip:host:port" (an address, a port)', 3)
  end
  return host, tonumber(port)
end

-- the command that started this script: interpreter, its options, script, arguments
local function own_command()
  local a = rawget(_G, "arg")
  if type(a) ~= "table" or not a[0] then
    error("luasip.cluster: no global arg (embedded?): give command = { argv... }", 3)
  end
  local first = 0
  while a[first - 1] do first = first - 1 end
  local argv = {}
  for i = first, #a do argv[#argv + 1] = a[i] end
  return argv
end

-- the slot hash of a Call-ID: the one agent:spread uses (csrc/front.c)
M.hash = core.call_id_hash

-- ----------------------------------------------------------------- worker side

-- busy(): what a worker waits for when it drains, unless the application says
local function default_busy()
  collectgarbage()
  local st = core.stats()
  return (st["luasip.dialog"] or 0) > 0 or (st["luasip.proxy"] or 0) > 0
end

local function worker(opts)
  local node = { index = tonumber(os.getenv(ENV .. "WORKER")),
    workers = tonumber(os.getenv(ENV .. "WORKERS")),
    listen = os.getenv(ENV .. "LISTEN"), front = os.getenv(ENV .. "FRONT"),
    drain = tonumber(os.getenv(ENV .. "DRAIN")) or 30 }
  node.port = tonumber(node.listen:match(":(%d+)$"))
  local busy = opts.busy or default_busy
  -- SIGTERM (from the launcher's drain) stops sip.run; this hook keeps the loop turning
  -- until the calls in progress are over (sip.run{ shutdown_timeout = node.drain }
  -- gives it that long; run's default is 5 s)
  require("luasip").on_shutdown(function()
    local deadline = core.now() + node.drain
    while busy() and core.now() < deadline do dispatcher.sleep(0.1) end
  end)
  return node
end

-- ----------------------------------------------------------------- the front

-- the launcher's own lines (workers started, ready, ended; the drain) go to stderr
local function log(level, ...)
  io.stderr:write("luasip-cluster [", level, "] ", table.concat({ ... }, " "), "\n")
  io.stderr:flush()
end

local function free_port(host)
  local sip = require "luasip"
  local a = assert(sip.agent{ listen = { "sip:" .. host .. ":0" } })
  local port = a:transports()[1].port
  a:close()
  return port
end

local function launcher(opts)
  local sip = require "luasip"
  local n = opts.workers or 2
  if type(n) ~= "number" or n < 1 or n > 64 or n % 1 ~= 0 then
    error("luasip.cluster: workers must be an integer 1-64", 3)
  end
  local listen = opts.listen or "sip:127.0.0.1:5060"
  local host = split_listen(listen)
  local drain = opts.drain or 30
  local probe = opts.probe or 1
  local command = opts.command or own_command()
  local front = assert(sip.agent{ listen = { listen }, in_dialog = "handler", stateless = true,
    user_agent = opts.user_agent or "luasip-cluster", handler_timeout = false })
  local workers, draining = {}, false
  for i = 1, n do
    local p = opts.ports and opts.ports[i] or free_port(host)
    workers[i] = { index = i, port = p, uri = "sip:" .. host .. ":" .. p, state = "down",
      restart_at = 0, backoff = 0.5 }
  end

  local function start(w)
    local env = { ENV .. "WORKER=" .. w.index, ENV .. "WORKERS=" .. n,
      ENV .. "LISTEN=" .. w.uri, ENV .. "FRONT=" .. listen, ENV .. "DRAIN=" .. drain }
    local pid, err = core.spawn(command, env)
    if not pid then
      log("error", "worker", w.index, "cannot start:", err)
      w.restart_at = core.now() + w.backoff
      return
    end
    w.pid, w.state, w.started = pid, "starting", core.now()
    log("info", "worker", w.index, "started, pid", pid, "on", w.uri)
  end

  -- The front forwards in C (agent:spread, csrc/front.c): slot k's requests go to
  -- worker k, or the next one taking requests when it is not; none: 503 + Retry-After.
  -- Set again whenever a worker goes in or out of rotation and when draining starts.
  local function spread()
    local slots = {}
    for k = 1, n do
      slots[k] = false
      for j = 0, n - 1 do
        local w = workers[(k - 1 + j) % n + 1]
        if w.state == "up" then slots[k] = w.uri; break end
      end
    end
    front:spread(slots, { draining = draining })
  end
  local function set_state(w, state)
    if w.state ~= state then w.state = state; spread() end
  end
  spread()

  -- supervision: reap and restart (0.1 s), probe each worker until it answers
  local function probe_loop(w)
    while not (draining and not w.pid) do
      local pid = w.pid
      if pid then
        local res, _, code = front:request{ method = "OPTIONS", uri = w.uri, timeout = 2 }
        local alive = res ~= nil or type(code) == "number"
        if w.pid == pid then
          if alive and w.state ~= "up" then
            log("info", "worker", w.index, "ready")
            w.backoff = 0.5
            set_state(w, "up")
          elseif not alive and w.state == "up" then
            log("warn", "worker", w.index, "does not answer: out of rotation")
            set_state(w, "starting")
          end
        end
      end
      dispatcher.sleep(w.state == "up" and probe or 0.1)
    end
  end
  local function supervise()
    while true do
      local live = 0
      for _, w in ipairs(workers) do
        if w.pid then
          local how, code = core.wait(w.pid)
          if how then
            log(draining and "info" or "warn", "worker", w.index, "pid", w.pid, "ended:",
              tostring(how), tostring(code))
            -- died young: wait longer before the next start (up to 30 s)
            if core.now() - w.started < 5 then w.backoff = math.min(w.backoff * 2, 30) end
            w.pid, w.restart_at = nil, core.now() + w.backoff
            set_state(w, "down")
          end
        end
        if not w.pid and not draining and core.now() >= w.restart_at then start(w) end
        if w.pid then live = live + 1 end
      end
      if draining and live == 0 then return end
      dispatcher.sleep(0.1)
    end
  end

  sip.on_shutdown(function(signal)
    log("info", "draining on", tostring(signal))
    draining = true
    spread()
    for _, w in ipairs(workers) do if w.pid then core.kill(w.pid, "TERM") end end
    local deadline = core.now() + drain + 2
    local function live()
      local n_live = 0
      for _, w in ipairs(workers) do
        local how, code
        if w.pid then how, code = core.wait(w.pid) end
        if how then
          log("info", "worker", w.index, "pid", w.pid, "ended:", how, tostring(code))
          w.pid = nil
          set_state(w, "down")
        end
        if w.pid then n_live = n_live + 1 end
      end
      return n_live > 0
    end
    while live() and core.now() < deadline do dispatcher.sleep(0.1) end
    for _, w in ipairs(workers) do
      if w.pid then
        log("warn", "worker", w.index, "still running after the drain: killed")
        core.kill(w.pid, "KILL")
      end
    end
  end)
  for _, w in ipairs(workers) do start(w) end
  for _, w in ipairs(workers) do dispatcher.spawn(probe_loop, w) end
  dispatcher.spawn(supervise)
  log("info", "front on", listen, "with", n, "workers, pid", core.getpid())
  sip.run{ shutdown_timeout = drain + 5 }
  -- sip.run returned by sip.stop() rather than a signal: stop the workers now
  for _, w in ipairs(workers) do
    if w.pid and not core.wait(w.pid) then
      core.kill(w.pid, "KILL")
      while not core.wait(w.pid) do core.step(10) end
    end
  end
  front:close()
  os.exit(0, true)
end

-- start{ workers = N (2), listen = "sip:host:port" ("sip:127.0.0.1:5060"),
--   ports = { port... } (OS-chosen), drain = seconds (30), probe = seconds (1),
--   busy = fn() -> boolean (in a worker), command = { argv... } (this script again),
--   user_agent = } -> node (in a worker; never returns in the launcher)
-- node = { index =, workers =, listen = "sip:host:port" (the worker's),
--   port =, front = (the public URI), drain = }
function M.start(opts)
  if type(opts) ~= "table" then error("luasip.cluster: options table expected", 2) end
  class.check_options(opts, OPTIONS, "luasip.cluster")
  if opts.busy ~= nil and type(opts.busy) ~= "function" then
    error("luasip.cluster: busy must be a function", 2)
  end
  if os.getenv(ENV .. "WORKER") then return worker(opts) end
  return launcher(opts)
end

return M
