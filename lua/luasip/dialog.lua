-- luasip.dialog: dialogs for INVITE (RFC 3261 12-15) on top of the C legs (csrc/dialog.c).
--   UAS: local d = req:answer{ body = sdp }          -- 200, waits for the ACK
--   UAC: local d, res = agent:invite{ uri = ..., body = sdp }
--   d:request("INFO", {...}), d:on("INFO", fn), d:bye(), d:wait_end()
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

local sdp = require "luasip.sdp"

local M = {}

-- our current session, with each stream's direction answering the offer's (RFC 3264
-- 6.1: a hold offer, sendonly, is answered recvonly)
local function mirror_sdp(local_sdp, offer)
  local o, l = sdp.parse(offer or ""), sdp.parse(local_sdp or "")
  if not o or not l then return local_sdp end
  local map = { sendonly = "recvonly", recvonly = "sendonly", inactive = "inactive" }
  local changed = false
  for i, m in ipairs(l.media) do
    local om = o.media[i]
    local want = om and (map[om.direction] or "sendrecv") or m.direction
    if want ~= m.direction then
      m.direction, changed = want, true
    end
  end
  if not changed then return local_sdp end
  return sdp.bump(sdp.build(l))
end

local dialog_methods = core.methods("luasip.dialog")
local req_methods = core.methods("luasip.request")
local agent_methods = core.methods("luasip.agent")

-- ------------------------------------------------------------------ session timers
-- RFC 4028: the refresher re-sends UPDATE (or re-INVITE) every interval/2; the other
-- side sends BYE when no refresh came for interval - min(32, interval/3) seconds.

local DEFAULT_MIN_SE = 90

-- Session-Expires value -> interval, refresher ("uac"/"uas"/nil)
local function parse_se(v)
  if not v then return nil end
  local n = tonumber(v:match("^%s*(%d+)"))
  local r = v:match(";%s*refresher%s*=%s*(%a+)")
  return n, r and r:lower()
end

local function has_tag(list, tag)
  for _, v in ipairs(list) do if v:lower() == tag then return true end end
  return false
end

local session_expire, session_refresh

local function st_stop(d)
  if d._st_timer then d._st_timer:cancel() end
  d._st_timer = nil
end

-- (re)arm the timer for interval seconds; we_refresh: we send the refreshes
local function st_start(d, interval, we_refresh)
  st_stop(d)
  if not interval or d._ended then return end
  d.session_expires, d.session_refresher = interval, we_refresh and d.role
    or (d.role == "uac" and "uas" or "uac")
  if we_refresh then
    d._st_timer = dispatcher.timer(interval / 2, function() session_refresh(d) end)
  else
    d._st_timer = dispatcher.timer(interval - math.min(32, interval / 3),
      function() session_expire(d) end)
  end
end

local function se_header(d)
  return d.session_expires .. ";refresher=" .. d.session_refresher
end

local c_terminate = dialog_methods.terminate

local function ended(d, reason)
  if d._ended then return end
  d._ended = reason or "terminated"
  st_stop(d)
  c_terminate(d)
  for _, slot in ipairs(d._end_slots or {}) do dispatcher.fill(slot, d._ended) end
  d._end_slots = nil
  local fn = d._on_end
  if fn then
    local ok, err = pcall(fn, d, d._ended)
    if not ok then dispatcher.log("error", "dialog on_end failed: " .. tostring(err)) end
  end
  -- anything waiting on an in-dialog transaction learns the dialog is gone
  for tx in pairs(d._pending or {}) do
    if tx._slot then dispatcher.fill(tx._slot, nil, "terminated", "terminated") end
  end
end

local function init(d)
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  return d
end
M.init = init

-- req:dialog() -> dialog | nil, err, code: for an in-dialog request, its dialog; for a
-- SUBSCRIBE or REFER, the dialog it creates (the caller then answers 2xx); INVITEs use
-- req:answer
function req_methods.dialog(self)
  -- an in-dialog request: the dialog it belongs to
  local inside = self._in_dialog
  if inside then return inside end
  if self.method ~= "SUBSCRIBE" and self.method ~= "REFER" then
    error("luasip.request:dialog: only SUBSCRIBE and REFER (INVITE: req:answer)", 2)
  end
  if self._made_dialog then return self._made_dialog end
  local d, err, code = self:_dialog()
  if not d then return nil, err, code end
  self._made_dialog = init(d)
  return d
end

-- dialog:terminate() -> true: forget the dialog without sending anything; what waits on
-- it (wait_end, on_end, in-dialog requests) learns it ended ("terminated")
function dialog_methods.terminate(self)
  ended(self, "terminated")
  return c_terminate(self)
end

session_expire = function(d)
  d._st_timer = nil
  if d._ended then return end
  dispatcher.log("info", "session timer expired: BYE")
  d:send{ method = "BYE" }
  ended(d, "session expired")
end

session_refresh = function(d)
  d._st_timer = nil
  if d._ended then return end
  local method = d._st_method or "UPDATE"
  local o = { headers = { ["Session-Expires"] = se_header(d), Supported = "timer" } }
  if method == "INVITE" and d.local_sdp then
    o.body, o.content_type = d.local_sdp, "application/sdp"
  end
  local res, _, code = d:request(method, o)
  if not res then
    if code == 481 or code == 408 or code == "timeout" then return ended(d, "refresh failed") end
    -- 405/501 to UPDATE: fall back to re-INVITE next time; retry soon otherwise
    if method == "UPDATE" and (code == 405 or code == 501) then d._st_method = "INVITE" end
    return st_start(d, d.session_expires, true)
  end
  local n, r = parse_se(res:header("Session-Expires"))
  if n then return st_start(d, n, r == d.role) end
  st_start(d, d.session_expires, true)
end

-- a refresh arrived (re-INVITE/UPDATE from the peer): what our 2xx says, and re-arm
local function st_on_refresh(d, req)
  if not d.session_expires then return nil end
  local n, r = parse_se(req:header("Session-Expires"))
  n = n or d.session_expires
  if n < (d._st_min_se or DEFAULT_MIN_SE) then n = d.session_expires end
  local them = d.role == "uac" and "uas" or "uac"
  r = r or them
  st_start(d, n, r == d.role)
  return { ["Session-Expires"] = se_header(d), Require = "timer" }
end
M.st_on_refresh = st_on_refresh

-- req:early() -> dialog: the early dialog of an INVITE (RFC 3261 12.1.1), so requests
-- such as UPDATE (RFC 3311) reach dialog:on() before the 2xx; req:answer confirms it, a
-- failure or CANCEL ends it
function req_methods.early(self)
  if self.method ~= "INVITE" then error("luasip.request:early: INVITE only", 2) end
  if self._early_dialog then return self._early_dialog end
  local d, err, code = self:_dialog()
  if not d then return nil, err, code end
  self._early_dialog = init(d)
  return d
end

local reply_before = req_methods.reply
function req_methods.reply(self, status, a, b)
  -- a session settled in a reliable 18x (and its PRACK) is the dialog's until changed
  local o = type(a) == "table" and a or b
  if type(o) == "table" and o.reliable and o.body and type(status) == "number" and status < 200 then
    self._early_local_sdp = o.body
  end
  local ok, err, code = reply_before(self, status, a, b)
  if ok and type(ok) ~= "boolean" and ok.body then self._early_remote_sdp = ok.body end
  local d = self._early_dialog
  if d and type(status) == "number" and status >= 300 then ended(d, "rejected") end
  return ok, err, code
end

-- req:answer([opts]) -> dialog | nil, err, code: 200 (with opts.body etc.), then the ACK
-- opts.session_expires = seconds (and opts.min_se = 90) turns RFC 4028 session timers on
function req_methods.answer(self, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.request:answer: options must be a table", 2)
  end
  opts = opts or {}
  -- RFC 4028 on the UAS side: 422 below our Min-SE, else the interval and refresher
  local st_interval, st_refresher
  local want = opts.session_expires
  local req_se, req_ref = parse_se(self:header("Session-Expires"))
  if want or req_se then
    local min_se = opts.min_se or DEFAULT_MIN_SE
    if req_se and req_se < min_se then
      self:reply(422, "Session Interval Too Small", { headers = { ["Min-SE"] = tostring(min_se) } })
      return nil, "422 Session Interval Too Small", 422
    end
    st_interval = req_se or want
    if want and want < st_interval then st_interval = math.max(want, min_se) end
    local uac_supports = has_tag(self:headers("Supported"), "timer")
      or has_tag(self:headers("Require"), "timer")
    st_refresher = req_ref or (uac_supports and "uac" or "uas")
    local h = {}
    for k, v in pairs(opts.headers or {}) do h[k] = v end
    h["Session-Expires"] = st_interval .. ";refresher=" .. st_refresher
    if uac_supports then h.Require = "timer" end
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.headers, opts = h, o
  end
  local d = self._early_dialog
  if not d then
    local err, code
    d, err, code = self:_dialog()
    if not d then return nil, err, code end
    init(d)
  end
  d._st_min_se = opts.min_se
  if opts.body and not opts.content_type then
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.content_type, opts = "application/sdp", o
  end
  local ok, rerr, rcode = self:reply(opts.status or 200, opts)
  if not ok then
    ended(d, rcode)
    return nil, rerr, rcode
  end
  d:_confirmed()
  d.local_sdp = opts.body or self._early_local_sdp or d.local_sdp
  d.remote_sdp = self.body or self._early_remote_sdp
  local ack, aerr, acode = self:wait_ack(opts.timeout)
  if not ack then
    -- no ACK: the core sends BYE after 64*T1; a shorter timeout sends it now
    if aerr == "timeout" and opts.timeout then d:send{ method = "BYE" } end
    ended(d, aerr)
    return nil, aerr, acode
  end
  if ack.body then d.remote_sdp = ack.body end
  if st_interval then st_start(d, st_interval, st_refresher == "uas") end
  return d
end

-- agent:invite{ uri=, from=, to=, headers=, body=, content_type=, timeout=,
--   on_provisional= } -> dialog, response | nil, err, code [, response]
function agent_methods.invite(self, opts)
  if type(opts) ~= "table" then error("luasip.agent:invite: options table expected", 2) end
  dispatcher.current("luasip.agent:invite")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.method, o.dialog = "INVITE", true
  if o.body and not o.content_type then o.content_type = "application/sdp" end
  if opts.session_expires then
    -- RFC 4028 on the UAC side: ask for the interval, say we can refresh
    local h = {}
    for k, v in pairs(opts.headers or {}) do h[k] = v end
    h["Session-Expires"] = tostring(opts.session_expires)
    h["Min-SE"] = tostring(opts.min_se or DEFAULT_MIN_SE)
    h.Supported = "timer, 100rel"
    o.headers = h
  end
  local tx, err, code = self:send(o)
  if not tx then return nil, err, code end
  tx._on_provisional = opts.on_provisional
  if opts.on_sent then opts.on_sent(tx) end
  local res, werr, wcode, wres = tx:wait(opts.timeout)
  if not res and wcode == 422 and wres and opts.session_expires and not opts._st_retried then
    -- 422: try again once with the callee's Min-SE (RFC 4028 7.4)
    local min_se = tonumber(wres:header("Min-SE") or "")
    if min_se and min_se > opts.session_expires then
      local again = {}
      for k, v in pairs(opts) do again[k] = v end
      again.session_expires, again.min_se, again._st_retried = min_se, min_se, true
      return agent_methods.invite(self, again)
    end
  end
  if not res then return nil, werr, wcode, wres end
  local d = tx:dialog()
  if not d then return nil, "no dialog for the 2xx", "dialog", res end
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  d.local_sdp, d.remote_sdp = opts.body, res.body
  if opts.session_expires then
    local n, r = parse_se(res:header("Session-Expires"))
    -- no Session-Expires in the 2xx: the callee has no timer; we refresh (RFC 4028 7.2)
    st_start(d, n or opts.session_expires, (r or "uac") == "uac")
  end
  return d, res
end

-- dialog:request(method [, opts]) -> response | nil, err, code [, response]
function dialog_methods.request(self, method, opts)
  if type(method) ~= "string" then error("luasip.dialog:request: method must be a string", 2) end
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.dialog:request: options must be a table", 2)
  end
  dispatcher.current("luasip.dialog:request")
  if self._ended then return nil, "dialog terminated", "terminated" end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.method = method:upper()
  local tx, err, code = self:send(o)
  if not tx then return nil, err, code end
  self._pending[tx] = true
  local res, rerr, rcode, rres = tx:wait(o.timeout)
  self._pending[tx] = nil
  if res and o.method == "INVITE" then
    self.local_sdp = o.body or self.local_sdp
    self.remote_sdp = res.body or self.remote_sdp
  end
  return res, rerr, rcode, rres
end

-- dialog:on(method, fn(req, dialog) | nil) -> previous
function dialog_methods.on(self, method, fn)
  if type(method) ~= "string" then error("luasip.dialog:on: method must be a string", 2) end
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.dialog:on: handler must be a function or nil", 2)
  end
  method = method:upper()
  local old = self._handlers[method]
  self._handlers[method] = fn
  return old
end

-- dialog:bye() -> true | nil, err, code: ends the dialog (BYE, then terminated)
function dialog_methods.bye(self)
  if self._ended then return nil, "dialog terminated", "terminated" end
  local tx, err, code = self:send{ method = "BYE" }
  ended(self, "bye")
  if not tx then return nil, err, code end
  local res, rerr, rcode = tx:wait()
  if not res and rcode ~= 481 and rcode ~= 408 then return nil, rerr, rcode end
  return true
end

-- dialog:wait_end([timeout]) -> reason ("bye", "remote bye", ...) | nil, "timeout"
function dialog_methods.wait_end(self, timeout)
  if self._ended then return self._ended end
  local slot = dispatcher.new_slot("luasip.dialog:wait_end")
  local slots = self._end_slots or {}
  slots[#slots + 1] = slot          -- several coroutines may wait for the end
  self._end_slots = slots
  return dispatcher.wait(slot, timeout)
end

-- dialog:on_end(fn(dialog, reason) | nil) -> previous: called once when the dialog ends,
-- whatever ended it (BYE either way, session expiry, agent closed, ...)
function dialog_methods.on_end(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.dialog:on_end: function expected", 2)
  end
  local old = self._on_end
  self._on_end = fn
  return old
end

-- a CANCEL ends the early dialog with the INVITE
local cancel_before = dispatcher.events.cancel
dispatcher.events.cancel = function(req)
  if req and req._early_dialog then ended(req._early_dialog, "cancelled") end
  return cancel_before(req)
end

dispatcher.events.dialog_closed = function(d)
  if d then ended(d, "closed") end
end

-- in-dialog requests from the peer
dispatcher.events.dialog_request = function(d, req)
  if not d or not req then return end
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  req.dialog = d                      -- (shadowed by req:dialog(); kept for old readers)
  req._in_dialog = d
  local method = req.method
  local h = d._handlers[method]
  if method == "BYE" then
    req:reply(200)
    ended(d, "remote bye")
    if h then dispatcher.spawn_for(req, h, req, d) end
    return
  end
  if h then
    -- a refresh answered by the script still re-arms the session timer
    if method == "INVITE" or method == "UPDATE" then st_on_refresh(d, req) end
    return dispatcher.spawn_for(req, h, req, d)
  end
  if method == "INFO" or method == "NOTIFY" or method == "OPTIONS" then
    return req:reply(200)
  end
  if method == "INVITE" or method == "UPDATE" then
    -- a refresh without a listener: answer with the current session
    local st = st_on_refresh(d, req)
    if req.body and not d.local_sdp then return req:reply(488) end
    d.remote_sdp = req.body or d.remote_sdp
    local o = { headers = st }
    if d.local_sdp and (method == "INVITE" or req.body) then
      -- what we send is the session from now on (its version only goes up)
      d.local_sdp = mirror_sdp(d.local_sdp, req.body)
      o.body, o.content_type = d.local_sdp, "application/sdp"
    end
    return req:reply(200, o)
  end
  req:reply(405, { headers = { Allow = "INVITE, ACK, BYE, CANCEL, INFO, NOTIFY, OPTIONS, UPDATE" } })
end

return M
