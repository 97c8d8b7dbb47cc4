-- luasip.dispatcher: the Lua side of the bridge.  The C core calls dispatch(event, a, b)
-- (always protected); every handler runs in a coroutine of its own; waiting calls park
-- their coroutine on a "slot" that an event or a timer fills.  Defaults live here:
-- 405/501 without a handler, 500 for a handler that raised or ended without answering.
local core = require "luasip.core"

local unpack = table.unpack or unpack
local co_create, co_resume, co_running, co_status, co_yield =
  coroutine.create, coroutine.resume, coroutine.running, coroutine.status, coroutine.yield
local traceback = debug.traceback

local M = {}

-- ------------------------------------------------------------------ logging

local LEVELS = { error = 1, warn = 2, info = 3, debug = 4 }
local logger = function(level, msg)
  io.stderr:write("luasip [", level, "] ", msg, "\n")
end
local log_level = 2

function M.log(level, msg)
  if (LEVELS[level] or 3) <= log_level then
    local ok, err = pcall(logger, level, msg)
    if not ok then io.stderr:write("luasip: logger failed: ", tostring(err), "\n") end
  end
end

-- set_logger(fn(level, message) [, max_level]) -> previous logger
function M.set_logger(fn, level)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.set_logger: logger must be a function", 2)
  end
  local old = logger
  logger = fn or function() end
  if level then
    log_level = LEVELS[level] or error("luasip.set_logger: unknown level " .. tostring(level), 2)
    core.log_level(log_level)       -- the C core filters its lines the same way
  end
  return old
end

-- the C core's log lines (queued in C, delivered after each loop step) take the same way
core.set_log_handler(M.log)

-- ------------------------------------------------------------------ coroutines

-- ctx[co] = { req = request answered by this coroutine (or nil), slot = waited slot }
-- The request -> coroutine link is weak both ways (reqco): a strong req._co would make a
-- cycle through ctx that 5.1/LuaJIT weak-key tables never collect.
local ctx = setmetatable({}, { __mode = "k" })
local reqco = setmetatable({}, { __mode = "kv" })

local function err_text(err)
  if type(err) == "table" then
    return (err.status and ("status " .. tostring(err.status)) or "error table")
      .. (err.reason and (" " .. tostring(err.reason)) or "")
  end
  return tostring(err)
end

-- Called when a coroutine has ended (ok) or raised (not ok).
local function finished(co, ok, err)
  local c = ctx[co]
  local req = c and c.req
  if not ok then
    M.log("error", "handler failed: " .. err_text(err) .. "\n" .. traceback(co))
  end
  local agent = req and req.agent
  if req and agent and not agent:closed() and not req.method_is_ack and not req:answered()
    and not req:cancelled() then
    local status = 500
    if not ok then
      local st = type(err) == "table" and err.status
      if type(st) == "number" and st % 1 == 0 and st >= 300 and st <= 699 then
        status = st
      end
      req:reply(status, type(err) == "table" and type(err.reason) == "string"
        and err.reason or nil)
    else
      M.log("warn", req.method .. " handler ended without a final response: 500")
      req:reply(500, "No Response From Handler")
    end
  end
  ctx[co] = nil
end

local function step(co, ...)
  local ok, err = co_resume(co, ...)
  if not ok or co_status(co) == "dead" then finished(co, ok, err) end
end

-- spawn(fn, ...) -> coroutine: runs fn now, in a luasip coroutine
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("luasip.spawn: function expected", 2) end
  local co = co_create(fn)
  ctx[co] = {}
  step(co, ...)
  return co
end

local function spawn_for(req, fn, ...)
  local co = co_create(fn)
  ctx[co] = { req = req }
  reqco[req] = co
  step(co, ...)
  return co
end

local function current(fname)
  local co = co_running()
  if not co or not ctx[co] then
    error("not in a luasip coroutine: use sip.spawn (" .. fname .. ")", 3)
  end
  return co
end
M.current = current

local parked = {}

-- Slots: new_slot() in the waiting coroutine, fill(slot, ...) from an event.
function M.new_slot(fname)
  return { co = current(fname), done = false }
end

function M.fill(slot, ...)
  if slot.done then return false end
  slot.done = true
  slot.n = select("#", ...)
  slot.values = { ... }
  if slot.timer then slot.timer:cancel() end
  if slot.parked and co_status(slot.co) == "suspended" then
    slot.parked = false
    step(slot.co, ...)
  end
  return true
end

-- wait(slot [, timeout]) -> the values given to fill, or nil, "timeout", "timeout"
function M.wait(slot, timeout)
  if not slot.done then
    if timeout then
      local t = core.timer(timeout)
      t.fire = function() M.fill(slot, nil, "timeout", "timeout") end
      slot.timer = t
    end
    local c = ctx[slot.co]
    if c then c.slot = slot end
    -- a parked coroutine is reachable only through what will wake it; requests are not
    -- anchored by sofia, so keep waiters alive here until their slot is filled
    parked[slot] = true
    while not slot.done do
      slot.parked = true
      co_yield()
    end
    parked[slot] = nil
    if c then c.slot = nil end
  end
  return unpack(slot.values, 1, slot.n)
end

-- sleep(seconds)
function M.sleep(s)
  if type(s) ~= "number" or s < 0 then error("luasip.sleep: seconds must be a number >= 0", 2) end
  local slot = M.new_slot("luasip.sleep")
  local t = core.timer(s)
  t.fire = function() M.fill(slot, true) end
  slot.timer = t
  return M.wait(slot)
end

-- timer(seconds, fn) -> timer: fn runs in a new luasip coroutine; timer:cancel()
function M.timer(s, fn)
  if type(s) ~= "number" or s < 0 then error("luasip.timer: seconds must be a number >= 0", 2) end
  if type(fn) ~= "function" then error("luasip.timer: function expected", 2) end
  local t = core.timer(s)
  t.fire = function() M.spawn(fn, t) end
  return t
end

-- ------------------------------------------------------------------ requests in

local KNOWN = {
  INVITE = true, ACK = true, BYE = true, CANCEL = true, REGISTER = true, OPTIONS = true,
  SUBSCRIBE = true, NOTIFY = true, PUBLISH = true, REFER = true, INFO = true,
  UPDATE = true, PRACK = true, MESSAGE = true,
}
M.KNOWN = KNOWN

local function allow_list(handlers)
  local list = {}
  for m in pairs(handlers) do
    if KNOWN[m] then list[#list + 1] = m end
  end
  if handlers.INVITE then
    if not handlers.ACK then list[#list + 1] = "ACK" end
    list[#list + 1] = "CANCEL"
  end
  table.sort(list)
  return table.concat(list, ", ")
end
M.allow_list = allow_list

-- Split a header list value ("a, b;x=1") into its option tags.
local function tags_of(values)
  local set = {}
  for _, v in ipairs(values) do
    for tag in v:gmatch("[^,%s]+") do set[#set + 1] = tag:lower() end
  end
  return set
end

local function on_request(req)
  local agent = req.agent
  if not agent then return end
  local method = req.method
  local handlers = agent._handlers
  if method == "ACK" then
    req.method_is_ack = true
    local h = handlers.ACK
    if h then spawn_for(req, h, req) end
    return
  end
  -- UAS checks of RFC 3261 8.2.2: scheme, then extensions
  local scheme = req.ruri.scheme
  if scheme ~= "sip" and scheme ~= "sips" then
    return req:reply(416, "Unsupported URI Scheme", { stateless = true })
  end
  -- RFC 3261 12.2.2: a request with a To tag that matches no dialog of ours
  if req.to_tag and agent._in_dialog == "481" then
    return req:reply(481, "Call/Transaction Does Not Exist", { stateless = true })
  end
  if method ~= "CANCEL" then
    local unsupported, supported = {}, agent._supported
    for _, tag in ipairs(tags_of(req:headers("Require"))) do
      if not supported[tag] then unsupported[#unsupported + 1] = tag end
    end
    if #unsupported > 0 then
      return req:reply(420, "Bad Extension",
        { headers = { Unsupported = table.concat(unsupported, ", ") }, stateless = true })
    end
  end
  local h = handlers[method]
  if not h then
    if method == "BYE" then
      -- RFC 3261 15.1.2: a BYE that matches no dialog
      return req:reply(481, "Call/Transaction Does Not Exist", { stateless = true })
    end
    if KNOWN[method] then
      return req:reply(405, "Method Not Allowed",
        { headers = { Allow = allow_list(handlers) }, stateless = true })
    end
    return req:reply(501, "Not Implemented",
      { headers = { Allow = allow_list(handlers) }, stateless = true })
  end
  spawn_for(req, h, req)
end

-- ------------------------------------------------------------------ events

local events = {}

events.request = on_request

function events.timer(t)
  local fire = t and t.fire
  if fire then
    t.fire = nil
    fire()
  end
end

-- a client transaction got a response
function events.response(tx, res)
  if not tx or not res then return end
  local status = res.status
  if status < 200 then
    local fn = tx._on_provisional
    if fn then
      local ok, err = pcall(fn, res, tx)
      if not ok then M.log("error", "on_provisional failed: " .. err_text(err)) end
    end
    return
  end
  tx._final = res
  if tx._gave_up and status < 300 then
    -- a 2xx crossed our CANCEL (or came after we stopped waiting): the core ACKed it,
    -- nobody wants the call: end it (RFC 3261 15)
    local d = tx:dialog()
    if d then
      d:send{ method = "BYE" }
      d:terminate()
    end
    return
  end
  local slot = tx._slot
  if slot then M.fill(slot, res) end
end

function events.tx_closed(tx)
  local slot = tx and tx._slot
  if slot then M.fill(slot, nil, "agent closed", "closed") end
end

local function wake_request(req, ...)
  local co = req and reqco[req]
  local c = co and ctx[co]
  if c and c.slot then M.fill(c.slot, ...) end
end

function events.cancel(req)
  if not req then return end
  local fn = req._on_cancel
  if fn then
    local ok, err = pcall(fn, req)
    if not ok then M.log("error", "on_cancel failed: " .. err_text(err)) end
  end
  wake_request(req, nil, "cancelled", "cancelled")
end

function events.ack(inv, ack)
  if ack then ack.method_is_ack = true end
  if inv then
    inv._ack = ack
    if inv._ack_slot then M.fill(inv._ack_slot, ack) end
  end
  local agent = ack and ack.agent
  local h = agent and agent._handlers.ACK
  if h then spawn_for(ack, h, ack, inv) end
end

function events.ack_timeout(inv)
  if inv then
    inv._ack_timeout = true
    if inv._ack_slot then M.fill(inv._ack_slot, nil, "timeout", "timeout") end
  end
end

M.events = events
M.spawn_for = spawn_for

function M.dispatch(event, a, b)
  local fn = events[event]
  if fn then fn(a, b) end
end

core.set_dispatcher(M.dispatch)

return M
