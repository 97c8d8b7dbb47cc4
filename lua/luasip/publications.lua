-- luasip.publications: event state publication (RFC 3903), both sides.
--   Server: local on_publish, pubs = sip.publications{ package = "presence",
--             notifier = presence }                 -- presence from sip.events
--           app:on("PUBLISH", on_publish)
--   Client: local pub = app:publish{ uri = "sip:alice@example.com", event = "presence",
--             body = pidf, content_type = "application/pidf+xml" }
--           pub:modify(new_body); pub:remove()
-- Publications of a resource are one store record (memory by default, Redis to share
-- them): { entries = { {etag, body, content_type, expires_at, updated_at}... } } with a
-- TTL.  Every successful PUBLISH gets a new entity tag (SIP-ETag); SIP-If-Match names the
-- one to refresh, modify or remove (412 when it is unknown).  A timer removes each entry
-- when it expires.  When the composed state of a resource changes, on_change runs and
-- the notifier (if any) notifies its subscribers.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local location = require "luasip.location"
local memory = require "luasip.store.memory"
local outage = require "luasip.store.outage"
local events = require "luasip.events"
local pidf = require "luasip.pidf"

local M = {}

local function check_seconds(opts, name, default, fname)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 then
    error(fname .. ": " .. name .. " must be a number of seconds >= 0", 3)
  end
  return v
end

local function left(t, now)
  return math.max(0, math.ceil(t - now - 1e-6))
end

-- the default compositor: presence documents are merged (every tuple), anything else
-- is the most recently published body
local function compose_default(package)
  return function(resource, entries)
    if #entries == 1 then return entries[1].body, entries[1].content_type end
    if package == "presence" then
      local bodies, all_pidf = {}, true
      for i, e in ipairs(entries) do
        bodies[i] = e.body
        if (e.content_type or ""):lower() ~= pidf.content_type then all_pidf = false end
      end
      if all_pidf then return pidf.merge(resource, bodies), pidf.content_type end
    end
    local last = entries[1]
    for _, e in ipairs(entries) do
      if e.updated_at > last.updated_at then last = e end
    end
    return last.body, last.content_type
  end
end

local Publications = {}
Publications.__index = Publications

-- publications{ package =, store =, prefix =, min_expires = 60, max_expires = 86400,
--   default_expires = 3600, content_types = {type...}, notifier = (sip.events notifier),
--   authorize = fn(req, resource) -> boolean, resource = fn(req) -> resource,
--   compose = fn(resource, entries) -> body, content_type, on_change = fn(resource, body,
--   content_type) } -> handler, publications
function M.new(opts)
  local fname = "luasip.publications"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  if type(opts.package) ~= "string" or not opts.package:match("^[%w%-%.!%%%*_%+`'~]+$") then
    error(fname .. ": package must be an event package name", 2)
  end
  local pkg = opts.package:lower()
  for _, k in ipairs{ "authorize", "resource", "compose", "on_change" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      error(fname .. ": " .. k .. " must be a function", 2)
    end
  end
  if opts.notifier ~= nil and (type(opts.notifier) ~= "table"
    or type(opts.notifier.notify) ~= "function") then
    error(fname .. ": notifier must be a notifier from luasip.events", 2)
  end
  local types = opts.content_types
  if types == nil then
    local ct = (events.PACKAGES[pkg] or {}).content_type
    types = ct and { ct } or nil
  elseif type(types) ~= "table" then
    error(fname .. ": content_types must be a list", 2)
  end
  local self = setmetatable({
    package = pkg,
    min_expires = check_seconds(opts, "min_expires", 60, fname),
    max_expires = check_seconds(opts, "max_expires", 86400, fname),
    default_expires = check_seconds(opts, "default_expires", 3600, fname),
    content_types = types,
    notifier = opts.notifier,
    authorize = opts.authorize,
    resource_fn = opts.resource,
    compose = opts.compose or compose_default(pkg),
    on_change = opts.on_change,
    store = opts.store or memory.new(),
    prefix = opts.prefix or ("publications:" .. pkg .. ":"),
    timers = {},          -- etag -> expiry timer (this process)
  }, Publications)
  if self.min_expires > self.max_expires then
    error(fname .. ": min_expires is above max_expires", 2)
  end
  if self.default_expires == 0 then error(fname .. ": default_expires must be > 0", 2) end
  if type(self.store) ~= "table" or type(self.store.update) ~= "function" then
    error(fname .. ": store must be a luasip store", 2)
  end
  return function(req) return self:handle(req) end, self
end

local function live(rec, now)
  local list = {}
  for _, e in ipairs(rec and rec.entries or {}) do
    if e.expires_at > now then list[#list + 1] = e end
  end
  return list
end

-- the record outlives its last entry by GRACE seconds, so that the expiry timer still
-- finds the entry it removes (and tells it from one refreshed elsewhere)
local GRACE = 30

local function record_of(list, now)
  if #list == 0 then return nil end
  local last = now
  for _, e in ipairs(list) do if e.expires_at > last then last = e.expires_at end end
  return { entries = list }, last - now + GRACE
end

-- runs on_change and the notifier with the composed state of resource
local function changed(self, resource)
  local body, ctype = self:state(resource)
  if self.on_change then self.on_change(resource, body, ctype) end
  if self.notifier then self.notifier:notify(resource, body or false, ctype) end
end

-- removes the entry etag of resource if it has expired; notifies if it had
local arm

-- removes the entry etag of resource once it has expired, then notifies
local function expire(self, resource, etag)
  self.timers[etag] = nil
  local gone, early
  self.store:update(self.prefix .. resource, function(rec, now)
    gone, early = false, nil
    local keep = {}
    for _, e in ipairs(rec and rec.entries or {}) do
      if e.etag == etag and e.expires_at <= now then gone = true
      elseif e.expires_at > now then
        keep[#keep + 1] = e
        if e.etag == etag then early = e.expires_at - now end
      end
    end
    if not gone then return false end
    return record_of(keep, now)
  end)
  if early then return arm(self, resource, etag, early) end   -- the timer ran early
  if gone then changed(self, resource) end
end

function arm(self, resource, etag, expires)
  local t = dispatcher.timer(expires, function() expire(self, resource, etag) end)
  self.timers[etag] = t
end

local function allowed_type(self, ctype)
  if not self.content_types then return true end
  local t = (ctype or ""):match("^%s*([^;%s]+)")
  t = t and t:lower()
  for _, ok in ipairs(self.content_types) do
    if ok:lower() == t then return true end
  end
  return false
end

-- -> true | false | nil, err, code
local function has_tag(self, resource, etag)
  local rec, err, code = self.store:get(self.prefix .. resource)
  if rec == nil and err then return nil, err, code end
  for _, x in ipairs(live(rec, self.store:now())) do
    if x.etag == etag then return true end
  end
  return false
end

function Publications:handle(req)
  local pkg = events.parse_event(req:header("Event"))
  if pkg ~= self.package then
    return req:reply(489, "Bad Event", { headers = { ["Allow-Events"] = self.package } })
  end
  local resource = self.resource_fn and self.resource_fn(req)
    or location.aor(req.ruri) or req.uri
  if self.authorize and not self.authorize(req, resource) then
    if req:answered() then return end
    return req:reply(403, "Forbidden")
  end
  if req:answered() then return end
  local etag = req:header("SIP-If-Match")
  local body = req.body
  if body == "" then body = nil end
  -- RFC 3903 6 step 3: an unknown entity tag is 412 whatever else is wrong
  if etag then
    local known, err, code = has_tag(self, resource, etag)
    if known == nil then return outage.reply(req, "Publication", err, code) end
    if not known then return req:reply(412, "Conditional Request Failed") end
  end
  local e = req.expires
  if e == nil then e = self.default_expires end
  if e > 0 and e < self.min_expires then
    return req:reply(423, "Interval Too Brief",
      { headers = { ["Min-Expires"] = tostring(math.ceil(self.min_expires)) } })
  end
  if e > self.max_expires then e = self.max_expires end
  e = math.floor(e)
  -- RFC 3903 6 step 2-4: an initial PUBLISH carries state, a removal none
  if not etag and (not body or e == 0) then
    return req:reply(400, body and "Initial PUBLISH With Expires 0" or "Missing Body")
  end
  if body and not allowed_type(self, req.content_type) then
    return req:reply(415, "Unsupported Media Type",
      { headers = { Accept = table.concat(self.content_types, ", ") } })
  end
  local new_tag = core.random_hex(8)
  local found, modified
  local ok, err, code = self.store:update(self.prefix .. resource, function(rec, now)
    local list = live(rec, now)
    found, modified = nil, false
    if etag then
      for i, x in ipairs(list) do if x.etag == etag then found = i break end end
      if not found then return false end
      local x = list[found]
      if e == 0 then
        table.remove(list, found)
        modified = true
      else
        x.etag, x.expires_at = new_tag, now + e
        if body then
          modified = x.body ~= body or x.content_type ~= req.content_type
          x.body, x.content_type, x.updated_at = body, req.content_type, now
        end
      end
    else
      list[#list + 1] = { etag = new_tag, body = body, content_type = req.content_type,
        expires_at = now + e, updated_at = now }
      modified = true
    end
    return record_of(list, now)
  end)
  if not ok then return outage.reply(req, "Publication", resource .. ": " .. tostring(err), code) end
  if etag and not found then return req:reply(412, "Conditional Request Failed") end
  if etag and self.timers[etag] then
    self.timers[etag]:cancel()
    self.timers[etag] = nil
  end
  if e == 0 then
    req:reply(200, { headers = { Expires = "0" } })
  else
    arm(self, resource, new_tag, e)
    req:reply(200, { headers = { ["SIP-ETag"] = new_tag, Expires = tostring(e) } })
  end
  if modified then changed(self, resource) end
end

-- publications:entries(resource) -> list of { etag, body, content_type, expires }
function Publications:entries(resource)
  local rec = self.store:get(self.prefix .. resource)
  local now = self.store:now()
  local list = live(rec, now)
  table.sort(list, function(a, b) return a.updated_at < b.updated_at end)
  for _, x in ipairs(list) do
    x.expires = left(x.expires_at, now)
  end
  return list
end

-- publications:state(resource) -> body, content_type composed of the live entries | nil
function Publications:state(resource)
  local list = self:entries(resource)
  if #list == 0 then return nil end
  return self.compose(resource, list)
end

-- publications:resources() -> sorted list of resources with publications
function Publications:resources()
  local keys = self.store:keys(self.prefix)
  local list = {}
  for i, k in ipairs(keys) do list[i] = k:sub(#self.prefix + 1) end
  return list
end

-- ------------------------------------------------------------------ client

local Publication = {}
Publication.__index = Publication

local function refresh_delay(granted)
  return math.max(0, granted - math.min(32, granted / 2))
end

-- one PUBLISH; keeps etag, expires and the refresh timer -> response | nil, err, code, res
local function send(pub, body, content_type, expires)
  local res, err, code, r
  for _ = 1, 3 do
    local headers = {}
    for k, v in pairs(pub.headers) do headers[k] = v end
    headers.Event = pub.event
    headers.Expires = tostring(expires)
    headers["SIP-If-Match"] = pub.etag
    res, err, code, r = pub.agent:request{ method = "PUBLISH", uri = pub.uri, from = pub.from,
      to = pub.to, proxy = pub.proxy, auth = pub.auth, headers = headers, body = body,
      content_type = body and content_type or nil, timeout = pub.timeout }
    if res then break end
    if code == 423 then
      local min = r and tonumber(r:header("Min-Expires"))
      if not min or min <= expires then break end
      expires = min
      pub.want_expires = min
    elseif code == 412 and pub.etag and expires > 0 then
      -- RFC 3903 4.4: our state is gone there: publish it afresh
      pub.etag = nil
      body, content_type = pub.body, pub.content_type
    else
      break
    end
  end
  if pub._timer then pub._timer:cancel(); pub._timer = nil end
  if not res then return nil, err, code, r end
  if expires == 0 then
    pub.etag, pub.expires = nil, 0
    return res
  end
  pub.etag = res:header("SIP-ETag") or pub.etag
  local granted = tonumber(res:header("Expires")) or expires
  pub.expires = granted
  if pub.auto and granted > 0 then
    pub._timer = dispatcher.timer(refresh_delay(granted), function()
      pub._timer = nil
      if pub.etag and not pub.agent:closed() then
        local ok, rerr = pub:refresh()
        if not ok then dispatcher.log("warn", "publish: refresh of " .. pub.uri
          .. " failed: " .. tostring(rerr)) end
      end
    end)
  end
  return res
end

-- agent:publish{ uri =, event =, body =, content_type =, expires = 3600, from =, to =,
--   proxy =, auth =, headers =, timeout =, refresh = true } -> publication | nil, err,
--   code [, response].  The publication refreshes itself (SIP-If-Match, no body) before
--   it expires unless refresh = false; pub.etag, pub.expires.
function M.publish(self, opts)
  local fname = "luasip.agent:publish"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  if type(opts.uri) ~= "string" then error(fname .. ": uri must be a string", 2) end
  if type(opts.event) ~= "string" then error(fname .. ": event must be a string", 2) end
  if type(opts.body) ~= "string" then error(fname .. ": body must be a string", 2) end
  if opts.expires ~= nil and (type(opts.expires) ~= "number" or opts.expires <= 0) then
    error(fname .. ": expires must be a number of seconds > 0", 2)
  end
  dispatcher.current(fname)
  local pkg = events.parse_event(opts.event)
  local pub = setmetatable({
    agent = self, uri = opts.uri, event = opts.event, body = opts.body,
    content_type = opts.content_type or (events.PACKAGES[pkg] or {}).content_type
      or "text/plain",
    want_expires = math.floor(opts.expires or 3600), from = opts.from, to = opts.to,
    proxy = opts.proxy, auth = opts.auth, headers = opts.headers or {},
    timeout = opts.timeout, auto = opts.refresh ~= false,
  }, Publication)
  local res, err, code, r = send(pub, pub.body, pub.content_type, pub.want_expires)
  if not res then return nil, err, code, r end
  pub.response = res
  return pub
end

-- pub:refresh() -> true | nil, err, code: PUBLISH with SIP-If-Match and no body
function Publication:refresh()
  if not self.etag then return nil, "not published", "unpublished" end
  local res, err, code = send(self, nil, nil, self.want_expires)
  if not res then return nil, err, code end
  return true
end

-- pub:modify(body [, content_type]) -> true | nil, err, code: new state, same publication
function Publication:modify(body, content_type)
  if type(body) ~= "string" then error("luasip publication:modify: body must be a string", 2) end
  self.body, self.content_type = body, content_type or self.content_type
  local res, err, code = send(self, self.body, self.content_type, self.want_expires)
  if not res then return nil, err, code end
  return true
end

-- pub:remove() -> true | nil, err, code: PUBLISH with SIP-If-Match and Expires: 0
function Publication:remove()
  if not self.etag then return true end
  local res, err, code = send(self, nil, nil, 0)
  if not res then
    if code == 412 then self.etag = nil; return true end
    return nil, err, code
  end
  return true
end

return M
