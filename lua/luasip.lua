-- luasip: SIP applications as Lua scripts, on sofia-sip.  The façade: it loads the
-- classes (lua/luasip/<class>.lua, one module per class) and the features, and gathers
-- their public functions.  Requiring modules in any order gives the same behaviour.
--   local sip = require "luasip"
--   local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060" } })
--   app:on("OPTIONS", function(req) req:reply(200) end)
--   sip.run()

--- SIP applications as Lua scripts, on sofia-sip: the façade, `require "luasip"`.
-- Programmer errors raise an error naming the function; runtime failures return
-- `nil, message, code` (code: the SIP status or a short word such as `"timeout"`).
-- The README is the guide; this reference is generated from the sources (`make docs`).
-- @module luasip
-- @usage
-- local sip = require "luasip"
-- local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060" } })
-- app:on("OPTIONS", function(req) req:reply(200) end)
-- sip.run()

local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local agent = require "luasip.agent"
local sipmethods = require "luasip.sipmethods"

--- The version of luasip, `"luasip 0.1.0"`.
-- @field _VERSION

--- The version of the sofia-sip library luasip runs on.
-- @field sofia_version

--- The SIP methods luasip knows, uppercase.
-- @field methods

--- Makes `sip.run()` return after the current step; callable from anywhere.
-- @function stop

--- Monotonic clock.
-- @function now
-- @treturn number seconds, with fractions

--- Wall-clock time: the same in every process of a host (the Redis store's clock).
-- @function time
-- @treturn number seconds since the epoch, with fractions

--- Runs `fn(...)` at once in a new luasip coroutine, so it may use waiting calls.
-- An error in `fn` is logged with its traceback (see `run`'s `on_error`).
-- @function spawn
-- @func fn the function
-- @param ... its arguments
-- @treturn thread the coroutine
-- @usage sip.spawn(function() sip.sleep(1); print("a second later") end)

--- Waits without blocking the loop (a waiting call: in a luasip coroutine only).
-- @function sleep
-- @number seconds how long
-- @treturn boolean true

--- Calls `fn(timer)` once after `seconds`, in a new luasip coroutine.
-- @function timer
-- @number seconds delay
-- @func fn the callback
-- @return the timer: `timer:cancel()`, `timer:pending()`

--- Logs through the current logger.
-- @function log
-- @string level `"error"`, `"warn"`, `"info"` or `"debug"`
-- @string message the line

--- Routes luasip's log (the C core's lines too) to `fn(level, message)`.
-- @function set_logger
-- @tparam ?func fn the logger; nil silences the log
-- @string[opt="warn"] max_level the most verbose level passed on
-- @treturn func the previous logger
-- @usage sip.set_logger(function(level, msg) print(level, msg) end, "info")

--- Live C objects per class, for leak checks.
-- @function stats
-- @treturn table `{ ["luasip.request"] = n, ... }`

--- The runaway-script limit: Lua that holds the loop thread for more CPU than this
-- without returning to the loop is interrupted with an error.
-- @function cpu_limit
-- @tparam[opt] number|false seconds the limit (default 2); false turns it off
-- @return the previous limit

--- The MD5 digest of a string, in lowercase hex.
-- @function md5
-- @string s the input
-- @treturn string 32 hex digits

--- Random bytes in hex: nonces, tags, ETags.
-- @function random_hex
-- @int nbytes 1 to 64
-- @treturn string `2 * nbytes` hex digits

--- Creates an agent: the SIP endpoint that listens, dispatches requests to handlers
-- and sends requests (see `luasip.agent`).
-- @function agent
-- @tab opts `listen` (a URI or a list), `user_agent`, `t1`, `in_dialog`, `supported`,
-- `handler_timeout`, `invite_timeout`, `max_message_size`, `overload`, `media`, `tls`
-- @return the agent, or `nil, message, code`
-- @usage local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060", "sip:[::1]:5060" } })

local sip = {
  _VERSION = "luasip 0.1.0",
  sofia_version = core.sofia_version,
  stop = core.stop,
  now = core.now,
  time = core.time,
  allocator = core.allocator,
  spawn = dispatcher.spawn,
  sleep = dispatcher.sleep,
  timer = dispatcher.timer,
  log = dispatcher.log,
  set_logger = dispatcher.set_logger,
  stats = core.stats,
  cpu_limit = core.cpu_limit,
  memory_limit = core.memory_limit,
  md5 = core.md5,
  random_hex = core.random_hex,
  methods = sipmethods.list,
  agent = agent.new,
}

-- step([ms]) -> ms until the next timer (-1: none).  For hosts that drive the loop.

--- Runs the loop once, for hosts that drive the loop themselves.
-- @function step
-- @number[opt=0] ms the longest wait for events, in milliseconds
-- @treturn number milliseconds until the next timer, or -1 when none is set
-- @usage while true do sip.step(100) end
function sip.step(ms)
  if ms ~= nil and type(ms) ~= "number" then error("luasip.step: ms must be a number", 2) end
  return core.step(ms and math.floor(ms) or 0)
end

-- embedding in a host event loop (README "Embedding"): pollfd() -> fd, readable when the
-- loop has work, then step(0); timeout() -> seconds to the next timer | nil;
-- pollable() -> an object cqueues.poll accepts (:pollfd, :events, :timeout, :step)
local embed = require "luasip.embed"
sip.pollfd, sip.timeout, sip.pollable = embed.pollfd, embed.timeout, embed.pollable

-- on_shutdown(fn) -> fn: fn(reason) runs in a luasip coroutine when run() is stopped by
-- SIGINT/SIGTERM, before run() returns (e.g. to unregister); run() waits for them
local shutdown = {}
--- Adds a shutdown hook: `fn(signal)` runs in a luasip coroutine when SIGINT or
-- SIGTERM stops `run`, before `run` returns; it may send requests and wait for them.
-- @function on_shutdown
-- @func fn the hook
-- @treturn func fn
-- @usage sip.on_shutdown(function() app:request{ method = "REGISTER", uri = registrar, expires = 0 } end)
function sip.on_shutdown(fn)
  if type(fn) ~= "function" then error("luasip.on_shutdown: function expected", 2) end
  shutdown[#shutdown + 1] = fn
  return fn
end

-- on_signal(name, fn | nil) -> previous: fn(signal) runs in a luasip coroutine on the
-- loop when the process gets SIGHUP, SIGUSR1 or SIGUSR2 (name "HUP", "USR1", "USR2");
-- nil gives the signal its previous disposition back.  (The signal handler only wakes
-- the loop: fn never runs in the signal's context.)
local signal_fns = {}
local SIGNALS = { HUP = true, USR1 = true, USR2 = true }
function sip.on_signal(name, fn)
  if type(name) ~= "string" then error("luasip.on_signal: signal name expected", 2) end
  local n = name:upper():gsub("^SIG", "")
  if n == "INT" or n == "TERM" then
    error("luasip.on_signal: SIG" .. n .. " stops sip.run (use sip.on_shutdown)", 2)
  end
  if not SIGNALS[n] then
    error("luasip.on_signal: unknown signal '" .. name .. "' (HUP, USR1 or USR2)", 2)
  end
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.on_signal: handler must be a function or nil", 2)
  end
  local ok, err = core.catch_signal(n, fn ~= nil)
  if not ok then error("luasip.on_signal: cannot catch SIG" .. n .. ": " .. err, 2) end
  local old = signal_fns[n]
  signal_fns[n] = fn
  return old
end
for n in pairs(SIGNALS) do
  dispatcher.on_event("SIG" .. n, function()
    local fn = signal_fns[n]
    if fn then dispatcher.spawn(fn, "SIG" .. n) end
  end)
end

-- reload(name) -> true | nil, err, code: requires the application module name afresh
-- and swaps the handlers of every agent:load(name) in one step (README: Reloading)
sip.reload = require("luasip.app").reload

local RUN_OPTIONS = { on_error = true, shutdown_timeout = true, gc = true }

-- Lua 5.4's own interpreter (lua.c) puts the collector in generational mode, whose major
-- collections stop the world over the whole heap: 100-440 ms loop stalls with a 15-25 MB
-- heap in `make soak` (perf: atomic2gen, sweep2old, enterinc), enough for load shedding
-- to answer 503.  A server loop wants bounded pauses: run() uses incremental mode unless
-- told otherwise (opts.gc = "generational", or false to leave the mode alone).
local function set_gc_mode(mode)
  if mode == nil then mode = "incremental" end
  if mode ~= false and mode ~= "incremental" and mode ~= "generational" then
    error('luasip.run: gc must be "incremental", "generational" or false', 3)
  end
  if mode and _VERSION == "Lua 5.4" then collectgarbage(mode) end
end

-- run([{ on_error = fn(err) | "raise", shutdown_timeout = seconds, gc = mode }])
--   -> true [, signal]
-- Runs the loop until sip.stop() or the first SIGINT/SIGTERM.  on_error: what an error in
-- a coroutine of sip.spawn does (default: logged); "raise" stops run() and raises it.

--- Turns the loop until `stop` is called or the first SIGINT/SIGTERM.
-- Raises when already running or called from a handler.
-- @function run
-- @tab[opt] opts `on_error` (`fn(err)` or `"raise"`: what an error in a coroutine of
-- `spawn` does; default: logged), `shutdown_timeout` (seconds for the shutdown hooks,
-- default 5), `gc` (Lua 5.4's collector mode for the loop: `"incremental"`, the default,
-- `"generational"`, or false to leave it alone)
-- @treturn boolean true
-- @treturn[opt] string `"SIGINT"` or `"SIGTERM"` when a signal stopped it
function sip.run(opts)
  if opts ~= nil and type(opts) ~= "table" then error("luasip.run: options must be a table", 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if not RUN_OPTIONS[k] then error("luasip.run: unknown option '" .. tostring(k) .. "'", 2) end
  end
  set_gc_mode(opts.gc)
  local on_error, fatal = opts.on_error, nil
  if on_error ~= nil and on_error ~= "raise" and type(on_error) ~= "function" then
    error('luasip.run: on_error must be a function or "raise"', 2)
  end
  if on_error ~= nil then
    dispatcher.set_spawn_error(function(err)
      if on_error == "raise" then
        fatal = fatal or { err }
        core.stop()
      else
        local ok, e = pcall(on_error, err)
        if not ok then dispatcher.log("error", "on_error failed: " .. tostring(e)) end
      end
    end)
  end
  local ok, signal = core.run()
  dispatcher.set_spawn_error(nil)
  if signal and #shutdown > 0 then
    -- the shutdown hooks run on the loop (they may send requests), bounded in time; each
    -- in a coroutine of its own, not under pcall (Lua 5.1 cannot yield across one): the
    -- dispatcher logs a hook that fails
    local cos = {}
    for i, fn in ipairs(shutdown) do cos[i] = dispatcher.spawn(fn, signal) end
    local function running()
      for _, co in ipairs(cos) do
        if coroutine.status(co) ~= "dead" then return true end
      end
      return false
    end
    local deadline = core.now() + (opts.shutdown_timeout or 5)
    while running() and core.now() < deadline do core.step(10) end
  end
  if fatal then error(fatal[1], 0) end
  if signal then return ok, signal end
  return ok
end

-- registrar and location: registrar{...} -> handler, location;  location{ store = };
-- store.memory{...} (DESIGN D10: the embedded default store) and store.redis{...}

--- A registrar: a REGISTER handler with its location service (see the README).
-- @function registrar
-- @tab opts `realm`, `password`, `store`, ...
-- @return the handler, the location service

--- A location service over a store.
-- @function location
-- @tab[opt] opts `store`

--- Stores for state that outlives a request: `store.memory{}` (in-process, the
-- default) and `store.redis{}`.
-- @table store

--- Connects a Redis client (in a luasip coroutine).
-- @function redis
-- @tab opts `path` or `host`/`port`, ...
sip.registrar = require("luasip.registrar").new
sip.location = require("luasip.location").new
sip.store = { memory = require("luasip.store.memory").new,
  redis = function(...) return require("luasip.store.redis").new(...) end }
sip.redis = function(...) return require("luasip.redis").connect(...) end

-- cluster{ workers =, listen =, ... } -> node: the application as N worker processes
-- behind a stateless front (README: Scaling out); returns only in a worker
sip.cluster = function(...) return require("luasip.cluster").start(...) end

--- A client of rtpengine's ng control protocol (media relay for a proxy).
-- @function rtpengine
-- @tab opts `servers = { "127.0.0.1:2223" }`, `timeout`, `retries`, `on_failure`, ...
sip.rtpengine = function(...) return require("luasip.rtpengine").new(...) end

-- digest authentication: auth.check(req, opts) -> user | nil, status, why;
-- auth.authorizer{...};  auth.credentials / auth.response / auth.parse

--- Digest authentication: `auth.check`, `auth.authorizer`, `auth.credentials`, ...
-- @table auth
sip.auth = require "luasip.auth"

-- b2bua(req, targets [, opts]) -> a_dialog, b_dialog | nil, err, code [, response]

--- Bridges an incoming INVITE to an outgoing call (waiting call).
-- @function b2bua
-- @param req the INVITE
-- @param targets a URI or a list of URIs
-- @tab[opt] opts options (see the README)
-- @return the two dialogs, or `nil, message, code [, response]`
sip.b2bua = require("luasip.b2bua").b2bua

-- sdp.parse / build / answer / hold / unhold / bump / codecs / attribute

--- SDP: `parse`, `build`, `answer`, `hold`, `unhold`, `bump`, `codecs`, `attribute`.
-- @table sdp
sip.sdp = require "luasip.sdp"

-- events{...} (RFC 6665), publications{...} (RFC 3903), pidf (RFC 3863)

--- An event notifier (RFC 6665) for an event package.
-- @function events
-- @tab opts options (see the README)

--- An event state compositor (PUBLISH, RFC 3903).
-- @function publications
-- @tab opts options (see the README)

--- PIDF presence documents (RFC 3863): build and parse.
-- @table pidf
sip.events = require("luasip.events").new
sip.publications = require("luasip.publications").new
sip.pidf = require "luasip.pidf"

-- refer.accept / handler / parse_refer_to / parse_replaces / replaces (RFC 3515, 3891,
-- 4488)

--- Call transfer: `accept`, `handler`, `parse_refer_to`, `parse_replaces`, `replaces`.
-- @table refer
sip.refer = require "luasip.refer"

-- media on calls: req:answer{ media = }, agent:invite{ media = }, the IVR verbs on dialogs;
-- sip.media.prompts = dir (the prompt set of say_digits / say_number), sip.media.TONES

--- Media on calls: `prompts` (the directory of the prompt set), `TONES`.
-- @table media
sip.media = require "luasip.media"

-- metrics{ listen = "host:port" } -> server: the Prometheus page on the loop;
-- metrics.counter / gauge / histogram{...}: the application's own (README "Metrics and logs")
sip.metrics = require "luasip.metrics"

-- class.extend / class.hook: how modules extend the classes (README: "Extending luasip")

--- How modules extend the classes: `class.extend`, `class.hook`, `class.state`.
-- @table class
sip.class = require "luasip.class"

return sip
