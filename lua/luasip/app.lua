-- luasip.app: applications as modules, loaded onto agents and reloaded without a restart.
-- An application module returns a setup function, setup(agent, ...), that installs its
-- handlers with agent:on (on that agent and on any other it is given), or a table of
-- handlers keyed by method.  agent:load(name, ...) requires it and installs them;
-- sip.reload(name) requires it afresh and swaps the handlers of every load of it, all at
-- once: while a setup runs, agent:on is staged here (luasip.agent asks M.stage), and
-- nothing is installed unless every setup succeeded.  What runs already (handlers that
-- wait, dialogs with their dialog:on handlers, timers) keeps the closures it has.
local dispatcher = require "luasip.dispatcher"
local class = require "luasip.class"
local sipmethods = require "luasip.sipmethods"

local unpack = table.unpack or unpack
local state = class.state
local traceback = debug.traceback

local M = {}

-- loads[name] = list of { agent =, args = { n =, ... }, owned = { [agent] = {method=true} } }
local loads = {}

-- the staging of the setup that runs (nil when none): { per = { [agent] = {method = fn |
-- false} }, owned = { [agent] = {method = true} } }
local staging

-- stage(agent, method, fn) -> previous: agent:on while a setup runs (luasip.agent)
function M.staging() return staging ~= nil end

function M.stage(agent, method, fn)
  local per = staging.per[agent] or {}
  staging.per[agent] = per
  local owned = staging.owned[agent] or {}
  staging.owned[agent] = owned
  local old = per[method]
  if old == nil then old = state(agent).handlers[method] end
  per[method] = fn or false
  owned[method] = true
  return old or nil
end

-- require name afresh (fresh: package.loaded cleared first); the previous module stays
-- loaded when this fails.  -> module, restore() | nil, err
local function require_app(name, fresh)
  local loaded = package.loaded
  local old = loaded[name]
  if fresh then loaded[name] = nil end
  local ok, mod = xpcall(function() return require(name) end, traceback)
  local function restore() loaded[name] = old end
  if not ok then
    restore()
    return nil, tostring(mod)
  end
  if type(mod) ~= "function" and type(mod) ~= "table" then
    restore()
    return nil, "module '" .. name .. "' must return a setup function or a table of "
      .. "handlers, got " .. type(mod)
  end
  return mod, restore
end

-- runs one load's setup (or installs its table) into the staging -> true | nil, err
local function run_setup(name, mod, rec)
  if type(mod) == "table" then
    for method, fn in pairs(mod) do
      if type(method) ~= "string" or not pcall(sipmethods.norm, method, "") then
        return nil, "app '" .. name .. "': handler key " .. tostring(method)
          .. " is not a SIP method"
      end
      if type(fn) ~= "function" then
        return nil, "app '" .. name .. "': handler for " .. method
          .. " must be a function, got " .. type(fn)
      end
      local ok, err = pcall(rec.agent.on, rec.agent, method, fn)
      if not ok then return nil, "app '" .. name .. "': " .. tostring(err) end
    end
    return true
  end
  -- in a coroutine of its own: a setup that waits (yields) fails instead of leaving
  -- the staging open while the loop runs
  local co = coroutine.create(mod)
  local ok, err = coroutine.resume(co, rec.agent, unpack(rec.args, 1, rec.args.n))
  if not ok then
    return nil, "app '" .. name .. "': setup failed: " .. dispatcher.err_text(err) .. "\n"
      .. traceback(co)
  end
  if coroutine.status(co) ~= "dead" then
    return nil, "app '" .. name .. "': setup must not wait (it yielded)"
  end
  return true
end

-- installs the staged handlers of recs in one step: each load's methods of before that
-- its new setup did not set again are removed
local function commit(recs, st)
  local changes = {}                 -- agent -> { method = fn | false }
  local function change(agent)
    local c = changes[agent] or {}
    changes[agent] = c
    return c
  end
  for _, rec in ipairs(recs) do
    for agent, methods in pairs(rec.owned) do
      local c = change(agent)
      for m in pairs(methods) do c[m] = false end
    end
  end
  for agent, per in pairs(st.per) do
    local c = change(agent)
    for m, fn in pairs(per) do c[m] = fn end
  end
  for agent, c in pairs(changes) do
    if not agent:closed() then
      local ast = state(agent)
      local handlers = {}
      for m, fn in pairs(ast.handlers) do handlers[m] = fn end
      for m, fn in pairs(c) do handlers[m] = fn or nil end
      ast.handlers = handlers          -- the dispatcher reads this table per request
    end
  end
end

-- runs mod's setup for every load in recs; commits only if all succeeded
local function install(name, mod, recs)
  local st = { per = {}, owned = {} }
  local owned_by = {}
  for i, rec in ipairs(recs) do
    staging = { per = st.per, owned = {} }
    local ok, err = run_setup(name, mod, rec)
    owned_by[i] = staging.owned
    staging = nil
    if not ok then return nil, err end
  end
  commit(recs, st)
  for i, rec in ipairs(recs) do rec.owned = owned_by[i] end
  return true
end

-- the loads of name whose agent is open (closed ones are forgotten)
local function open_loads(name)
  local list, open = loads[name] or {}, {}
  for _, rec in ipairs(list) do
    if not rec.agent:closed() then open[#open + 1] = rec end
  end
  loads[name] = open[1] and open or nil
  return open
end

local function failed(what, name, err, code)
  dispatcher.log("error", what .. " of '" .. name .. "' failed, the old handlers stay: "
    .. err)
  return nil, err, code
end

-- agent:load(name, ...) -> true | nil, err, code: requires the application module name
-- and installs its handlers on agent (setup(agent, ...) or a table of handlers);
-- sip.reload(name) does it again with the same arguments
function M.load(agent, name, ...)
  local fname = "luasip.agent:load"
  if type(name) ~= "string" or name == "" then
    error(fname .. ": module name expected", 2)
  end
  if agent:closed() then error("attempt to use a closed luasip.agent (" .. fname .. ")", 2) end
  if staging then error(fname .. ": called from an application's setup", 2) end
  local mod, err = require_app(name, false)
  if not mod then return failed("load", name, err, "load") end
  local restore = err
  local rec = { agent = agent, args = { n = select("#", ...), ... }, owned = {} }
  local ok, serr = install(name, mod, { rec })
  if not ok then
    restore()
    return failed("load", name, serr, "setup")
  end
  local list = open_loads(name)
  list[#list + 1] = rec
  loads[name] = list
  return true
end

-- reload(name) -> true | nil, err, code: requires name afresh and swaps the handlers of
-- every agent:load of it in one step; on failure the old module and handlers stay
function M.reload(name)
  if type(name) ~= "string" or name == "" then
    error("luasip.reload: module name expected", 2)
  end
  if staging then error("luasip.reload: called from an application's setup", 2) end
  local recs = open_loads(name)
  if #recs == 0 then
    error("luasip.reload: '" .. name .. "' is not loaded on an open agent (agent:load)", 2)
  end
  local mod, err = require_app(name, true)
  if not mod then return failed("reload", name, err, "load") end
  local restore = err
  local ok, serr = install(name, mod, recs)
  if not ok then
    restore()
    return failed("reload", name, serr, "setup")
  end
  dispatcher.log("info", "reloaded '" .. name .. "' (" .. #recs .. " load(s))")
  return true
end

return M
