-- luasip.dialog: the class luasip.dialog (csrc/dialog.c): dialogs on nta legs (RFC 3261
-- 12-15), for INVITE, SUBSCRIBE and REFER.
--   UAS: local d = req:answer{ body = sdp }          -- 200, waits for the ACK
--   UAC: local d, res = agent:invite{ uri = ..., body = sdp }
--   d:request("INFO", {...}), d:on("INFO", fn), d:wait_request("INFO"), d:bye(), d:wait_end()
-- Owns the events "dialog_request" and "dialog_closed".  Per-dialog state (class.state):
-- handlers, pending (slots woken when the dialog ends), ended (the reason), end_slots,
-- on_end, queue/waiters (wait_request), local_sdp, remote_sdp and the session timer's.
-- Hooks (class.hook("luasip.dialog", point, fn)): "ended" fn(d, reason); "info" fn(d, req)
-- for each INFO the peer sends, before the dialog's handlers (a hook that answers it takes it:
-- luasip.media takes DTMF).

--- The class `luasip.dialog`: an INVITE, SUBSCRIBE or REFER dialog (RFC 3261 12-15),
-- made by `request:answer`, `agent:invite`, `request:dialog` or `client_tx:dialog`.
-- Methods implemented in C (see the README): `dialog:send`, `dialog:state`,
-- `dialog:target`.
-- @classmod luasip.dialog
-- @usage
-- local d = assert(app:invite{ uri = "sip:bob@127.0.0.1:5070" })
-- d:on("INFO", function(req) req:reply(200) end)
-- d:wait_end()

local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"
local sipmethods = require "luasip.sipmethods"
local st_timer = require "luasip.session_timer"

local state = class.state
local methods, getters, C = class.get("luasip.dialog")

local M = {}

local WEAK_KEYS = { __mode = "k" }
local NONE = {}   -- an empty list to walk, never written

-- init(d) -> d: a dialog ready for the Lua layer (kept alive while its leg lives)
function M.init(d)
  local st = state(d)
  if not st.handlers then
    C._keep(d)
    st.handlers = {}
    st.pending = {}
    st.txs = setmetatable({}, WEAK_KEYS)
  end
  return d
end

-- ended(d, reason): the dialog is over; everything waiting on it learns why (once)
function M.ended(d, reason)
  local st = state(d)
  if st.ended then return end
  st.ended = reason or "terminated"
  st_timer.stop(d)
  C.terminate(d)
  for _, slot in ipairs(st.end_slots or NONE) do dispatcher.fill(slot, st.ended) end
  st.end_slots = nil
  for _, w in ipairs(st.waiters or NONE) do dispatcher.fill(w.slot, nil, "terminated", "terminated") end
  st.waiters = nil
  local fn = st.on_end
  if fn then
    local ok, err = pcall(fn, d, st.ended)
    if not ok then dispatcher.log("error", "dialog on_end failed: " .. tostring(err)) end
  end
  -- anything waiting on an in-dialog transaction learns the dialog is gone
  local pending = st.pending
  if pending and next(pending) ~= nil then
    for slot in pairs(pending) do dispatcher.fill(slot, nil, "terminated", "terminated") end
    st.pending = {}
  end
  local txs = st.txs
  if txs and next(txs) ~= nil then
    local client_tx = require "luasip.client_tx"
    for tx in pairs(txs) do client_tx.abort(tx, nil, "terminated", "terminated") end
  end
  class.run("luasip.dialog", "ended", d, st.ended)
end

-- watch(d, slot) / unwatch(d, slot): slot is filled with nil, "terminated" if the dialog
-- ends first (modules that wait on a dialog: luasip.refer)
function M.watch(d, slot)
  M.init(d)
  state(d).pending[slot] = true
end

function M.unwatch(d, slot)
  local p = state(d).pending
  if p then p[slot] = nil end
end

-- confirmed(d): the 2xx of its INVITE went out (luasip.call)
function M.confirmed(d)
  return C._confirmed(d)
end

-- is_ended(d) -> reason | nil
function M.is_ended(d)
  return state(d).ended
end

for _, k in ipairs{ "local_sdp", "remote_sdp", "session_expires", "session_refresher" } do
  getters[k] = function(self) return state(self)[k] end
end

--- Forgets the dialog without sending anything: what waits on it (`wait_end`,
-- `on_end`, in-dialog requests) learns it ended (`"terminated"`).
-- @function dialog:terminate
-- @treturn boolean true

-- dialog:terminate() -> true: forget the dialog without sending anything; what waits on
-- it (wait_end, on_end, in-dialog requests) learns it ended ("terminated")
function methods.terminate(self)
  M.ended(self, "terminated")
  return C.terminate(self)
end

local function copy(t)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  return o
end

local function send_in_dialog(self, o, level)
  o.uri = nil
  local tx, err, code = class.call("luasip.dialog:request", level or 4, C.send, self, o)
  if not tx then return nil, err, code end
  -- the wait is woken with "terminated" if the dialog ends under it (M.ended)
  local txs = state(self).txs
  txs[tx] = true
  local res, rerr, rcode, rres = tx:wait(o.timeout)
  txs[tx] = nil
  return res, rerr, rcode, rres
end

--- Sends a request in the dialog and waits for its final response (waiting call).
-- @function dialog:request
-- @string method the method (re-INVITE, UPDATE, INFO, MESSAGE, ...)
-- @tab[opt] opts as `agent:request`'s; `auth = { username =, password = | ha1 = }`
-- answers a 401/407
-- @return the response, or `nil, message, code [, response]`
-- @usage d:request("INFO", { body = "Signal=5", content_type = "application/dtmf-relay" })

local REFRESHES = { INVITE = true, UPDATE = true, SUBSCRIBE = true, NOTIFY = true }

-- dialog:request(method [, opts]) -> response | nil, err, code [, response]
-- opts as agent:request, and auth = { username =, password = | ha1 = } answers a 401/407
function methods.request(self, method, opts)
  local fname = "luasip.dialog:request"
  method = sipmethods.norm(method, fname)
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  dispatcher.current(fname)
  M.init(self)
  if state(self).ended then return nil, "dialog terminated", "terminated" end
  local o = copy(opts)
  o.method = method
  local res, rerr, rcode, rres
  if o.auth ~= nil then
    o.uri = self:target()
    res, rerr, rcode, rres = require("luasip.auth").send_with_auth(self, o, send_in_dialog,
      method, fname, true)
  else
    res, rerr, rcode, rres = send_in_dialog(self, o, 3)
  end
  -- RFC 3261 12.2.1.2: the 2xx to a target refresh carries the peer's remote target
  if res and REFRESHES[method] and res.status < 300 then
    local contact = res:header("Contact")
    if contact then C._retarget(self, contact) end
  end
  if res and method == "INVITE" then require("luasip.call").settled(self, o.body, res.body) end
  return res, rerr, rcode, rres
end

--- Sets the handler of in-dialog requests of a method.
-- @function dialog:on
-- @string method the method
-- @tparam ?func fn `fn(req, dialog)`, or nil
-- @treturn ?func the previous handler

-- dialog:on(method, fn(req, dialog) | nil) -> previous
function methods.on(self, method, fn)
  method = sipmethods.norm(method, "luasip.dialog:on")
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.dialog:on: handler must be a function or nil", 2)
  end
  local st = state(M.init(self))
  local old = st.handlers[method]
  st.handlers[method] = fn
  return old
end

--- Waits for the next in-dialog request (of that method) that no `dialog:on` handler
-- takes; the caller answers it (a BYE is answered already).  Waiting call.
-- @function dialog:wait_request
-- @string[opt] method the method
-- @number[opt] timeout seconds
-- @return the request, or `nil, "timeout"` / `nil, "terminated"`

-- dialog:wait_request([method] [, timeout]) -> req | nil, "timeout" | nil, "terminated":
-- the next in-dialog request (of that method) that no dialog:on handler takes; the
-- caller answers it (a BYE is answered already)
function methods.wait_request(self, method, timeout)
  local fname = "luasip.dialog:wait_request"
  if type(method) == "number" and timeout == nil then method, timeout = nil, method end
  if method ~= nil then method = sipmethods.norm(method, fname) end
  if timeout ~= nil and (type(timeout) ~= "number" or timeout <= 0) then
    error(fname .. ": timeout must be a positive number", 2)
  end
  local st = state(M.init(self))
  if st.ended then return nil, "terminated", "terminated" end
  local slot = dispatcher.new_slot(fname)
  local w = { method = method, slot = slot }
  st.waiters = st.waiters or {}
  st.waiters[#st.waiters + 1] = w
  local req, err, code = dispatcher.wait(slot, timeout)
  for i, x in ipairs(st.waiters or NONE) do
    if x == w then table.remove(st.waiters, i) break end
  end
  return req, err, code
end

--- Ends the dialog: sends a BYE and waits for its response (waiting call).
-- @function dialog:bye
-- @return true, or `nil, message, code`

-- dialog:bye() -> true | nil, err, code: ends the dialog (BYE, then terminated)
function methods.bye(self)
  if state(self).ended then return nil, "dialog terminated", "terminated" end
  local tx, err, code = C.send(self, { method = "BYE" })
  M.ended(self, "bye")
  if not tx then return nil, err, code end
  local res, rerr, rcode = tx:wait()
  if not res and rcode ~= 481 and rcode ~= 408 then return nil, rerr, rcode end
  return true
end

--- Waits until the dialog ends (waiting call).
-- @function dialog:wait_end
-- @number[opt] timeout seconds
-- @return the reason (`"bye"`, `"remote bye"`, ...), or `nil, "timeout"`

-- dialog:wait_end([timeout]) -> reason ("bye", "remote bye", ...) | nil, "timeout"
function methods.wait_end(self, timeout)
  local st = state(self)
  if st.ended then return st.ended end
  local slot = dispatcher.new_slot("luasip.dialog:wait_end")
  local slots = st.end_slots or {}
  slots[#slots + 1] = slot          -- several coroutines may wait for the end
  st.end_slots = slots
  return dispatcher.wait(slot, timeout)
end

--- Sets what runs once when the dialog ends, whatever ended it (a BYE either way,
-- session expiry, the agent closed, ...).
-- @function dialog:on_end
-- @tparam ?func fn `fn(dialog, reason)`, or nil
-- @treturn ?func the previous one

--- Transfers the other party (REFER in the dialog, RFC 3515) and follows the NOTIFY
-- reports; see the README, "Call transfer".
-- @function dialog:refer
-- @param target a URI, or a dialog to replace (attended transfer)
-- @tab[opt] opts options
-- @return the final status of the transfer, or `nil, message, code`

-- dialog:on_end(fn(dialog, reason) | nil) -> previous: called once when the dialog ends,
-- whatever ended it (BYE either way, session expiry, agent closed, ...)
function methods.on_end(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.dialog:on_end: function expected", 2)
  end
  local st = state(self)
  local old = st.on_end
  st.on_end = fn
  return old
end

methods.refer = function(...) return require("luasip.refer").dialog_refer(...) end

-- ------------------------------------------------------------------ events

dispatcher.on_event("dialog_closed", function(d)
  if d then M.ended(d, "closed") end
end)

-- the first waiter for this method (or any method) takes the request
local function take_waiter(st, method)
  for i, w in ipairs(st.waiters or NONE) do
    if w.method == nil or w.method == method then
      table.remove(st.waiters, i)
      return w
    end
  end
end

-- in-dialog requests from the peer
dispatcher.on_event("dialog_request", function(d, req)
  if not d or not req then return end
  local st = state(M.init(d))
  state(req).in_dialog = d
  local method = req.method
  if method == "INFO" then
    class.run("luasip.dialog", "info", d, req)
    if req:answered() then return end
  end
  local h = st.handlers[method]
  if method == "BYE" then
    req:reply(200)
    local w = not h and take_waiter(st, method)
    if w then dispatcher.fill(w.slot, req) end
    M.ended(d, "remote bye")
    if h then dispatcher.spawn_for(req, h, req, d) end
    return
  end
  if h then
    -- a refresh answered by the script still re-arms the session timer
    if method == "INVITE" or method == "UPDATE" then st_timer.on_refresh(d, req) end
    return dispatcher.spawn_for(req, h, req, d)
  end
  local w = take_waiter(st, method)
  if w then
    if method == "INVITE" or method == "UPDATE" then st_timer.on_refresh(d, req) end
    return dispatcher.fill(w.slot, req)
  end
  if method == "INFO" or method == "NOTIFY" or method == "OPTIONS" then
    return req:reply(200)
  end
  if method == "INVITE" or method == "UPDATE" then
    return require("luasip.call").refresh(d, req)
  end
  req:reply(405, { headers = { Allow = sipmethods.in_dialog } })
end)

return M
