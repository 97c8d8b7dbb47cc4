-- luasip: SIP applications as Lua scripts, on sofia-sip.  The façade: it loads the
-- classes (lua/luasip/<class>.lua, one module per class) and the features, and gathers
-- their public functions.  Requiring modules in any order gives the same behaviour.
--   local sip = require "luasip"
--   local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060" } })
--   app:on("OPTIONS", function(req) req:reply(200) end)
--   sip.run()
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local agent = require "luasip.agent"
local sipmethods = require "luasip.sipmethods"

local sip = {
  _VERSION = "luasip 0.1.0",
  sofia_version = core.sofia_version,
  stop = core.stop,
  now = core.now,
  time = core.time,
  spawn = dispatcher.spawn,
  sleep = dispatcher.sleep,
  timer = dispatcher.timer,
  log = dispatcher.log,
  set_logger = dispatcher.set_logger,
  stats = core.stats,
  cpu_limit = core.cpu_limit,
  md5 = core.md5,
  random_hex = core.random_hex,
  methods = sipmethods.list,
  agent = agent.new,
}

-- step([ms]) -> ms until the next timer (-1: none).  For hosts that drive the loop.
function sip.step(ms)
  if ms ~= nil and type(ms) ~= "number" then error("luasip.step: ms must be a number", 2) end
  return core.step(ms and math.floor(ms) or 0)
end

-- on_shutdown(fn) -> fn: fn(reason) runs in a luasip coroutine when run() is stopped by
-- SIGINT/SIGTERM, before run() returns (e.g. to unregister); run() waits for them
local shutdown = {}
function sip.on_shutdown(fn)
  if type(fn) ~= "function" then error("luasip.on_shutdown: function expected", 2) end
  shutdown[#shutdown + 1] = fn
  return fn
end

local RUN_OPTIONS = { on_error = true, shutdown_timeout = true }

-- run([{ on_error = fn(err) | "raise", shutdown_timeout = seconds }]) -> true [, signal]
-- Runs the loop until sip.stop() or the first SIGINT/SIGTERM.  on_error: what an error in
-- a coroutine of sip.spawn does (default: logged); "raise" stops run() and raises it.
function sip.run(opts)
  if opts ~= nil and type(opts) ~= "table" then error("luasip.run: options must be a table", 2) end
  opts = opts or {}
  for k in pairs(opts) do
    if not RUN_OPTIONS[k] then error("luasip.run: unknown option '" .. tostring(k) .. "'", 2) end
  end
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
sip.registrar = require("luasip.registrar").new
sip.location = require("luasip.location").new
sip.store = { memory = require("luasip.store.memory").new,
  redis = function(...) return require("luasip.store.redis").new(...) end }
sip.redis = function(...) return require("luasip.redis").connect(...) end

-- digest authentication: auth.check(req, opts) -> user | nil, status, why;
-- auth.authorizer{...};  auth.credentials / auth.response / auth.parse
sip.auth = require "luasip.auth"

-- b2bua(req, targets [, opts]) -> a_dialog, b_dialog | nil, err, code [, response]
sip.b2bua = require("luasip.b2bua").b2bua

-- sdp.parse / build / answer / hold / unhold / bump / codecs / attribute
sip.sdp = require "luasip.sdp"

-- events{...} (RFC 6665), publications{...} (RFC 3903), pidf (RFC 3863)
sip.events = require("luasip.events").new
sip.publications = require("luasip.publications").new
sip.pidf = require "luasip.pidf"

-- refer.accept / handler / parse_refer_to / parse_replaces / replaces (RFC 3515, 3891,
-- 4488)
sip.refer = require "luasip.refer"

-- media on calls: req:answer{ media = }, agent:invite{ media = }, the IVR verbs on dialogs;
-- sip.media.prompts = dir (the prompt set of say_digits / say_number), sip.media.TONES
sip.media = require "luasip.media"

-- class.extend / class.hook: how modules extend the classes (README: "Extending luasip")
sip.class = require "luasip.class"

return sip
