-- luasip.request: the class luasip.request (csrc/server_tx.c): a request we received.
-- This module owns the request's methods: reply (reliable 1xx and PRACK), wait_ack,
-- on_cancel, dialog, early, answer (luasip.call), proxy (luasip.proxy), and the events of
-- a request's life: "cancel", "ack", "ack_timeout", "prack", "prack_timeout",
-- "request_closed".  Per-request state (class.state): ack, ack_slot, ack_timeout,
-- prack_slot, on_cancel, early_dialog, made_dialog, in_dialog, early_local_sdp,
-- early_remote_sdp.
-- Hooks (class.hook("luasip.request", point, fn)): "replied" fn(req, status, result) after
-- every reply that was sent.

--- The class `luasip.request`: a request the agent received, handed to the method's
-- handler as `req`.  Fields (read-only): `req.method`, `req.uri`, `req.call_id`,
-- `req.from`, `req.to`, `req.cseq`, `req.body`, `req.content_type`, `req.source`,
-- `req.data` (the application's own table).  Methods implemented in C (see the README):
-- `req:header`, `req:headers`, `req:raw`, `req:answered`, `req:cancelled`.
-- @classmod luasip.request
-- @usage
-- app:on("MESSAGE", function(req)
--   print(req.from.uri, req.body)
--   req:reply(200)
-- end)

local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local state = class.state
local call = class.call
local methods, _, C = class.get("luasip.request")

local M = {}

local c_reply = C.reply

-- (type() only where needed: ~400 instructions a call in Lua 5.4, on every reply)
local function options_of(reason, opts)
  if reason ~= nil and type(reason) == "table" then return reason end
  return opts
end

--- Answers the request (a final response, or a provisional one before it).
-- @function request:reply
-- @int status 100-699
-- @string[opt] reason the reason phrase (default: the standard one)
-- @tab[opt] opts `headers`, `body`, `content_type`; `reliable = true` sends a 101-199
-- reliably (RFC 3262) and waits for its PRACK (`timeout`)
-- @return true; for a reliable 1xx the PRACK request; or `nil, message, code`
-- @usage req:reply(486, "Busy Here")
-- req:reply(200, { body = "ok", content_type = "text/plain" })

-- req:reply(status [, reason] [, opts]) -> true | prack (reliable) | nil, err, code
-- opts.reliable = true sends a 101-199 reliably (RFC 3262) and waits for its PRACK:
-- -> prack | nil, "timeout" | nil, "cancelled"
function methods.reply(self, status, reason, opts)
  local o = options_of(reason, opts)
  local reliable = o ~= nil and type(o) == "table" and o.reliable
  local result, err, code
  local st = state(self, false)
  if not reliable then
    result, err, code = call("luasip.request:reply", 2, c_reply, self, status, reason, opts)
    if not st then
      -- the common case: a request the Lua layer keeps nothing about
      if result ~= nil then           -- (sent: status is a number c_reply checked)
        if status >= 200 then dispatcher.answered(self) end
        class.run("luasip.request", "replied", self, status, result)
      end
      return result, err, code
    end
  else
    st = st or state(self)
    dispatcher.current("luasip.request:reply")
    local slot = dispatcher.new_slot("luasip.request:reply")
    st.prack_slot = slot
    result, err, code = call("luasip.request:reply", 2, c_reply, self, status, reason, opts)
    if result then
      -- a session settled in a reliable 18x (and its PRACK) is the dialog's until
      -- changed: the offer/answer of RFC 3262 5
      if o.body and type(status) == "number" and status < 200 then
        st.early_local_sdp = o.body
      end
      result, err, code = dispatcher.wait(slot, o.timeout)
      if result and result.body then st.early_remote_sdp = result.body end
    end
    st.prack_slot = nil
  end
  local d = st.early_dialog
  if d and type(status) == "number" and status >= 300 then
    require("luasip.dialog").ended(d, "rejected")
  end
  if result ~= nil and st.in_dialog and type(status) == "number" and status < 300
    and status >= 200 and (self.method == "INVITE" or self.method == "UPDATE") then
    -- a refresh answered by the script: its offer and our answer are the session now
    local ob = type(o) == "table" and o.body
    if ob or self.body then require("luasip.call").settled(st.in_dialog, ob, self.body) end
  end
  if result ~= nil then
    if status >= 200 then dispatcher.answered(self) end
    class.run("luasip.request", "replied", self, status, result)
  end
  return result, err, code
end

--- Waits for the ACK of the final response to this INVITE (waiting call).
-- @function request:wait_ack
-- @number[opt] timeout seconds
-- @return the ACK request, or `nil, "timeout"` / `nil, "terminated"`

-- req:wait_ack([timeout]) -> ack | nil, "timeout" | nil, "terminated"
function methods.wait_ack(self, timeout)
  local st = state(self)
  if st.ack then return st.ack end
  if st.ack_timeout then return nil, "timeout", "timeout" end
  local slot = dispatcher.new_slot("luasip.request:wait_ack")
  st.ack_slot = slot
  return dispatcher.wait(slot, timeout)
end

--- Sets what runs when a CANCEL ends this INVITE (the core answers the CANCEL and the
-- INVITE's 487).
-- @function request:on_cancel
-- @tparam ?func fn `fn(req)`, or nil
-- @treturn ?func the previous one

-- req:on_cancel(fn) -> previous: fn(req) runs when a CANCEL ends this INVITE
function methods.on_cancel(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.request:on_cancel: function expected", 2)
  end
  local st = state(self)
  local old = st.on_cancel
  st.on_cancel = fn
  return old
end

--- The dialog of an in-dialog request; for a SUBSCRIBE or REFER, the dialog it
-- creates (the caller then answers 2xx).  INVITEs use `request:answer`.
-- @function request:dialog
-- @return the dialog, or `nil, message, code`

-- req:dialog() -> dialog | nil, err, code: for an in-dialog request, its dialog; for a
-- SUBSCRIBE or REFER, the dialog it creates (the caller then answers 2xx); INVITEs use
-- req:answer
function methods.dialog(self)
  local st = state(self)
  if st.in_dialog then return st.in_dialog end
  if self.method ~= "SUBSCRIBE" and self.method ~= "REFER" then
    error("luasip.request:dialog: only SUBSCRIBE and REFER (INVITE: req:answer)", 2)
  end
  if st.made_dialog then return st.made_dialog end
  local d, err, code = C._dialog(self)
  if not d then return nil, err, code end
  st.made_dialog = require("luasip.dialog").init(d)
  return d
end

-- in_dialog(req) -> the dialog an in-dialog request arrived in, or nil
function M.in_dialog(req)
  local st = state(req, false)
  return st and st.in_dialog
end

-- early_dialog(req [, create]) -> the early dialog of an INVITE (created on demand)
function M.early_dialog(req, create)
  local st = state(req)
  if st.early_dialog or not create then return st.early_dialog end
  local d, err, code = C._dialog(req)
  if not d then return nil, err, code end
  st.early_dialog = require("luasip.dialog").init(d)
  return d
end

--- The early dialog of an INVITE (RFC 3261 12.1.1), so that requests such as UPDATE
-- reach `dialog:on` before the 2xx; `request:answer` confirms it, a failure or CANCEL
-- ends it.
-- @function request:early
-- @return the dialog

-- req:early() -> dialog: the early dialog of an INVITE (RFC 3261 12.1.1), so requests
-- such as UPDATE (RFC 3311) reach dialog:on() before the 2xx; req:answer confirms it, a
-- failure or CANCEL ends it
function methods.early(self)
  if self.method ~= "INVITE" then error("luasip.request:early: INVITE only", 2) end
  return M.early_dialog(self, true)
end

-- the offer/answer state a reliable 1xx settled (luasip.call)
function M.early_sdp(req)
  local st = state(req)
  return st.early_local_sdp, st.early_remote_sdp
end

--- Whether the top Route header names this agent (the request follows a Record-Route
-- this agent put in, RFC 3261 16.4): a proxy relays in-dialog requests only then.
-- @function request:loose_route
-- @treturn boolean

--- Answers an INVITE with a 2xx and returns the confirmed dialog, once the ACK came
-- (waiting call).
-- @function request:answer
-- @tab[opt] opts `status` (default 200), `headers`, `body`, `content_type`, `timeout`,
-- `session_expires`, `min_se`, `media`
-- @return the dialog, or `nil, message, code`
-- @usage local d = req:answer{ body = sip.sdp.answer(req.body, caps),
--   content_type = "application/sdp" }

--- Proxies the request statefully to one or more targets and waits for the best
-- response, which is sent upstream (waiting call).
-- @function request:proxy
-- @param targets a URI or a list of URIs
-- @tab[opt] opts `record_route`, `forking` (`"parallel"` or `"sequential"`), `timeout`,
-- `headers`, `on_response`, ...
-- @return the response forwarded, or `nil, message, code`
-- @usage req:proxy(app.location:lookup(req.uri), { record_route = true })

-- req:loose_route() -> true | false: whether the top Route header names this agent (the
-- request follows a Record-Route we put in: RFC 3261 16.4).  A proxy relays in-dialog
-- requests only when this is true; anything else would make it an open relay.  In C
-- (csrc/proxy.c), from sofia's parse of the Route header.
methods.loose_route = C.loose_route

methods.answer = function(...) return require("luasip.call").answer(...) end
methods.proxy = require("luasip.proxy").proxy

-- ------------------------------------------------------------------ events

dispatcher.on_event("prack", function(inv, prack)
  local slot = inv and state(inv).prack_slot
  if slot then dispatcher.fill(slot, prack) end
end)

dispatcher.on_event("prack_timeout", function(inv)
  local slot = inv and state(inv).prack_slot
  if slot then dispatcher.fill(slot, nil, "timeout", "timeout") end
end)

dispatcher.on_event("request_closed", function(req)
  if not req then return end
  local st = state(req)
  for _, k in ipairs{ "ack_slot", "prack_slot" } do
    if st[k] then dispatcher.fill(st[k], nil, "agent closed", "closed") end
  end
end)

dispatcher.on_event("cancel", function(req)
  if not req then return end
  local st = state(req)
  if st.early_dialog then require("luasip.dialog").ended(st.early_dialog, "cancelled") end
  local fn = st.on_cancel
  if fn then
    local ok, err = pcall(fn, req)
    if not ok then dispatcher.log("error", "on_cancel failed: " .. dispatcher.err_text(err)) end
  end
  dispatcher.wake_request(req, nil, "cancelled", "cancelled")
end)

dispatcher.on_event("ack", function(inv, ack)
  if inv then
    local st = state(inv)
    st.ack = ack
    if st.ack_slot then dispatcher.fill(st.ack_slot, ack) end
  end
  local agent = ack and ack.agent
  local h = agent and state(agent).handlers.ACK
  if h then dispatcher.spawn_for(ack, h, ack, inv) end
end)

dispatcher.on_event("ack_timeout", function(inv)
  if not inv then return end
  local st = state(inv)
  st.ack_timeout = true
  if st.ack_slot then dispatcher.fill(st.ack_slot, nil, "timeout", "timeout") end
end)

return M
