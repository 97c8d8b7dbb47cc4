-- luasip.dispatcher: the Lua side of the bridge.  The C core calls dispatch(event, a, b)
-- (always protected); every handler runs in a coroutine of its own; waiting calls park
-- their coroutine on a "slot" that an event or a timer fills.  Defaults live here:
-- 405/501 without a handler, 500 for a handler that raised or ended without answering.
local core = require "luasip.core"
local sipmethods = require "luasip.sipmethods"
local jsonlog = require "luasip.jsonlog"

local unpack = table.unpack or unpack
local co_create, co_resume, co_running, co_status, co_yield =
  coroutine.create, coroutine.resume, coroutine.running, coroutine.status, coroutine.yield
local traceback = debug.traceback

local M = {}

-- ------------------------------------------------------------------ logging

local LEVELS = { error = 1, warn = 2, info = 3, debug = 4 }
-- the built-in loggers: "text" (the default) and "json" (one JSON object a line), on stderr
local function text_logger(level, msg, call_id)
  if call_id then
    io.stderr:write("luasip [", level, "] [", call_id, "] ", msg, "\n")
  else
    io.stderr:write("luasip [", level, "] ", msg, "\n")
  end
end
local logger = text_logger
local log_level = 2
local log_call_id   -- the Call-ID of the call a log line without one concerns (below)
local ev_a, ev_b    -- the objects of the event being dispatched
local function call_of(o)
  if type(o) ~= "userdata" then return nil end
  local ok, id = pcall(function() return o.call_id end)
  if ok and type(id) == "string" then return id end
end

-- control bytes other than LF and TAB as \xNN: log lines carry values from the network
local function escape_byte(c)
  if c == "\n" or c == "\t" then return c end
  return string.format("\\x%02x", c:byte())
end

-- log(level, message [, call_id]): a line about a call carries its Call-ID; without
-- one, the call of the running handler or of the event being dispatched is taken
function M.log(level, msg, call_id)
  if (LEVELS[level] or 3) <= log_level then
    msg = tostring(msg):gsub("[%c\127]", escape_byte)
    if call_id == nil then call_id = log_call_id() end
    if call_id ~= nil then call_id = tostring(call_id):gsub("[%c\127]", escape_byte) end
    local ok, err = pcall(logger, level, msg, call_id)
    if not ok then io.stderr:write("luasip: logger failed: ", tostring(err), "\n") end
  end
end

-- set_logger(fn(level, message, call_id) | "text" | "json" [, max_level]) -> previous
-- logger; "json": one JSON object a line on stderr ({"ts","level","msg","call_id"})
function M.set_logger(fn, level)
  if fn == "json" then
    fn = jsonlog.logger
  elseif fn == "text" then
    fn = text_logger
  elseif fn ~= nil and type(fn) ~= "function" then
    error('luasip.set_logger: logger must be a function, "text" or "json"', 2)
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

local state = core.state
-- the request's C checks, called directly (not through __index) on every request
local _, _, REQ = core.class("luasip.request")
local needs_answer_c, uas_checks = REQ._needs_answer, REQ._uas_checks

-- ctx[co] = { req = request answered by this coroutine (or nil), slot = waited slot }
-- A pooled request coroutine keeps its ctx table for its next request (no table per
-- request); ctx.req is nil while it waits in the pool.
-- The request -> coroutine link is weak both ways (reqco), and made only for a handler
-- still running after its first step (the one that can be woken, or needs a deadline):
-- a strong link from the request would make a cycle through ctx that 5.1/LuaJIT
-- weak-key tables never collect.
local ctx = setmetatable({}, { __mode = "k" })
local reqco = setmetatable({}, { __mode = "kv" })

local function err_text(err)
  if type(err) == "table" then
    return (err.status and ("status " .. tostring(err.status)) or "error table")
      .. (err.reason and (" " .. tostring(err.reason)) or "")
  end
  return tostring(err)
end
M.err_text = err_text

-- the final response for a handler that raised err: error{status =, reason =} asks for
-- a status 300-699 and a reason phrase (kept only when it is printable text)
local function failure_status(err)
  local status, reason = 500, nil
  if type(err) == "table" then
    local st = err.status
    if type(st) == "number" and st % 1 == 0 and st >= 300 and st <= 699 then
      status = st
      local r = err.reason
      if type(r) == "string" and #r <= 128 and r:match("^[%w%p ]+$") then reason = r end
    end
  end
  return status, reason
end

-- Answers a request its handler left unanswered; never raises (the bridge's caller
-- answers 500 itself if this fails anyway).
local function answer_default(req, status, reason)
  local ok, err = pcall(req.reply, req, status, reason)
  if not ok then
    M.log("error", "default " .. status .. " failed: " .. tostring(err), call_of(req))
    pcall(req.reply, req, 500)
  end
end

-- not answered, not an ACK, not cancelled, and its agent open (in C: one call)
local needs_answer = needs_answer_c

-- Request handler metrics (luasip.metrics turns them on): clock() when a handler
-- starts, done(started, failed) when it ends
local handler_clock, handler_done
function M.set_handler_metrics(clock, done) handler_clock, handler_done = clock, done end

-- Called when a coroutine has ended (ok) or raised (not ok); a pooled coroutine (keep)
-- keeps its ctx table, emptied.
local function finished(co, ok, err, keep)
  local c = ctx[co]
  local req = c and c.req
  if c and c.t0 then
    handler_done(c.t0, not ok)
    c.t0 = nil
  end
  if keep then
    c.req, c.slot, c.lazy = nil, nil, nil
  else
    ctx[co] = nil
  end
  if req then reqco[req] = nil end
  if c and c.deadline then
    c.deadline:cancel()
    c.deadline = nil
  end
  if not ok and c and c.caught then
    c.caught(err)                       -- a coroutine of M.pcall: its caller gets err
  elseif not ok then
    M.log("error", "handler failed: " .. err_text(err) .. "\n" .. traceback(co),
      req and call_of(req))
    if c and c.spawned and M.spawn_error then M.spawn_error(err, co) end
  end
  if req and needs_answer(req) then
    if not ok then
      answer_default(req, failure_status(err))
    else
      M.log("warn", req.method .. " handler ended without a final response: 500",
        call_of(req))
      answer_default(req, 500, "No Response From Handler")
    end
  end
end

-- Request handlers run on pooled coroutines: a worker runs one handler after another,
-- yielding DONE between them (a coroutine per request cost an allocation of a Lua
-- thread each time).  A handler that raises kills its worker; it is not reused.
local DONE = {}
local pool, pooled, POOL_MAX = {}, 0, 64

local function worker(fn, a, b)
  while true do
    fn(a, b)
    fn, a, b = nil, nil, nil  -- luacheck: ignore 311 (nothing of the last request kept alive)
    fn, a, b = co_yield(DONE)
  end
end

local resume_begin, resume_end = core.resume_begin, core.resume_end
local arm_deadline   -- (below)

local function step(co, ...)
  resume_begin(co)              -- the runaway-script watchdog interrupts co (sip.cpu_limit)
  local ok, r = co_resume(co, ...)
  resume_end()
  if not ok then
    finished(co, false, r)
  elseif r == DONE then
    if pooled < POOL_MAX then
      finished(co, true, nil, true)
      pooled = pooled + 1
      pool[pooled] = co
    else
      finished(co, true)
    end
  elseif co_status(co) == "dead" then
    finished(co, true)
  else
    -- waiting again: a handler whose deadline was put off while the proxy engine
    -- guarded its request (spawn_for) gets it once it waits for anything else
    local c = ctx[co]
    if c and c.lazy and not (c.slot and c.slot.guarded) then
      c.lazy = nil
      local req = c.req
      if req and not req:answered() then arm_deadline(co, c, req) end
    end
  end
end

-- on_error: what happens when a coroutine of sip.spawn raises (sip.run{ on_error = })
function M.set_spawn_error(fn) M.spawn_error = fn end

-- spawn(fn, ...) -> coroutine: runs fn now, in a luasip coroutine
function M.spawn(fn, ...)
  if type(fn) ~= "function" then error("luasip.spawn: function expected", 2) end
  local co = co_create(fn)
  ctx[co] = { spawned = true }
  step(co, ...)
  return co
end

-- pcall across a yield works on LuaJIT and Lua 5.2+, not on plain Lua 5.1
local YIELDING_PCALL = rawget(_G, "jit") ~= nil or _VERSION ~= "Lua 5.1"

-- pcall(fn, ...) -> true, results | false, err: pcall for code that may wait (yield).
-- On plain Lua 5.1 fn runs in a luasip coroutine of its own that the caller (a luasip
-- coroutine) waits for; the error ends that coroutine and comes back here.
function M.pcall(fn, ...)
  if YIELDING_PCALL then return pcall(fn, ...) end
  local slot = M.new_slot("luasip.pcall")
  local n, args = select("#", ...), { ... }
  local co = co_create(function() M.fill(slot, true, fn(unpack(args, 1, n))) end)
  ctx[co] = { caught = function(err) M.fill(slot, false, err) end }
  step(co)
  return M.wait(slot)
end

-- Timers park their callback in the timer's state: the event "timer" calls it.
local function timer_in(s, fn)
  local t = core.timer(s)
  state(t).fire = fn
  return t
end
M.timer_in = timer_in

-- How long a handler may keep its request unanswered (seconds): non-INVITE requests
-- time out at the client after 64*T1 (32 s, RFC 3261 17.1.2.2); an INVITE's caller
-- waits as long as a proxy's Timer C (>3 min, 16.6).  Agents may set their own
-- (handler_timeout = { invite =, other = }, false for none).
M.HANDLER_TIMEOUT = { invite = 180, other = 32 }

local WEAK_VALUES = { __mode = "v" }

function arm_deadline(co, c, req)
  local limits = req.agent and state(req.agent).handler_timeout or M.HANDLER_TIMEOUT
  if not limits then return end
  local s = req.method == "INVITE" and limits.invite or limits.other
  if not s then return end
  -- weak: an abandoned handler and its request stay collectable (the core then
  -- answers 500 when the request is collected)
  -- (no c.co: on 5.1/LuaJIT a value pointing back at its weak key is never collected)
  local ref = setmetatable({ c = c, req = req, co = co }, WEAK_VALUES)
  c.deadline = timer_in(s, function()
    local cc, r, hco = ref.c, ref.req, ref.co
    if not cc or not r or not hco or ctx[hco] ~= cc or cc.req ~= r then return end
    cc.deadline = nil
    if not needs_answer(r) then return end
    M.log("warn", r.method .. " handler still unanswered after " .. s .. " s: 500",
      call_of(r))
    answer_default(r, 500, "Handler Timeout")
    -- the handler learns it through its wait, and then ends
    if cc.slot then M.fill(cc.slot, nil, "timeout", "timeout") end
  end)
end

-- spawn_for(req, fn, a [, b]): runs fn(a, b) for request req on a pooled coroutine
local function spawn_for(req, fn, a, b)
  local co, c
  if pooled > 0 then
    co = pool[pooled]
    pool[pooled] = nil
    pooled = pooled - 1
    c = ctx[co]
  else
    co = co_create(worker)
    c = {}
    ctx[co] = c
  end
  c.req = req
  if handler_clock then c.t0 = handler_clock() end
  step(co, fn, a, b)
  -- still running (it waits): it can be woken through its request, and has a deadline
  if ctx[co] == c and c.req == req then
    reqco[req] = co
    if req.method ~= "ACK" and not req:answered() then
      -- waiting in req:proxy: the proxy engine answers the request itself (Timer C,
      -- Timer F), so the deadline timer waits until the handler waits for something else
      if c.slot and c.slot.guarded then c.lazy = true else arm_deadline(co, c, req) end
    end
  end
  return co
end

-- answered(req): the request got its final response; its handler's deadline is off
function M.answered(req)
  local co = reqco[req]
  local c = co and ctx[co]
  if c and c.deadline then
    c.deadline:cancel()
    c.deadline = nil
  end
end

-- The call a log line without a Call-ID concerns: the running handler's request, else
-- the objects of the event being dispatched (requests, dialogs, client transactions)
log_call_id = function()
  local co = co_running()
  local c = co and ctx[co]
  return c and c.req and call_of(c.req) or call_of(ev_a) or call_of(ev_b)
end

local function current(fname)
  local co = co_running()
  if not co or not ctx[co] then
    error("not in a luasip coroutine: use sip.spawn (" .. fname .. ")", 3)
  end
  return co
end
M.current = current

local parked = {}  -- luacheck: ignore 241 (a keep-alive set, never read)

-- Slots: new_slot() in the waiting coroutine, fill(slot, ...) from an event.
function M.new_slot(fname)
  return { co = current(fname), done = false }
end

function M.fill(slot, ...)
  if slot.done then return false end
  slot.done = true
  local n = select("#", ...)
  slot.n = n
  -- up to three values (every waiting call of the library) in fields, not a table
  if n <= 3 then slot.v1, slot.v2, slot.v3 = ... else slot.values = { ... } end
  if slot.timer then slot.timer:cancel() end
  if slot.parked and ctx[slot.co] and co_status(slot.co) == "suspended" then
    slot.parked = false
    step(slot.co, ...)
  end
  return true
end

-- wait(slot [, timeout]) -> the values given to fill, or nil, "timeout", "timeout"
function M.wait(slot, timeout)
  if not slot.done then
    if timeout then
      slot.timer = timer_in(timeout, function() M.fill(slot, nil, "timeout", "timeout") end)
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
  local n = slot.n
  if n > 3 then return unpack(slot.values, 1, n) end
  if n == 1 then return slot.v1 end
  if n == 2 then return slot.v1, slot.v2 end
  if n == 3 then return slot.v1, slot.v2, slot.v3 end
end

-- sleep(seconds)
function M.sleep(s)
  if type(s) ~= "number" or s < 0 then error("luasip.sleep: seconds must be a number >= 0", 2) end
  local slot = M.new_slot("luasip.sleep")
  slot.timer = timer_in(s, function() M.fill(slot, true) end)
  return M.wait(slot)
end

-- timer(seconds, fn) -> timer: fn runs in a new luasip coroutine; timer:cancel()
function M.timer(s, fn)
  if type(s) ~= "number" or s < 0 then error("luasip.timer: seconds must be a number >= 0", 2) end
  if type(fn) ~= "function" then error("luasip.timer: function expected", 2) end
  local t
  t = timer_in(s, function() M.spawn(fn, t) end)
  return t
end

-- wake_request(req, ...): fills what the handler of req waits for
function M.wake_request(req, ...)
  local co = req and reqco[req]
  local c = co and ctx[co]
  if c and c.slot then M.fill(c.slot, ...) end
end

-- ------------------------------------------------------------------ requests in

local KNOWN = sipmethods.known
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

-- on_request(req [, agent]): the core passes the request's agent along
local function on_request(req, agent)
  agent = agent or req.agent
  if not agent then return end
  local ast = state(agent)
  local method = req.method
  local handlers = ast.handlers
  if method == "ACK" then
    local h = handlers.ACK
    if h then spawn_for(req, h, req) end
    return
  end
  -- UAS checks of RFC 3261 8.2.2: scheme, then extensions (flags: 1 scheme not sip or
  -- sips, 2 a To tag, 4 a Require header, 8 a sips: Request-URI not over TLS)
  local checks = uas_checks(req)
  if checks % 2 == 1 then
    return req:reply(416, "Unsupported URI Scheme", { stateless = true })
  end
  -- RFC 3261 26.2 / RFC 5630: sips: is TLS on every hop, the last one too
  if checks >= 8 then
    if not ast.sips_without_tls then
      return req:reply(416, "SIPS Request-URI Needs TLS", { stateless = true })
    end
    checks = checks - 8
  end
  if checks % 4 >= 2 then
    -- RFC 6665 4.1.2.4: a NOTIFY may come before the 2xx of its SUBSCRIBE
    local early = ast.early and ast.early[req.call_id]
    if early and method == "NOTIFY" then return spawn_for(req, early, req) end
    -- RFC 3261 12.2.2: a request with a To tag that matches no dialog of ours
    if ast.in_dialog == "481" then
      return req:reply(481, "Call/Transaction Does Not Exist", { stateless = true })
    end
  end
  -- (a stateless agent is a proxy: Require is for the UAS, RFC 3261 16.3)
  if method ~= "CANCEL" and checks >= 4 and not ast.stateless then
    local unsupported, supported = {}, ast.supported
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
    if method == "BYE" or method == "CANCEL" then
      -- RFC 3261 15.1.2: a BYE that matches no dialog (9.2: a CANCEL no INVITE)
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

-- expect_early(agent, call_id, fn | nil): fn(req) handles a NOTIFY of Call-ID call_id
-- that matches no dialog yet (its SUBSCRIBE is still waiting for the 2xx)
function M.expect_early(agent, call_id, fn)
  local ast = state(agent)
  ast.early = ast.early or {}
  ast.early[call_id] = fn
end

-- ------------------------------------------------------------------ events
-- The C core calls dispatch(event, a, b).  Each event has one owner: the class module
-- that handles it registers it with on_event (a second owner raises).

local events = {}

local owners = {}

-- on_event(name, fn): the calling module becomes the owner of event `name` (a module
-- loaded again replaces its own handler; another module raises)
function M.on_event(name, fn)
  local owner = debug.getinfo(2, "S").source
  if owners[name] and owners[name] ~= owner then
    error("luasip.dispatcher: event " .. name .. " is owned by " .. owners[name], 2)
  end
  owners[name] = owner
  events[name] = fn
end

events.request = on_request

function events.timer(t)
  local st = t and state(t)
  local fire = st and st.fire
  if fire then
    st.fire = nil
    fire()
  end
end

M.spawn_for = spawn_for
M.events = events   -- (read by modules not yet on on_event)

function M.dispatch(event, a, b)
  local fn = events[event]
  if fn then
    local pa, pb = ev_a, ev_b
    ev_a, ev_b = a, b
    fn(a, b)
    ev_a, ev_b = pa, pb
  end
end

core.set_dispatcher(M.dispatch)

return M
