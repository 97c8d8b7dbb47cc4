local H = require "spec.helper"
local sip = H.sip

-- sip.reload: application modules (agent:load) swapped while calls go on, in-process;
-- sip.on_signal; and a child process reloaded by SIGHUP under sipp load.

-- a temporary directory on package.path for the application modules of a test
local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. H.shquote(dir)))
package.path = dir .. "/?.lua;" .. package.path

local serial = 0
local function write(name, source)
  local f = assert(io.open(dir .. "/" .. name .. ".lua", "w"))
  f:write(source)
  f:close()
end

-- an application module of version v: INVITE answered with X-Version: v, INFO in its
-- dialogs answered with the version that answered the call, BYEs and MESSAGEs recorded
local function app_source(v)
  return ([[
local sip = require "luasip"
local V = "%s"
return function(agent, seen)
  agent:on("INVITE", function(req)
    local d = assert(req:answer{ headers = { ["X-Version"] = V } })
    d:on("INFO", function(info) info:reply(200, { headers = { ["X-Version"] = V } }) end)
    d:on("BYE", function() seen[#seen + 1] = "bye " .. V end)
  end)
  agent:on("MESSAGE", function(req)
    if req.body == "slow" then
      seen[#seen + 1] = "waiting " .. V
      sip.sleep(0.3)
    end
    req:reply(200, { headers = { ["X-Version"] = V } })
  end)
end
]]):format(v)
end

-- a new module name with version 1 written; -> name
local function new_app(source)
  serial = serial + 1
  local name = "reload_app_" .. serial
  write(name, source or app_source("1"))
  return name
end

-- run(fn) -> what fn returns, run in a luasip coroutine while the loop turns (H.run
-- without its xpcall: Lua 5.1 cannot yield across it); a failure is the logged error
local unpack = table.unpack or unpack
local last_error
local function run(fn)
  local res
  local co = sip.spawn(function() res = { fn() } end)
  H.run_until(function() return res or coroutine.status(co) == "dead" end, 10,
    "coroutine end")
  if not res then error(last_error or "coroutine failed", 2) end
  return unpack(res)
end

local function message(from, to, body)
  local res, err = from:request{ method = "MESSAGE", uri = to:uri("app"), body = body or "hi",
    content_type = "text/plain" }
  assert(res, err)
  return res
end

describe("sip.reload", function()
  local logs, restore
  before_each(function()
    logs = {}
    local old = sip.set_logger(function(level, msg)
      logs[#logs + 1] = { level = level, msg = msg }
      if msg:find("^handler failed") then last_error = msg end
    end)
    restore = function() sip.set_logger(old) end
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)
  teardown(function() os.execute("rm -rf " .. H.shquote(dir)) end)

  local function logged(level, pattern)
    for _, l in ipairs(logs) do
      if l.level == level and l.msg:find(pattern, 1, true) then return l.msg end
    end
  end

  it("keeps an established call on the code that answered it; new calls get the new code",
    function()
      local a, b = H.agent(), H.agent()
      local seen = {}
      local name = new_app()
      assert.is_true(b:load(name, seen))
      local d1, r1 = run(function() return a:invite{ uri = b:uri("app") } end)
      assert(d1, r1)
      assert.equal("1", r1:header("X-Version"))
      write(name, app_source("2"))
      assert.is_true(sip.reload(name))
      -- the old call: its dialog handlers are version 1's
      local info = run(function() return assert(d1:request("INFO")) end)
      assert.equal("1", info:header("X-Version"))
      -- a new call: version 2
      local d2, r2 = run(function() return a:invite{ uri = b:uri("app") } end)
      assert(d2, r2)
      assert.equal("2", r2:header("X-Version"))
      run(function() assert(d1:bye()); assert(d2:bye()) end)
      H.run_until(function() return #seen == 2 end, 5, "both BYEs handled")
      table.sort(seen)
      assert.same({ "bye 1", "bye 2" }, seen)
    end)

  it("lets a handler waiting in sip.sleep finish on the code it started with", function()
    local a, b = H.agent(), H.agent()
    local seen = {}
    local name = new_app()
    assert.is_true(b:load(name, seen))
    local slow
    sip.spawn(function() slow = message(a, b, "slow") end)
    H.run_until(function() return seen[1] == "waiting 1" end, 5, "handler waiting")
    write(name, app_source("2"))
    assert.is_true(sip.reload(name))
    local quick = run(function() return message(a, b) end)
    assert.equal("2", quick:header("X-Version"))
    assert.is_nil(slow)                      -- still sleeping on version 1
    H.run_until(function() return slow end, 5, "slow MESSAGE answered")
    assert.equal(200, slow.status)
    assert.equal("1", slow:header("X-Version"))
  end)

  local BROKEN = {
    { "a syntax error", "return function(agent) agent:on('MESSAGE', function(req) end\n",
      "load" },
    { "an error at top level", "error('no database')\nreturn function() end\n", "load" },
    { "a module that returns a number", "return 42\n", "load" },
    { "a handler that is not a function", "return { MESSAGE = 'reply 200' }\n", "setup" },
    { "a handler key that is not a method", "return { [1] = function() end }\n", "setup" },
    { "a setup that raises half-way", [[
return function(agent)
  agent:on("MESSAGE", function(req) req:reply(200, { headers = { ["X-Version"] = "3" } }) end)
  error("setup broke")
end
]], "setup" },
    { "a setup that waits", [[
local sip = require "luasip"
return function(agent) coroutine.yield(); agent:on("MESSAGE", function() end) end
]], "setup" },
  }
  for _, case in ipairs(BROKEN) do
    it("keeps the old handlers and logs why when the new module has " .. case[1], function()
      local a, b = H.agent(), H.agent()
      local seen = {}
      local name = new_app()
      assert.is_true(b:load(name, seen))
      local before = package.loaded[name]
      write(name, case[2])
      local ok, err, code = sip.reload(name)
      assert.is_nil(ok)
      assert.equal(case[3], code)
      assert.is_string(err)
      assert.truthy(logged("error", "reload of '" .. name .. "' failed, the old handlers stay"),
        "no error logged")
      assert.equal(before, package.loaded[name])
      local res = run(function() return message(a, b) end)
      assert.equal("1", res:header("X-Version"))
      assert.same({ "INVITE", "MESSAGE" }, b:handlers())
      -- fixed: the next reload takes
      write(name, app_source("4"))
      assert.is_true(sip.reload(name))
      res = run(function() return message(a, b) end)
      assert.equal("4", res:header("X-Version"))
    end)
  end

  it("names the error: a syntax error with its file and line", function()
    local b = H.agent()
    local name = new_app()
    assert.is_true(b:load(name, {}))
    write(name, "return function(agent)\n  agent:on('MESSAGE', function(req) end\n")
    local _, err = sip.reload(name)
    assert.matches(name .. ".lua:%d+:", err)
    write(name, "local x = nil\nreturn x.field\n")
    _, err = sip.reload(name)
    assert.matches(name .. ".lua:2: attempt to index", err)
  end)

  it("takes a table of handlers; methods the new version drops are gone, others' stay",
    function()
      local a, b = H.agent(), H.agent()
      b:on("OPTIONS", function(req) req:reply(200, { headers = { ["X-By"] = "entry" } }) end)
      local name = new_app([[
return {
  message = function(req) req:reply(200, { headers = { ["X-Version"] = "1" } }) end,
  INFO = function(req) req:reply(200) end,
}
]])
      assert.is_true(b:load(name))
      assert.same({ "INFO", "MESSAGE", "OPTIONS" }, b:handlers())
      write(name, [[
return { MESSAGE = function(req) req:reply(200, { headers = { ["X-Version"] = "2" } }) end }
]])
      assert.is_true(sip.reload(name))
      assert.same({ "MESSAGE", "OPTIONS" }, b:handlers())
      local res = run(function() return message(a, b) end)
      assert.equal("2", res:header("X-Version"))
      local _, _, code = run(function() return a:request{ method = "INFO", uri = b:uri() } end)
      assert.equal(405, code)
      res = run(function() return a:request{ method = "OPTIONS", uri = b:uri() } end)
      assert.equal("entry", res:header("X-By"))
    end)

  it("swaps the handlers of every agent a setup touched, or none of them", function()
    local a, b, c = H.agent(), H.agent(), H.agent()
    local function source(v, fail)
      return ([[
return function(agent, other)
  agent:on("MESSAGE", function(req) req:reply(200, { headers = { ["X-Version"] = "%s" } }) end)
  other:on("MESSAGE", function(req) req:reply(202, { headers = { ["X-Version"] = "%s" } }) end)
  %s
end
]]):format(v, v, fail and "error('late failure')" or "")
    end
    local name = new_app(source("1"))
    assert.is_true(b:load(name, c))
    local function versions()
      return run(function()
        return message(a, b):header("X-Version"), message(a, c):header("X-Version")
      end)
    end
    assert.same({ "1", "1" }, { versions() })
    write(name, source("2", true))
    assert.is_nil(sip.reload(name))
    assert.same({ "1", "1" }, { versions() })
    write(name, source("2"))
    assert.is_true(sip.reload(name))
    assert.same({ "2", "2" }, { versions() })
  end)

  it("reloads every agent the module was loaded on, with each load's arguments", function()
    local a, b, c = H.agent(), H.agent(), H.agent()
    local sb, sc = {}, {}
    local name = new_app()
    assert.is_true(b:load(name, sb))
    assert.is_true(c:load(name, sc))
    write(name, app_source("2"))
    assert.is_true(sip.reload(name))
    run(function()
      assert.equal("2", message(a, b, "slow"):header("X-Version"))
      assert.equal("2", message(a, c, "slow"):header("X-Version"))
    end)
    assert.same({ "waiting 2" }, sb)
    assert.same({ "waiting 2" }, sc)
  end)

  it("fails agent:load of a broken module with nil, err, code and installs nothing", function()
    local b = H.agent()
    local name = new_app("error('boom')\n")
    local ok, err, code = b:load(name)
    assert.is_nil(ok)
    assert.matches("boom", err)
    assert.equal("load", code)
    assert.is_nil(package.loaded[name])
    assert.same({}, b:handlers())
    assert.truthy(logged("error", "load of '" .. name .. "' failed"))
  end)

  it("raises for bad arguments and for a module that was never loaded", function()
    local b = H.agent()
    assert.has_error(function() b:load(42) end, "luasip.agent:load: module name expected")
    assert.has_error(function() sip.reload() end, "luasip.reload: module name expected")
    assert.has_error(function() sip.reload("never_loaded_app") end,
      "luasip.reload: 'never_loaded_app' is not loaded on an open agent (agent:load)")
    local name = new_app("return function(agent) agent:load('x') end\n")
    local ok, err = b:load(name)
    assert.is_nil(ok)
    assert.matches("luasip.agent:load: called from an application's setup", err, 1, true)
  end)

  it("forgets the loads of closed agents", function()
    local b = H.agent()
    local name = new_app()
    assert.is_true(b:load(name, {}))
    b:close()
    assert.has_error(function() sip.reload(name) end)
  end)
end)

describe("sip.on_signal", function()
  after_each(function() H.close_agents() end)

  local function own_pid()
    local f = assert(io.open("/proc/self/stat"))
    local pid = f:read("*l"):match("^(%d+)")
    f:close()
    return pid
  end

  it("runs the handler on the loop, in a luasip coroutine, for SIGUSR1 and SIGHUP",
    function()
      local got = {}
      assert.is_nil(sip.on_signal("USR1", function(signal)
        sip.sleep(0.01)                        -- a luasip coroutine: it may wait
        got[#got + 1] = signal
      end))
      assert.is_nil(sip.on_signal("SIGHUP", function(signal) got[#got + 1] = signal end))
      assert(os.execute("kill -USR1 " .. own_pid()))
      H.run_until(function() return #got == 1 end, 5, "SIGUSR1 handled")
      assert(os.execute("kill -HUP " .. own_pid()))
      H.run_until(function() return #got == 2 end, 5, "SIGHUP handled")
      assert.same({ "SIGUSR1", "SIGHUP" }, got)
      -- replaced, then off (the default action is back: not sent again here)
      local first = sip.on_signal("HUP", function() end)
      assert.is_function(first)
      assert.is_function(sip.on_signal("HUP", nil))
      assert.is_function(sip.on_signal("USR1", nil))
    end)

  it("refuses SIGINT/SIGTERM (sip.on_shutdown) and unknown signals", function()
    assert.has_error(function() sip.on_signal("INT", print) end,
      "luasip.on_signal: SIGINT stops sip.run (use sip.on_shutdown)")
    assert.has_error(function() sip.on_signal("KILL", print) end,
      "luasip.on_signal: unknown signal 'KILL' (HUP, USR1 or USR2)")
    assert.has_error(function() sip.on_signal("HUP", 1) end,
      "luasip.on_signal: handler must be a function or nil")
  end)
end)

-- child processes: a luasip script started with its pid known, reloaded by SIGHUP
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
local defer = H.defer_with(function(f) finally(f) end)

local read = H.read_file

-- launch(words, ready(proc) [, max_seconds]) -> proc, pid: runs a Lua script (words:
-- its path and arguments) under this flavour until ready(proc) is true
local function launch(words, ready, max_seconds)
  local pidfile = os.tmpname()
  defer(function() os.remove(pidfile) end)
  local quoted = {}
  for i, w in ipairs(words) do quoted[i] = H.shquote(w) end
  local cmd = ("echo $$ > %s; LUA_PATH='lua/?.lua;lua/?/init.lua;;' "
    .. "LUA_CPATH='build/%s/?.so;;' exec %s %s"):format(H.shquote(pidfile), FLAVOUR,
    H.shquote(H.interpreter()), table.concat(quoted, " "))
  local p = H.background({ "sh", "-c", cmd }, max_seconds or 60)
  defer(p.kill)
  H.run_until(function() return ready(p) or p.done() end, 10, "child ready")
  assert.is_nil(p.done(), p.log())
  return p, assert(tonumber(read(pidfile)), "child pid")
end

describe("reload by SIGHUP in a child process", function()
  local S = require "spec.peers.sipp"
  local it_sipp = S.available() and it or pending
  after_each(function() H.close_agents() end)

  local function count(s, pattern)
    local n = 0
    for _ in s:gmatch(pattern) do n = n + 1 end
    return n
  end

  it_sipp("keeps every call of a sipp run through reloads: zero failed calls, BYEs after "
    .. "a reload answered by the code that took the call", function()
      local port, ready = H.free_port(), os.tmpname()
      os.remove(ready)
      defer(function() os.remove(ready) end)
      local uas, pid = launch({ "spec/peers/reload/uas.lua", "127.0.0.1:" .. port, ready },
        function() return read(ready) == "ready\n" end)
      -- 300 calls, 60 a second, each held 1 s before sipp's BYE: ~60 calls up at a time
      local CALLS, RELOADS = 300, 4
      local sipp = S.run{ sn = "uac", target = "127.0.0.1:" .. port, calls = CALLS,
        timeout = 60, extra = { "-r", "60", "-d", "1000", "-l", "120" } }
      defer(function() S.stop(sipp) end)
      -- a SIGHUP every 50 answered calls, once the previous reload is done
      for k = 1, RELOADS do
        H.run_until(function()
          return count(uas.log(), "call %d+") >= 50 * k or sipp.done() end, 30,
          "50 more calls answered")
        assert.is_nil(sipp.done(), sipp.report())
        assert(os.execute(("kill -HUP %d"):format(pid)))
        H.run_until(function() return count(uas.log(), "reloaded\n") >= k end, 10,
          "reload " .. k)
      end
      local rc = S.wait(sipp, 60)
      assert.equal(0, rc, sipp.report() .. "\n--- uas\n" .. uas.log())
      local log = uas.log()
      assert.is_nil(log:find("reload failed", 1, true), log)
      assert.equal(CALLS, count(log, "call %d+"), log)
      H.run_until(function() return count(uas.log(), "bye %d+ %d+") == CALLS end, 5,
        "every BYE seen by its dialog's handler")
      -- BYEs that came after a reload, handled by the generation that answered the call
      local old = 0
      for took, now in uas.log():gmatch("bye (%d+) (%d+)") do
        if tonumber(took) < tonumber(now) then old = old + 1 end
      end
      assert.truthy(old > 0, "no BYE crossed a reload")
      local newest = 0
      for g in log:gmatch("call (%d+)") do newest = math.max(newest, tonumber(g)) end
      assert.equal(RELOADS + 1, newest)                 -- new calls took the new code
      if os.getenv("RELOAD_DEBUG") then
        print(("%d calls, %d reloads, %d BYEs after a reload on the old code"):format(CALLS,
          RELOADS, old))
      end
    end)
end)

describe("examples/pbx.lua on SIGHUP", function()
  after_each(function() H.close_agents() end)

  it("reloads examples/pbx_app.lua with a call up; the call ends normally and new calls "
    .. "go through", function()
      local port = H.free_port()
      local pbx, pid = launch({ "examples/pbx.lua", "127.0.0.1:" .. port },
        function(p) return p.log():find("listening on") end)
      local proxy, PW = "sip:127.0.0.1:" .. port, { alice = "alice-secret", bob = "bob-secret" }
      local function phone(user)
        local a = H.agent()
        a.data.auth = { username = user, password = PW[user] }
        local aor = "<sip:" .. user .. "@127.0.0.1>"
        assert(run(function()
          return a:request{ method = "REGISTER", uri = proxy, auth = a.data.auth,
            headers = { To = aor, From = aor, Contact = "<" .. a:uri(user) .. ">" } }
        end))
        return a
      end
      local alice, bob = phone("alice"), phone("bob")
      local ended = {}
      bob:on("INVITE", function(req)
        local d = assert(req:answer{ body = "v=0\r\n", content_type = "application/sdp" })
        local why = d:wait_end(20)
        ended[#ended + 1] = why
      end)
      local function call()
        return assert(run(function()
          return alice:invite{ uri = "sip:bob@127.0.0.1", proxy = proxy, auth = alice.data.auth,
            from = "<sip:alice@127.0.0.1>", body = "v=0\r\n" }
        end))
      end
      local d1 = call()
      assert(os.execute(("kill -HUP %d"):format(pid)))
      H.run_until(function() return pbx.log():find("reloaded pbx_app") or pbx.done() end, 10,
        "pbx reloaded")
      assert.is_nil(pbx.done(), pbx.log())
      -- the registrations survived the reload (they live in pbx.lua): a new call connects
      local d2 = call()
      -- the call set up before the reload ends normally (its BYE through the new code)
      assert.is_true(run(function() return d1:bye() end))
      H.run_until(function() return #ended == 1 end, 10, "the first call ended at bob")
      assert.is_true(run(function() return d2:bye() end))
      H.run_until(function() return #ended == 2 end, 10, "both calls ended at bob")
      assert.same({ "remote bye", "remote bye" }, ended)
    end)
end)
