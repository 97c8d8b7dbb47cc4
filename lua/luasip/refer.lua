-- luasip.refer: call transfer by REFER (RFC 3515) on luasip dialogs, with Refer-Sub
-- (RFC 4488) and the Replaces header (RFC 3891) for attended transfer.
--   recipient: d:on("REFER", function(req) local sub = refer.accept(req) ... end)
--              sub:progress(180) ... sub:progress(200)  -- NOTIFYs with message/sipfrag
--   referrer:  local status, line = d:refer("sip:bob@example.com", { on_progress = fn })
--              agent:refer{ uri = ..., refer_to = ... }   -- out of any dialog
-- The implicit subscription's NOTIFYs go out one at a time, in order, from a coroutine of
-- their own, so sub:progress never waits and works from on_provisional callbacks too.
local core = require "luasip.core"
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local state = class.state

local M = {}

local SIPFRAG = "message/sipfrag;version=2.0"
local DEFAULT_EXPIRES = 60      -- seconds the implicit subscription lasts (RFC 3515 2.4.4)
local FIRST_NOTIFY_WAIT = 32    -- 64*T1: how long a referrer waits for the first NOTIFY
local EXPIRY_GRACE = 5          -- past the expiry, for the notifier's own last NOTIFY

local PHRASES = {
  [100] = "Trying", [180] = "Ringing", [181] = "Call Is Being Forwarded", [182] = "Queued",
  [183] = "Session Progress", [200] = "OK", [202] = "Accepted", [400] = "Bad Request",
  [403] = "Forbidden", [404] = "Not Found", [408] = "Request Timeout",
  [480] = "Temporarily Unavailable", [481] = "Call/Transaction Does Not Exist",
  [486] = "Busy Here", [487] = "Request Terminated", [488] = "Not Acceptable Here",
  [500] = "Server Internal Error", [503] = "Service Unavailable", [600] = "Busy Everywhere",
  [603] = "Decline",
}

-- ------------------------------------------------------------------ parsing

local function trim(s) return (s:gsub("^%s+", ""):gsub("%s+$", "")) end

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- header values in a URI (RFC 3261 25.1 hvalue): escape all but unreserved/hnv-unreserved
local function escape(s)
  return (s:gsub("[^%w%-_%.!~%*'%(%)%[%]/%?:%+%$]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

-- ";a=1;b" -> { a = "1", b = true } (names lowercased)
local function parse_params(s)
  local params = {}
  for item in s:gmatch("[^;]+") do
    local k, v = item:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
    if k then
      params[k:lower()] = v:gsub('^"(.*)"$', "%1")
    elseif item:match("%S") then
      params[trim(item):lower()] = true
    end
  end
  return params
end

-- parse_replaces(value) -> { call_id =, to_tag =, from_tag =, early_only = bool }
--   | nil, err, "syntax".  value: a Replaces header value (RFC 3891 6.1), unescaped
function M.parse_replaces(value)
  if type(value) ~= "string" then
    error("luasip.refer.parse_replaces: string expected", 2)
  end
  local call_id, rest = value:match("^%s*([^;%s]+)%s*(.*)$")
  if not call_id then return nil, "no Call-ID in Replaces", "syntax" end
  local params = parse_params(rest)
  local to_tag, from_tag = params["to-tag"], params["from-tag"]
  if type(to_tag) ~= "string" or to_tag == "" then
    return nil, "no to-tag in Replaces", "syntax"
  end
  if type(from_tag) ~= "string" or from_tag == "" then
    return nil, "no from-tag in Replaces", "syntax"
  end
  return { call_id = call_id, to_tag = to_tag, from_tag = from_tag,
    early_only = params["early-only"] ~= nil }
end

-- replaces{ call_id =, to_tag =, from_tag = [, early_only = true] } -> Replaces value
function M.replaces(t)
  if type(t) ~= "table" then error("luasip.refer.replaces: table expected", 2) end
  for _, k in ipairs{ "call_id", "to_tag", "from_tag" } do
    if type(t[k]) ~= "string" or t[k] == "" then
      error("luasip.refer.replaces: " .. k .. " must be a non-empty string", 2)
    end
  end
  return t.call_id .. ";to-tag=" .. t.to_tag .. ";from-tag=" .. t.from_tag
    .. (t.early_only and ";early-only" or "")
end

-- Splits a header value at commas outside quotes and angle brackets.
local function split_values(s)
  local out, cur, depth, quoted, i = {}, {}, 0, false, 1
  while i <= #s do
    local c = s:sub(i, i)
    if quoted then
      if c == "\\" then
        cur[#cur + 1] = s:sub(i, i + 1)
        i = i + 1
      else
        if c == '"' then quoted = false end
        cur[#cur + 1] = c
      end
    elseif c == '"' then quoted = true; cur[#cur + 1] = c
    elseif c == "<" then depth = depth + 1; cur[#cur + 1] = c
    elseif c == ">" then depth = depth - 1; cur[#cur + 1] = c
    elseif c == "," and depth == 0 then
      out[#out + 1] = table.concat(cur)
      cur = {}
    else
      cur[#cur + 1] = c
    end
    i = i + 1
  end
  out[#out + 1] = table.concat(cur)
  local values = {}
  for _, v in ipairs(out) do if v:match("%S") then values[#values + 1] = trim(v) end end
  return values
end

-- parse_refer_to(value) -> { uri =, target =, display =, params = {}, headers = {},
--   replaces = table | nil } | nil, err, code
-- uri is the whole URI, target the URI without its ?headers (what to call), headers the
-- URI headers unescaped (names lowercased), params the header field parameters.
function M.parse_refer_to(value)
  if type(value) ~= "string" then
    error("luasip.refer.parse_refer_to: string expected", 2)
  end
  local display, uri, rest = value:match('^%s*(.-)%s*<([^>]*)>(.*)$')
  if not uri then
    -- addr-spec without brackets: it cannot carry ?headers, ";..." are header params
    uri, rest = value:match("^%s*([^;%s]+)(.*)$")
    display = ""
  end
  if not uri or not uri:match("^%a[%w%+%-%.]*:") then
    return nil, "bad Refer-To URI", "syntax"
  end
  display = display:gsub('^"(.*)"$', "%1")
  local t = { uri = uri, target = uri:match("^([^?]*)"), params = parse_params(rest or ""),
    display = display ~= "" and display or nil, headers = {} }
  local query = uri:match("%?(.*)$")
  if query then
    for item in query:gmatch("[^&]+") do
      local k, v = item:match("^([^=]+)=(.*)$")
      if k then t.headers[unescape(k):lower()] = unescape(v) end
    end
  end
  if t.headers.replaces then
    local r, err, code = M.parse_replaces(t.headers.replaces)
    if not r then return nil, err, code end
    t.replaces = r
  end
  return t
end

-- The values of every Refer-To header of a request (long or compact name), raw.
local function refer_to_values(req)
  local raw = req:raw()
  local head = raw:match("^(.-\r?\n)\r?\n") or raw
  head = head:gsub("\r?\n[ \t]+", " ")            -- unfold continuation lines
  local values = {}
  for line in head:gmatch("[^\r\n]+") do
    local name, v = line:match("^([%w%-]+)%s*:%s*(.*)$")
    if name and (name:lower() == "refer-to" or name:lower() == "r") then
      for _, item in ipairs(split_values(v)) do values[#values + 1] = item end
    end
  end
  return values
end

-- Event: refer[;id=N] -> "refer", id (number or nil)
local function parse_event(v)
  if not v then return nil end
  local pkg, rest = v:match("^%s*([^;%s]+)%s*(.*)$")
  if not pkg then return nil end
  local id = parse_params(rest).id
  return pkg:lower(), tonumber(type(id) == "string" and id or nil)
end

-- "SIP/2.0 180 Ringing\r\n..." -> 180, "Ringing", "SIP/2.0 180 Ringing"
local function parse_sipfrag(body)
  local line = body and body:match("^%s*([^\r\n]+)")
  local status, reason = (line or ""):match("^SIP/2%.0%s+(%d%d%d)%s*(.-)%s*$")
  if not status then return nil end
  return tonumber(status), reason, line
end

local function refer_sub_false(msg)
  local v = msg:header("Refer-Sub")
  return (v and v:match("^%s*(%a+)") or ""):lower() == "false"
end

-- ------------------------------------------------------------------ recipient side

local sub_methods = {}
local Subscription = { __index = sub_methods }

local function wake_waiters(sub, ...)
  local slots = sub._wait_slots
  sub._wait_slots = {}
  for _, slot in ipairs(slots) do dispatcher.fill(slot, ...) end
end

-- the subscription is over: stop the timer, release its own dialog, wake sub:wait
local function finish(sub, err, code)
  if sub._done then return end
  sub._done = true
  sub._state = "terminated"
  sub._queue = {}
  if sub._timer then sub._timer:cancel(); sub._timer = nil end
  sub.error, sub.code = err, code
  if sub._own_dialog and sub.dialog then sub.dialog:terminate() end
  if err then wake_waiters(sub, nil, err, code) else wake_waiters(sub, true) end
end

local function notify_headers(sub, item)
  local sstate
  if item.final then
    sstate = "terminated;reason=" .. item.why
  else
    local left = math.max(0, math.floor(sub._expires_at - core.now() + 0.5))
    sstate = "active;expires=" .. left
  end
  return { Event = sub.id_needed and ("refer;id=" .. sub.id) or "refer",
    ["Subscription-State"] = sstate }
end

-- sends the queued NOTIFYs in order, one transaction at a time (RFC 6665 4.2.2)
local function pump(sub)
  if sub._pumping or sub._done then return end
  sub._pumping = true
  dispatcher.spawn(function()
    while #sub._queue > 0 and not sub._done do
      local item = table.remove(sub._queue, 1)
      local res, err, code = sub.dialog:request("NOTIFY", {
        headers = notify_headers(sub, item), content_type = SIPFRAG,
        body = "SIP/2.0 " .. item.status .. " " .. item.reason .. "\r\n" })
      if not res then
        -- the referrer is gone (481, timeout, dialog ended): so is the subscription
        dispatcher.log("info", "refer: NOTIFY failed, subscription ends: " .. tostring(err))
        finish(sub, err, code)
      elseif item.final then
        finish(sub)
      end
    end
    sub._pumping = false
  end)
end

local function enqueue(sub, status, reason, final, why)
  sub.status, sub.reason = status, reason
  if final then
    sub._final = true
    if sub._timer then sub._timer:cancel(); sub._timer = nil end
  end
  if not sub.notify then
    if final then finish(sub) end
    return true
  end
  sub._queue[#sub._queue + 1] =
    { status = status, reason = reason, final = final, why = why }
  pump(sub)
  return true
end

-- sub:progress(status [, reason]) -> true | nil, err, code
-- 1xx: NOTIFY "SIP/2.0 <status> <reason>", subscription active; >= 200: the final NOTIFY,
-- Subscription-State terminated;reason=noresource.  Never waits.
function sub_methods.progress(self, status, reason)
  if type(status) ~= "number" or status % 1 ~= 0 or status < 100 or status > 699 then
    error("luasip.refer.subscription:progress: status must be an integer 100-699", 2)
  end
  if reason ~= nil and type(reason) ~= "string" then
    error("luasip.refer.subscription:progress: reason must be a string", 2)
  end
  if self._final or self._done then return nil, "subscription terminated", "terminated" end
  reason = (reason or PHRASES[status] or ""):gsub("[\r\n]", " ")
  return enqueue(self, status, reason, status >= 200, "noresource")
end

-- sub:wait([timeout]) -> true once the final NOTIFY was answered | nil, err, code
function sub_methods.wait(self, timeout)
  if self._done then
    if self.error then return nil, self.error, self.code end
    return true
  end
  local slot = dispatcher.new_slot("luasip.refer.subscription:wait")
  self._wait_slots[#self._wait_slots + 1] = slot
  return dispatcher.wait(slot, timeout)
end

-- sub:state() -> "active" | "terminated"
function sub_methods.state(self)
  return self._state
end

-- sub:invite(agent [, opts]) -> dialog, response | nil, err, code [, response]
-- Calls the Refer-To target (with its Replaces header, and Referred-By) through
-- agent:invite, reporting each provisional response and the final one as NOTIFYs.
function sub_methods.invite(self, agent, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.refer.subscription:invite: options must be a table", 2)
  end
  dispatcher.current("luasip.refer.subscription:invite")
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.uri = o.uri or self.target
  local headers = {}
  for k, v in pairs(o.headers or {}) do headers[k] = v end
  if self.replaces_value and headers.Replaces == nil then
    headers.Replaces = self.replaces_value
  end
  if self.referred_by and headers["Referred-By"] == nil then
    headers["Referred-By"] = self.referred_by
  end
  o.headers = headers
  local on_provisional = o.on_provisional
  o.on_provisional = function(res, tx)
    if res.status > 100 then self:progress(res.status, res.reason) end
    if on_provisional then return on_provisional(res, tx) end
  end
  local d, res, code, fres = agent:invite(o)
  if d then
    self:progress(res.status, res.reason)
    return d, res
  end
  if type(code) == "number" then
    self:progress(code, fres and fres.reason or nil)
  elseif code == "timeout" then
    self:progress(408)
  else
    self:progress(503)
  end
  return nil, res, code, fres
end

-- The dialog of an in-dialog request (luasip.request keeps it).
local function in_dialog(req)
  return require("luasip.request").in_dialog(req)
end

-- accept(req [, opts]) -> subscription | nil, err, code
-- opts: expires (seconds, 60), headers (for the 202), norefersub (honour Refer-Sub: false,
-- true).  Answers 400 without exactly one valid Refer-To, else 202 and the first NOTIFY.
function M.accept(req, opts)
  if type(req) ~= "userdata" or req.method ~= "REFER" then
    error("luasip.refer.accept: a REFER request expected", 2)
  end
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.refer.accept: options must be a table", 2)
  end
  opts = opts or {}
  local expires = opts.expires or DEFAULT_EXPIRES
  if type(expires) ~= "number" or expires <= 0 then
    error("luasip.refer.accept: expires must be a positive number", 2)
  end
  local values = refer_to_values(req)
  if #values == 0 then
    req:reply(400, "Missing Refer-To")
    return nil, "missing Refer-To", 400
  end
  if #values > 1 then
    req:reply(400, "Multiple Refer-To")
    return nil, "more than one Refer-To", 400
  end
  local refer_to, perr = M.parse_refer_to(values[1])
  if not refer_to then
    req:reply(400, "Bad Refer-To")
    return nil, "bad Refer-To: " .. perr, 400
  end
  local notify = not (opts.norefersub ~= false and refer_sub_false(req))
  local d, own = opts.dialog or in_dialog(req), false
  if not d and req.to_tag then
    req:reply(481, "Call/Transaction Does Not Exist")
    return nil, "no dialog for this REFER", 481
  end
  if not d and notify then
    -- out of dialog: the REFER makes the dialog its NOTIFYs travel in (RFC 3515 2.4.4)
    local err, code
    d, err, code = req:dialog()
    if not d then
      req:reply(500)
      return nil, err, code
    end
    own = true
  end
  local reply_headers = {}
  for k, v in pairs(opts.headers or {}) do reply_headers[k] = v end
  if not notify then reply_headers["Refer-Sub"] = "false" end
  local ok, err, code = req:reply(202, { headers = reply_headers })
  if not ok then
    if own then d:terminate() end
    return nil, err, code
  end
  local count = 0
  if d then
    local dst = state(d)
    count = (dst.refers_received or 0) + 1
    dst.refers_received = count
  end
  local sub = setmetatable({
    request = req, dialog = d, id = req.cseq, id_needed = count > 1, notify = notify,
    refer_to = refer_to, target = refer_to.target, replaces = refer_to.replaces,
    replaces_value = refer_to.headers.replaces,
    referred_by = req:header("Referred-By"),
    _state = "active", _queue = {}, _wait_slots = {}, _own_dialog = own,
    _expires_at = core.now() + expires,
  }, Subscription)
  if notify then
    -- the subscription lapses without a final report: tell the referrer (RFC 6665 4.2.2)
    sub._timer = dispatcher.timer_in(expires, function()
      sub._timer = nil
      if not sub._final then enqueue(sub, sub.status, sub.reason, true, "timeout") end
    end)
  end
  -- the NOTIFY right after the 202 (RFC 3515 2.4.4)
  enqueue(sub, 100, "Trying", false)
  return sub
end

-- handler(fn [, opts]) -> function(req): for agent:on("REFER", ...) and
-- dialog:on("REFER", ...).  Accepts the REFER, then runs fn(sub, req); if no final status
-- was reported when fn ends, a number fn returns is, else 500.
function M.handler(fn, opts)
  if type(fn) ~= "function" then error("luasip.refer.handler: function expected", 2) end
  return function(req, d)
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.dialog = o.dialog or d
    local sub = M.accept(req, o)
    if not sub then return end
    local ok, r = dispatcher.pcall(fn, sub, req)        -- fn may wait
    if not sub._final then
      sub:progress(ok and type(r) == "number" and r >= 200 and r <= 699 and r or 500)
    end
    if not ok then error(r, 0) end
  end
end

-- ------------------------------------------------------------------ referrer side

-- Per dialog: the NOTIFY router and the REFERs waiting for their reports.  The router
-- takes the NOTIFYs of the refer event package and hands the others to the NOTIFY
-- handler it replaced (none: 200, the dialog's default).
local function router_state(d)
  local dst = state(d)
  local st = dst.refer_out
  if not st then
    st = { waiters = {}, orphans = {}, count = 0 }
    st.route = function(req, dd)
      local pkg, id = parse_event(req:header("Event"))
      if pkg ~= "refer" then
        if st.prev then return st.prev(req, dd) end
        return req:reply(200)
      end
      -- RFC 3515 2.4.6: id names the REFER's CSeq; no id is the dialog's first REFER
      local w, unknown = nil, false
      for _, cand in ipairs(st.waiters) do
        if cand.cseq == nil then
          unknown = true
        elseif id and cand.cseq == id or not id and (cand.first or #st.waiters == 1) then
          w = cand
        end
      end
      if w then
        req:reply(200)
        w.queue[#w.queue + 1] = req
        if w.slot then dispatcher.fill(w.slot, true) end
      elseif unknown then
        -- before our REFER's 2xx (RFC 6665 4.1.2.4): kept until its CSeq is known
        req:reply(200)
        st.orphans[#st.orphans + 1] = { req = req, id = id }
      elseif st.prev then
        return st.prev(req, dd)
      else
        req:reply(481, "Subscription Does Not Exist")
      end
    end
    dst.refer_out = st
  end
  local prev = d:on("NOTIFY", st.route)
  if prev ~= st.route then st.prev = prev end
  return st
end

local function add_waiter(d)
  local st = router_state(d)
  st.count = st.count + 1
  local w = { queue = {}, first = st.count == 1, st = st }
  st.waiters[#st.waiters + 1] = w
  return w
end

local function drop_waiter(w)
  local list = w.st.waiters
  for i = #list, 1, -1 do if list[i] == w then table.remove(list, i) end end
  if #list == 0 then w.st.orphans = {} end
end

local function known_cseq(w, cseq)
  w.cseq = cseq
  local keep = {}
  for _, o in ipairs(w.st.orphans) do
    if (o.id and o.id == cseq) or (not o.id and (w.first or #w.st.waiters == 1)) then
      w.queue[#w.queue + 1] = o.req
    else
      keep[#keep + 1] = o
    end
  end
  w.st.orphans = keep
end

-- Waits for the NOTIFYs of one REFER: -> final status, sipfrag line | nil, err, code
local function await_reports(d, w, opts)
  local now = core.now
  local deadline = opts.timeout and now() + opts.timeout
  local sub_deadline = now() + FIRST_NOTIFY_WAIT
  while true do
    local notify = table.remove(w.queue, 1)
    if notify then
      local status, reason, line = parse_sipfrag(notify.body)
      local sub_state = notify:header("Subscription-State") or "active"
      local sstate, rest = sub_state:match("^%s*([%a%-]+)%s*(.*)$")
      local params = parse_params(rest or "")
      if status and status >= 200 then return status, line end
      if status and opts.on_progress then
        local ok, err = pcall(opts.on_progress, status, reason, line)
        if not ok then
          dispatcher.log("error", "refer on_progress failed: " .. tostring(err))
        end
      end
      if sstate and sstate:lower() == "terminated" then
        local why = type(params.reason) == "string" and params.reason or "no reason"
        return nil, "subscription terminated (" .. why .. ") before a final status",
          "terminated"
      end
      local ex = tonumber(type(params.expires) == "string" and params.expires or nil)
      if ex then sub_deadline = now() + ex + EXPIRY_GRACE end
    else
      if require("luasip.dialog").is_ended(d) then return nil, "terminated", "terminated" end
      local limit = sub_deadline
      if deadline and deadline < limit then limit = deadline end
      local left = limit - now()
      if left <= 0 then
        if deadline and deadline <= sub_deadline then return nil, "timeout", "timeout" end
        return nil, "subscription expired without a final status", "timeout"
      end
      local slot = dispatcher.new_slot("luasip.dialog:refer")
      -- a BYE or a closed agent fills pending slots of the dialog (luasip.dialog)
      local dialog = require "luasip.dialog"
      dialog.watch(d, slot)
      w.slot = slot
      local ok, err, code = dispatcher.wait(slot, left)
      w.slot = nil
      dialog.unwatch(d, slot)
      if not ok and code ~= "timeout" then return nil, err, code end
    end
  end
end

local function refer_to_value(target, replaces, fname)
  if type(target) ~= "string" or target == "" then
    error(fname .. ": target must be a URI string", 3)
  end
  if replaces ~= nil then
    local value = replaces
    if type(replaces) ~= "string" then
      if type(replaces) ~= "table" then
        error(fname .. ": replaces must be a string or {call_id=, to_tag=, from_tag=}", 3)
      end
      value = M.replaces(replaces)
    end
    local inner = target:match("^%s*<(.*)>%s*$") or target
    if inner:find(">", 1, true) then
      error(fname .. ": replaces needs a bare target URI", 3)
    end
    target = inner .. (inner:find("?", 1, true) and "&" or "?")
      .. "Replaces=" .. escape(value)
  end
  if target:match("^%s*<") or target:match("^%s*\"") then return target end
  return "<" .. target .. ">"
end

local function refer_headers(opts, fname, target)
  local headers = {}
  for k, v in pairs(opts.headers or {}) do headers[k] = v end
  headers["Refer-To"] = refer_to_value(target, opts.replaces, fname)
  if opts.refer_sub == false then
    headers["Refer-Sub"] = "false"
    headers.Supported = headers.Supported or "norefersub"
  end
  return headers
end

local function check_opts(opts, fname)
  if opts ~= nil and type(opts) ~= "table" then
    error(fname .. ": options must be a table", 3)
  end
  opts = opts or {}
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error(fname .. ": timeout must be a positive number", 3)
  end
  if opts.on_progress ~= nil and type(opts.on_progress) ~= "function" then
    error(fname .. ": on_progress must be a function", 3)
  end
  return opts
end

-- dialog:refer(target [, opts]) -> final status, sipfrag line | nil, err, code
-- opts: replaces ({call_id=, to_tag=, from_tag=} or a Replaces value), headers,
-- on_progress = fn(status, reason, line) for each 1xx report, timeout (seconds, whole
-- transfer), refer_sub = false (RFC 4488: no reports; -> 2xx status, nil when honoured)
function M.dialog_refer(self, target, opts)
  local fname = "luasip.dialog:refer"
  opts = check_opts(opts, fname)
  local headers = refer_headers(opts, fname, target)
  dispatcher.current(fname)
  if require("luasip.dialog").is_ended(self) then
    return nil, "dialog terminated", "terminated"
  end
  local w = add_waiter(self)
  local t0 = core.now()
  local res, err, code = self:request("REFER",
    { headers = headers, timeout = opts.timeout })
  if not res then
    drop_waiter(w)
    return nil, err, code
  end
  if refer_sub_false(res) then
    drop_waiter(w)
    return res.status, nil
  end
  known_cseq(w, res.cseq)
  local o = { on_progress = opts.on_progress,
    timeout = opts.timeout and math.max(opts.timeout - (core.now() - t0), 0.001) }
  local status, line, c = await_reports(self, w, o)
  drop_waiter(w)
  return status, line, c
end

-- agent:refer{ uri =, refer_to =, replaces =, headers =, from =, to =, auth =, timeout =,
--   on_progress =, refer_sub = } -> final status, sipfrag line | nil, err, code
-- A REFER outside any dialog; its 2xx makes the dialog of the subscription, which ends
-- with it.
function M.agent_refer(self, opts)
  local fname = "luasip.agent:refer"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  check_opts(opts, fname)
  if type(opts.uri) ~= "string" then error(fname .. ": uri must be a string", 2) end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.headers = refer_headers(opts, fname, opts.refer_to)
  o.method, o.dialog = "REFER", true
  o.refer_to, o.replaces, o.on_progress, o.refer_sub = nil, nil, nil, nil
  dispatcher.current(fname)
  local t0 = core.now()
  local res, err, code, fres = self:request(o)
  if not res then return nil, err, code, fres end
  local d = res.dialog
  if refer_sub_false(res) then
    if d then d:terminate() end
    return res.status, nil
  end
  if not d then return nil, "no dialog for the 2xx", "dialog" end
  local w = add_waiter(d)
  known_cseq(w, res.cseq)
  local status, line, c = await_reports(d, w, { on_progress = opts.on_progress,
    timeout = opts.timeout and math.max(opts.timeout - (core.now() - t0), 0.001) })
  drop_waiter(w)
  d:terminate()
  return status, line, c
end

return M
