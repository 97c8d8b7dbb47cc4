-- luasip.events: event subscriptions (RFC 6665) on SUBSCRIBE dialogs, both sides.
--   Notifier:   local on_subscribe, presence = sip.events{ package = "presence" }
--               app:on("SUBSCRIBE", on_subscribe)
--               presence:notify("sip:alice@example.com", pidf_body)  -- every watcher
--   Subscriber: local sub = app:subscribe{ uri = "sip:alice@example.com",
--                 event = "presence", on_notify = function(req, sub) ... end }
--               sub:unsubscribe()
-- A subscription is a dialog (req:dialog() on the notifier, request{dialog = true} on the
-- subscriber); NOTIFYs go one at a time per subscription (a newer state replaces one not
-- yet sent), so they never overtake each other.  Subscriptions live in this process (their
-- dialogs do); each one is also written to the store (records with a TTL) and the state
-- given to notify() is kept there, so other processes sharing a Redis store see them;
-- notify() also publishes the change on the store (store:publish), so the notifiers of
-- the other processes send NOTIFYs to the subscriptions they hold (a SUBSCRIBE served by
-- one worker, a PUBLISH by another).
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local location = require "luasip.location"
local memory = require "luasip.store.memory"
local outage = require "luasip.store.outage"
local pidf = require "luasip.pidf"

local M = {}

-- the live notifiers (weak), for the luasip_subscriptions gauge of luasip.metrics
M.instances = setmetatable({}, { __mode = "k" })

-- per-package defaults: the body type of NOTIFYs, the subscription duration, and the
-- "neutral" state sent when nothing is known (RFC 3856 6.6.1: presence looks offline)
local PACKAGES = {
  presence = { content_type = pidf.content_type, expires = 3600,
    neutral = function(resource)
      return pidf.build{ entity = resource, status = "closed" }, pidf.content_type
    end },
  ["presence.winfo"] = { content_type = "application/watcherinfo+xml", expires = 3600 },
  ["message-summary"] = { content_type = "application/simple-message-summary",
    expires = 3600 },
  dialog = { content_type = "application/dialog-info+xml", expires = 3600 },
  ["reg"] = { content_type = "application/reginfo+xml", expires = 3600 },
  refer = { content_type = "message/sipfrag", expires = 60 },
}
M.PACKAGES = PACKAGES

-- ------------------------------------------------------------------ header values

-- parse_event("presence;id=7") -> "presence", "7" | nil (package names are compared
-- case-insensitively here; RFC 6665 8.2.1 makes them tokens)
function M.parse_event(value)
  if type(value) ~= "string" then return nil end
  local pkg, params = value:match("^%s*([^;%s]+)%s*(.*)$")
  if not pkg then return nil end
  local id = params:match(";%s*[Ii][Dd]%s*=%s*\"?([^;\"%s]+)")
  return pkg:lower(), id
end

-- parse_state("active;expires=60") -> { state =, expires =, reason =, retry_after = } | nil
function M.parse_state(value)
  if type(value) ~= "string" then return nil end
  local state, params = value:match("^%s*([%w%-%.!%%%*_%+`'~]+)%s*(.*)$")
  if not state then return nil end
  local st = { state = state:lower() }
  for k, v in params:gmatch(";%s*([^=;%s]+)%s*=?%s*([^;]*)") do
    k, v = k:lower(), v:match("^%s*(.-)%s*$")
    if k == "expires" then st.expires = tonumber(v)
    elseif k == "reason" then st.reason = v:lower()
    elseif k == "retry-after" then st.retry_after = tonumber(v) end
  end
  return st
end

local function event_value(pkg, id)
  return id and (pkg .. ";id=" .. id) or pkg
end

local function check_seconds(opts, name, default, fname)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 then
    error(fname .. ": " .. name .. " must be a number of seconds >= 0", 3)
  end
  return v
end

-- seconds left until t (rounded up), never negative
local function left(t, now)
  return math.max(0, math.ceil(t - now - 1e-6))
end

-- ------------------------------------------------------------------ notifier

local Notifier = {}
Notifier.__index = Notifier

local Sub = {}
Sub.__index = Sub

local notifiers = setmetatable({}, { __mode = "k" })   -- handler -> notifier

local function allow_all() return "active" end

local changed_elsewhere   -- (below notify)

-- events{ package =, authorize = fn(req, resource, subscriber) -> "active" | true |
--   "pending" | false, state = fn(resource, sub) -> body, content_type, resource =
--   fn(req) -> resource, min_expires = 60, default_expires = (per package, 3600),
--   max_expires = 86400, content_type =, store =, prefix =, fallback = handler }
--   -> handler, notifier
function M.new(opts)
  local fname = "luasip.events"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  if type(opts.package) ~= "string" or not opts.package:match("^[%w%-%.!%%%*_%+`'~]+$") then
    error(fname .. ": package must be an event package name", 2)
  end
  local pkg = opts.package:lower()
  local defaults = PACKAGES[pkg] or {}
  for _, k in ipairs{ "authorize", "state", "resource", "fallback" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      error(fname .. ": " .. k .. " must be a function", 2)
    end
  end
  local self = setmetatable({
    package = pkg,
    min_expires = check_seconds(opts, "min_expires", 60, fname),
    max_expires = check_seconds(opts, "max_expires", 86400, fname),
    default_expires = check_seconds(opts, "default_expires", defaults.expires or 3600, fname),
    content_type = opts.content_type or defaults.content_type,
    neutral = defaults.neutral,
    authorize = opts.authorize or allow_all,
    state_fn = opts.state,
    resource_fn = opts.resource,
    fallback = opts.fallback,
    store = opts.store or memory.new(),
    prefix = opts.prefix or ("events:" .. pkg .. ":"),
    subs = {},            -- id -> sub
    by_resource = {},     -- resource -> { id -> sub }
    count = 0,
    origin = core.random_hex(8),   -- tells our own messages on the store from others'
  }, Notifier)
  M.instances[self] = true          -- for the luasip_subscriptions gauge (luasip.metrics)
  if self.min_expires > self.max_expires then
    error(fname .. ": min_expires is above max_expires", 2)
  end
  if self.default_expires == 0 then error(fname .. ": default_expires must be > 0", 2) end
  if self.content_type ~= nil and type(self.content_type) ~= "string" then
    error(fname .. ": content_type must be a string", 2)
  end
  if type(self.store) ~= "table" or type(self.store.get) ~= "function" then
    error(fname .. ": store must be a luasip store", 2)
  end
  -- Allow-Events: ours and those of the notifiers we fall back to
  local list, seen, f = { pkg }, { [pkg] = true }, self.fallback
  while f and notifiers[f] and not seen[notifiers[f].package] do
    list[#list + 1] = notifiers[f].package
    seen[notifiers[f].package] = true
    f = notifiers[f].fallback
  end
  self.allow_events = table.concat(list, ", ")
  if type(self.store.subscribe) == "function" then
    self.store:subscribe(self.prefix .. "notify", function(msg) changed_elsewhere(self, msg) end)
  end
  local handler = function(req) return self:handle(req) end
  notifiers[handler] = self
  return handler, self
end

-- the resource a SUBSCRIBE is for: the canonical AOR of its Request-URI
local function resource_of(self, req)
  if self.resource_fn then return self.resource_fn(req) end
  return location.aor(req.ruri) or req.uri
end

-- a 2xx-able Expires: value | nil, 423 headers
local function negotiate(self, req)
  local e = req.expires
  if e == nil then e = self.default_expires end
  if e > 0 and e < self.min_expires then
    return nil, { ["Min-Expires"] = tostring(math.ceil(self.min_expires)) }
  end
  if e > self.max_expires then e = self.max_expires end
  return math.floor(e)
end

-- Accept (RFC 6665 4.2.1.1 / 8.2.2): 406 when it lists types and not ours
local function acceptable(self, req)
  local values = req:headers("Accept")
  if #values == 0 or not self.content_type then return true end
  local want = self.content_type:lower()
  local main = want:match("^([^/]+)/")
  for _, v in ipairs(values) do
    for t in v:gmatch("[^,]+") do
      t = t:match("^%s*([^;%s]+)"):lower()
      if t == want or t == "*/*" or t == main .. "/*" then return true end
    end
  end
  return false
end

-- the store's record of a subscription; expires_at on the store's clock (sub.expires_at
-- is on sip.now's, for the timers of this process)
local function save(self, sub)
  local ttl = sub.expires_at - core.now()
  if ttl <= 0 then return self.store:del(self.prefix .. "sub:" .. sub.id) end
  return self.store:set(self.prefix .. "sub:" .. sub.id, { resource = sub.resource,
    subscriber = sub.subscriber, state = sub.state, event = sub.event,
    expires_at = self.store:now() + ttl, call_id = sub.call_id }, ttl)
end

-- forgets a subscription (its final NOTIFY, if any, has gone)
local function drop(self, sub, reason)
  if sub.state == "terminated" and not self.subs[sub.id] then return end
  sub.state, sub.reason = "terminated", sub.reason or reason
  if sub._timer then sub._timer:cancel(); sub._timer = nil end
  if self.subs[sub.id] then
    self.subs[sub.id] = nil
    self.count = self.count - 1
    local set = self.by_resource[sub.resource]
    if set then
      set[sub.id] = nil
      if next(set) == nil then self.by_resource[sub.resource] = nil end
    end
  end
  sub.dialog:terminate()
  self.store:del(self.prefix .. "sub:" .. sub.id)
end

-- the body a subscriber gets now: explicit (from notify), the state function's, the
-- stored state's, or the package's neutral state
local function content_for(self, sub, want)
  -- no state for a pending subscriber, nor in a final NOTIFY other than the one that
  -- ends a subscription in good standing (expiry, unsubscribe, fetch)
  if sub.state == "pending" or (sub._final and sub._final ~= "timeout") then return nil end
  if want and want.body then return want.body, want.content_type end
  if self.state_fn then
    local body, ctype = self.state_fn(sub.resource, sub)
    if body ~= nil then return body, ctype or self.content_type end
  end
  local st = self.store:get(self.prefix .. "state:" .. sub.resource)
  if st then return st.body, st.content_type end
  if self.neutral then return self.neutral(sub.resource) end
  return nil
end

local function state_value(sub)
  local now = core.now()
  if sub._final then
    local v = "terminated;reason=" .. sub._final
    if sub._retry_after then v = v .. ";retry-after=" .. sub._retry_after end
    return v
  end
  return sub.state .. ";expires=" .. left(sub.expires_at, now)
end

-- Queues a NOTIFY with the current state (want: {body=, content_type=} to send that
-- body).  One sender per subscription: NOTIFYs never overlap, later ones replace
-- waiting ones.  The final one (sub._final set) ends the subscription.
local function push(self, sub, want)
  if sub.state == "terminated" then return false end
  sub._want = want or sub._want or {}
  if sub._busy then return true end
  sub._busy = true
  dispatcher.spawn(function()
    while sub._want do
      local w = sub._want
      sub._want = nil
      local final = sub._final
      local body, ctype = content_for(self, sub, w)
      local res, err, code = sub.dialog:request("NOTIFY", {
        headers = { Event = event_value(self.package, sub.event_id),
          ["Subscription-State"] = state_value(sub) },
        body = body, content_type = body and (ctype or self.content_type) or nil })
      sub.notified = (sub.notified or 0) + 1
      if final then
        drop(self, sub, final)
        break
      end
      if not res then
        -- RFC 6665 4.2.2: a failed NOTIFY (481, timeout, other errors) ends it
        dispatcher.log("info", "events: NOTIFY to " .. sub.subscriber .. " failed ("
          .. tostring(err) .. "), subscription removed")
        drop(self, sub, code == 481 and "gone" or "failed")
        break
      end
    end
    sub._busy = false
  end)
  return true
end

-- ends a subscription with a final NOTIFY (terminated;reason=...)
local function finish(self, sub, reason, retry_after)
  if sub.state == "terminated" or sub._final then return false end
  if sub._timer then sub._timer:cancel(); sub._timer = nil end
  sub._final = reason or "noresource"
  sub._retry_after = retry_after
  return push(self, sub)
end

local function arm(self, sub)
  if sub._timer then sub._timer:cancel() end
  local delay = math.max(0, sub.expires_at - core.now())
  sub._timer = dispatcher.timer(delay, function()
    sub._timer = nil
    if sub.state ~= "terminated" then finish(self, sub, "timeout") end
  end)
end

-- re-SUBSCRIBE inside the dialog: refresh, or Expires: 0 to unsubscribe
local function resubscribe(self, sub, req)
  local pkg, id = M.parse_event(req:header("Event"))
  if pkg ~= self.package then
    return req:reply(489, "Bad Event", { headers = { ["Allow-Events"] = self.allow_events } })
  end
  if id ~= sub.event_id or sub.state == "terminated" or sub._final then
    return req:reply(481, "Subscription Does Not Exist")
  end
  local expires, h423 = negotiate(self, req)
  if not expires then return req:reply(423, "Interval Too Brief", { headers = h423 }) end
  if expires == 0 then
    req:reply(200, { headers = { Expires = "0" } })
    return finish(self, sub, "timeout")
  end
  local was = sub.expires_at
  sub.expires_at = core.now() + expires
  local ok, err, code = save(self, sub)
  if not ok then
    sub.expires_at = was                -- unchanged: the subscriber tries again
    return outage.reply(req, "Subscription", err, code)
  end
  arm(self, sub)
  req:reply(200, { headers = { Expires = tostring(expires) } })
  push(self, sub)               -- RFC 6665 4.2.1.2: a refresh is answered by a NOTIFY
end

-- allow: the Allow-Events of the first notifier of a fallback chain
function Notifier:handle(req, allow)
  local pkg, id = M.parse_event(req:header("Event"))
  if pkg ~= self.package then
    local f = self.fallback
    if f and notifiers[f] then return notifiers[f]:handle(req, allow or self.allow_events) end
    if f then return f(req) end
    return req:reply(489, "Bad Event",
      { headers = { ["Allow-Events"] = allow or self.allow_events } })
  end
  if req.to_tag then
    -- an in-dialog SUBSCRIBE that reached the handler (agent in_dialog = "handler")
    return req:reply(481, "Subscription Does Not Exist")
  end
  if not acceptable(self, req) then
    return req:reply(406, "Not Acceptable", { headers = { Accept = self.content_type } })
  end
  local expires, h423 = negotiate(self, req)
  if not expires then return req:reply(423, "Interval Too Brief", { headers = h423 }) end
  local resource = resource_of(self, req)
  if not resource then return req:reply(404, "Not Found") end
  local subscriber = location.aor(req.from.uri) or req.from.uri
  local decision = self.authorize(req, resource, subscriber)
  if req:answered() then return end
  if decision == true then decision = "active" end
  if decision ~= "active" and decision ~= "pending" then
    return req:reply(403, "Forbidden")
  end
  local d, err, code = req:dialog()
  if not d then
    dispatcher.log("error", "events: no dialog for SUBSCRIBE: " .. tostring(err))
    return req:reply(type(code) == "number" and code or 500)
  end
  local sub = setmetatable({
    id = core.random_hex(8), notifier = self, resource = resource, subscriber = subscriber,
    event = pkg, event_id = id, state = decision, dialog = d, call_id = req.call_id,
    expires_at = core.now() + expires, notified = 0,
  }, Sub)
  local ok, serr, scode = save(self, sub)
  if not ok then
    outage.reply(req, "Subscription", serr, scode)
    return d:terminate()
  end
  self.subs[sub.id] = sub
  self.count = self.count + 1
  local set = self.by_resource[resource]
  if not set then set = {}; self.by_resource[resource] = set end
  set[sub.id] = sub
  d:on("SUBSCRIBE", function(r) return resubscribe(self, sub, r) end)
  req:reply(200, { headers = { Expires = tostring(expires) } })
  if expires == 0 then
    -- a fetch (RFC 6665 4.4.3): one NOTIFY with the state, and it is over
    return finish(self, sub, "timeout")
  end
  arm(self, sub)
  push(self, sub)               -- the immediate NOTIFY (RFC 6665 4.2.1.2)
end

-- notifier:notify(resource [, body [, content_type]]) -> number of subscriptions notified
-- A body is sent to every active subscriber of resource and becomes its state (kept in
-- the store, for the NOTIFYs of new subscribers when there is no state function); false
-- forgets that state; false or nil send what the state function says for each
-- subscriber, else the stored state, else the package's neutral state.
function Notifier:notify(resource, body, content_type)
  if type(resource) ~= "string" then error("luasip.events:notify: resource must be a string", 2) end
  if body ~= nil and body ~= false and type(body) ~= "string" then
    error("luasip.events:notify: body must be a string, false or nil", 2)
  end
  if content_type ~= nil and type(content_type) ~= "string" then
    error("luasip.events:notify: content_type must be a string", 2)
  end
  local key = self.prefix .. "state:" .. resource
  local want
  if body then
    content_type = content_type or self.content_type
    self.store:set(key, { body = body, content_type = content_type })
    want = { body = body, content_type = content_type }
  elseif body == false then
    self.store:del(key)
  end
  local n = 0
  for _, sub in pairs(self.by_resource[resource] or {}) do
    if sub.state == "active" and push(self, sub, want) then n = n + 1 end
  end
  if type(self.store.publish) == "function" then
    -- the notifiers of the other processes: "origin 1|0 resource" (1: an explicit body,
    -- now the stored state)
    self.store:publish(self.prefix .. "notify",
      self.origin .. " " .. (body and "1" or "0") .. " " .. resource)
  end
  return n
end

-- a change published on the store (by notify in another process), or nil after a store
-- outage (changes may have been missed): NOTIFYs to the subscriptions held here
function changed_elsewhere(self, msg)
  if msg == nil then
    for _, sub in pairs(self.subs) do
      if sub.state == "active" then push(self, sub) end
    end
    return
  end
  local origin, explicit, resource = msg:match("^(%x+) ([01]) (.*)$")
  if not origin or origin == self.origin then return end
  local set = self.by_resource[resource]
  if not set then return end
  local want
  if explicit == "1" then
    local st = self.store:get(self.prefix .. "state:" .. resource)
    if st then want = { body = st.body, content_type = st.content_type } end
  end
  for _, sub in pairs(set) do
    if sub.state == "active" then push(self, sub, want) end
  end
end

-- notifier:state(resource) -> body, content_type of the stored state | nil
function Notifier:state(resource)
  local st = self.store:get(self.prefix .. "state:" .. resource)
  if st then return st.body, st.content_type end
  return nil
end

-- notifier:subscriptions([resource]) -> list of live subscriptions (this process)
function Notifier:subscriptions(resource)
  local list = {}
  local from = resource and (self.by_resource[resource] or {}) or self.subs
  for _, sub in pairs(from) do list[#list + 1] = sub end
  table.sort(list, function(a, b) return a.id < b.id end)
  return list
end

-- notifier:close() -> true: ends every subscription (terminated;reason=noresource)
function Notifier:close(reason)
  for _, sub in pairs(self.subs) do finish(self, sub, reason or "noresource") end
  return true
end

-- sub:expires() -> seconds left
function Sub:expires()
  return left(self.expires_at, core.now())
end

-- sub:activate() -> true | false: a pending subscription becomes active (NOTIFY)
function Sub:activate()
  if self.state ~= "pending" or self._final then return false end
  self.state = "active"
  save(self.notifier, self)
  return push(self.notifier, self)
end

-- sub:notify([body [, content_type]]) -> true | false: a NOTIFY to this subscriber only
function Sub:notify(body, content_type)
  if self.state ~= "active" then return false end
  return push(self.notifier, self, body and { body = body, content_type = content_type })
end

-- sub:terminate([reason = "noresource" [, retry_after]]) -> true | false: final NOTIFY
function Sub:terminate(reason, retry_after)
  if reason ~= nil and type(reason) ~= "string" then
    error("luasip.events subscription:terminate: reason must be a string", 2)
  end
  return finish(self.notifier, self, reason, retry_after)
end

-- ------------------------------------------------------------------ subscriber

local Subscription = {}
Subscription.__index = Subscription

local RETRY_NOW = { deactivated = true, timeout = true }
local RETRY_LATER = { probation = true, giveup = true }

-- seconds before expiry at which a refresh goes out
local function refresh_delay(granted)
  return math.max(0, granted - math.min(32, granted / 2))
end

local subscribe_once

local function ended(sub, reason)
  if sub._refresh then sub._refresh:cancel(); sub._refresh = nil end
  sub.state = "terminated"
  sub.reason = sub.reason or reason
  if sub.dialog then sub.dialog:terminate() end
  local slot = sub._end_slot
  if slot then
    sub._end_slot = nil
    dispatcher.fill(slot, true)
  end
end

local function retry_later(sub, delay)
  if sub._retry then sub._retry:cancel() end
  sub._retry = dispatcher.timer(delay, function()
    sub._retry = nil
    if sub._unsubscribed or sub.agent:closed() then return end
    sub.reason = nil
    local ok, err = subscribe_once(sub)
    if not ok then
      sub.state, sub.reason = "terminated", "failed"
      dispatcher.log("warn", "subscribe: " .. sub.uri .. " (" .. sub.event .. "): "
        .. tostring(err))
    end
  end)
end

local function arm_refresh(sub, granted)
  if sub._refresh then sub._refresh:cancel(); sub._refresh = nil end
  sub.expires = granted
  sub.expires_at = core.now() + granted
  if granted == 0 or sub._unsubscribed then return end
  sub._refresh = dispatcher.timer(refresh_delay(granted), function()
    sub._refresh = nil
    if not sub.agent:closed() then sub:refresh() end
  end)
end

local function on_notify(sub, d, req)
  if d ~= sub.dialog then return req:reply(481, "Subscription Does Not Exist") end
  local pkg, id = M.parse_event(req:header("Event"))
  if pkg ~= sub.package then
    return req:reply(489, "Bad Event", { headers = { ["Allow-Events"] = sub.package } })
  end
  -- RFC 6665 4.1.3: another id in this dialog is a subscription we do not have
  if id ~= sub.event_id then return req:reply(481, "Subscription Does Not Exist") end
  local st = M.parse_state(req:header("Subscription-State"))
  if not st then return req:reply(400, "Missing Subscription-State") end
  req:reply(200)
  sub.body, sub.content_type = req.body, req.content_type
  sub.notifications = sub.notifications + 1
  if st.state ~= "terminated" then
    sub.state = st.state
    -- RFC 6665 4.1.2.3: the notifier may shorten the subscription
    if st.expires and sub.expires_at and st.expires < left(sub.expires_at, core.now()) then
      arm_refresh(sub, st.expires)
    end
    if sub.on_notify then sub.on_notify(req, sub) end
    return
  end
  sub.state, sub.reason, sub.retry_after = "terminated", st.reason, st.retry_after
  if sub._refresh then sub._refresh:cancel(); sub._refresh = nil end
  if sub.on_notify then
    local ok, err = xpcall(function() sub.on_notify(req, sub) end, debug.traceback)
    if not ok then dispatcher.log("error", "subscribe: on_notify failed: " .. tostring(err)) end
  end
  ended(sub, st.reason)
  if sub.retry and not sub._unsubscribed and sub.want_expires > 0 then
    -- RFC 6665 4.1.3: what the reason allows
    local r = st.reason
    if RETRY_NOW[r] or RETRY_LATER[r] or (st.retry_after and not (r == "rejected"
      or r == "noresource" or r == "invariant")) then
      retry_later(sub, st.retry_after or (RETRY_NOW[r] and 0 or sub.retry_delay))
    end
  end
end

-- A NOTIFY that comes before the 2xx of the SUBSCRIBE (RFC 6665 4.1.2.4: the notifier
-- may send it at once, and it may overtake the 2xx, e.g. when the 2xx goes back through
-- a proxy or a front that the NOTIFY does not cross; a notifier may even wait for its
-- answer before sending the 2xx): taken at once like one in the dialog.  The first such
-- NOTIFY's From tag picks the notifier (another fork's gets 481).
local function early_notify(sub, req)
  if not sub._early then return req:reply(481, "Subscription Does Not Exist") end
  sub._early_tag = sub._early_tag or req.from_tag
  if req.from_tag ~= sub._early_tag then
    return req:reply(481, "Subscription Does Not Exist")
  end
  return on_notify(sub, nil, req)
end

-- one initial SUBSCRIBE (new dialog) -> true | nil, err, code, res
function subscribe_once(sub)
  local expires = sub.want_expires
  local res, err, code, r
  -- each attempt's Call-ID is ours to know before the 2xx: an early NOTIFY is found by it
  local call_id
  local notified = sub.notifications
  sub._early, sub._early_tag = true, nil
  local function settled()
    dispatcher.expect_early(sub.agent, call_id, nil)
    sub._early = nil
  end
  for _ = 1, 3 do
    local headers = {}
    for k, v in pairs(sub.headers) do headers[k] = v end
    if call_id then dispatcher.expect_early(sub.agent, call_id, nil) end
    call_id = sub.headers["Call-ID"] or (core.random_hex(16) .. "@luasip")
    headers["Call-ID"] = call_id
    dispatcher.expect_early(sub.agent, call_id, function(req) return early_notify(sub, req) end)
    headers.Event = event_value(sub.package, sub.event_id)
    headers.Expires = tostring(expires)
    headers.Accept = headers.Accept or sub.accept
    res, err, code, r = sub.agent:request{ method = "SUBSCRIBE", uri = sub.uri, dialog = true,
      from = sub.from, to = sub.to, proxy = sub.proxy, auth = sub.auth, headers = headers,
      timeout = sub.timeout }
    if res or code ~= 423 then break end
    local min = r and tonumber(r:header("Min-Expires"))
    if not min or min <= expires then break end
    expires = min                 -- RFC 6665 4.1.2.1: retry with the minimum
  end
  if not res then settled(); return nil, err, code, r end
  local d = res.dialog
  if not d then settled(); return nil, "no dialog for the 2xx", "dialog", res end
  sub.dialog = d
  -- (an early NOTIFY already told the state)
  if sub.notifications == notified then sub.state, sub.reason = "init", nil end
  sub.want_expires = expires
  d:on("NOTIFY", function(req, dd) return on_notify(sub, dd, req) end)
  arm_refresh(sub, tonumber(res:header("Expires")) or expires)
  sub.response = res
  settled()
  return true
end

-- agent:subscribe{ uri =, event =, expires = 3600, on_notify = fn(req, sub), from =, to =,
--   proxy =, auth =, headers =, accept =, timeout =, retry = true, retry_delay = 30 }
--   -> subscription | nil, err, code [, response]
-- The subscription refreshes itself before it expires, re-subscribes when the notifier
-- ends it with a reason that allows it (deactivated, timeout, probation, giveup; after
-- retry-after), and ends with sub:unsubscribe().  Fields: state ("init", "pending",
-- "active", "terminated"), reason, expires, body, content_type, dialog, notifications.
function M.subscribe(self, opts)
  local fname = "luasip.agent:subscribe"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  if type(opts.uri) ~= "string" then error(fname .. ": uri must be a string", 2) end
  if type(opts.event) ~= "string" then error(fname .. ": event must be a string", 2) end
  if opts.on_notify ~= nil and type(opts.on_notify) ~= "function" then
    error(fname .. ": on_notify must be a function", 2)
  end
  if opts.expires ~= nil and (type(opts.expires) ~= "number" or opts.expires < 0) then
    error(fname .. ": expires must be a number of seconds >= 0", 2)
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    error(fname .. ": headers must be a table", 2)
  end
  dispatcher.current(fname)
  local pkg, id = M.parse_event(opts.event)
  if not pkg then error(fname .. ": bad event", 2) end
  local sub = setmetatable({
    agent = self, uri = opts.uri, event = opts.event, package = pkg, event_id = id,
    want_expires = math.floor(opts.expires or (PACKAGES[pkg] or {}).expires or 3600),
    on_notify = opts.on_notify, from = opts.from, to = opts.to, proxy = opts.proxy,
    auth = opts.auth, headers = opts.headers or {}, accept = opts.accept,
    timeout = opts.timeout, retry = opts.retry ~= false,
    retry_delay = opts.retry_delay or 30, notifications = 0,
  }, Subscription)
  local ok, err, code, res = subscribe_once(sub)
  if not ok then return nil, err, code, res end
  return sub
end

-- sub:refresh() -> true | nil, err, code: re-SUBSCRIBE in the dialog now
function Subscription:refresh()
  dispatcher.current("luasip subscription:refresh")
  if self.state == "terminated" or self._unsubscribed then
    return nil, "subscription terminated", "terminated"
  end
  local expires = self.want_expires
  local res, err, code, r
  for _ = 1, 2 do
    res, err, code, r = self.dialog:request("SUBSCRIBE", { headers = {
      Event = event_value(self.package, self.event_id), Expires = tostring(expires),
      Accept = self.headers.Accept or self.accept }, timeout = self.timeout })
    if res or code ~= 423 then break end
    local min = r and tonumber(r:header("Min-Expires"))
    if not min or min <= expires then break end
    expires = min
  end
  if res then
    self.want_expires = expires
    arm_refresh(self, tonumber(res:header("Expires")) or expires)
    return true
  end
  if self.state == "terminated" or self._unsubscribed then return nil, err, code end
  if code == 481 or code == "terminated" then
    -- the notifier forgot us: start again with a new dialog (RFC 6665 4.1.2.2)
    ended(self, "gone")
    if self.retry then retry_later(self, 0) end
  else
    local remaining = left(self.expires_at, core.now())
    local after = r and tonumber(r:header("Retry-After"))
    if remaining > 2 and (not after or after < remaining) then
      self._refresh = dispatcher.timer(after or remaining / 2, function()
        self._refresh = nil
        if not self.agent:closed() then self:refresh() end
      end)
    else
      ended(self, "refresh failed")
      if self.retry then retry_later(self, after or self.retry_delay) end
    end
  end
  return nil, err, code
end

-- sub:unsubscribe([timeout = 5]) -> true | nil, err, code: SUBSCRIBE with Expires: 0,
-- then waits (bounded) for the final NOTIFY before forgetting the dialog
function Subscription:unsubscribe(timeout)
  dispatcher.current("luasip subscription:unsubscribe")
  self._unsubscribed = true
  if self._retry then self._retry:cancel(); self._retry = nil end
  if self._refresh then self._refresh:cancel(); self._refresh = nil end
  if self.state == "terminated" then return true end
  local res, err, code = self.dialog:request("SUBSCRIBE", { headers = {
    Event = event_value(self.package, self.event_id), Expires = "0" },
    timeout = self.timeout })
  if not res then
    ended(self, "unsubscribed")
    if code == 481 or code == "terminated" then return true end
    return nil, err, code
  end
  if self.state ~= "terminated" then
    local slot = dispatcher.new_slot("luasip subscription:unsubscribe")
    self._end_slot = slot
    dispatcher.wait(slot, timeout or 5)
    self._end_slot = nil
    ended(self, "unsubscribed")
  end
  return true
end

return M
