-- luasip.agent: the class luasip.agent (csrc/agent.c, csrc/client_tx.c).  This module owns
-- the agent's methods: handlers per method, requests out (with digest auth), INVITE,
-- SUBSCRIBE, PUBLISH and REFER outside dialogs.  Per-agent state: class.state(agent).

--- The class `luasip.agent`: a SIP endpoint that listens on UDP, TCP and TLS, runs a
-- handler per method for each request it receives (each in its own coroutine) and sends
-- requests.  Made by `luasip.agent`.  Methods implemented in C (see the README):
-- `agent:send`, `agent:close`, `agent:closed`, `agent:contact`, `agent:transports`,
-- `agent:overload`.
-- @classmod luasip.agent
-- @usage
-- local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060" } })
-- app:on("MESSAGE", function(req) print(req.body); req:reply(200) end)

local core = require "luasip.core"
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"
local sipmethods = require "luasip.sipmethods"
-- the classes an agent's traffic reaches: loaded with the agent, so their events are
-- handled whatever the application required
require "luasip.request"
require "luasip.response"
local client_tx = require "luasip.client_tx"
require "luasip.dialog"
require "luasip.proxy"
local auth = require "luasip.auth"
local call = require "luasip.call"
local media = require "luasip.media"
local app = require "luasip.app"
local dns = require "luasip.dns"

local state = class.state
local methods, _, C = class.get("luasip.agent")

local M = {}

local OPTIONS = { listen = true, user_agent = true, t1 = true, in_dialog = true, stateless = true,
  supported = true, handler_timeout = true, invite_timeout = true, overload = true,
  media = true, max_message_size = true, tls = true, flood = true, dns = true,
  sips_without_tls = true }

local FLOOD_OPTIONS = { rate = true, burst = true, block = true, status = true, exempt = true,
  scanners = true, max_headers = true, limit = true }

local DNS_OPTIONS = { servers = true, resolv_conf = true, hosts = true }

local TLS_OPTIONS = { cert = "string", key = "string", ca = "string", verify = "boolean" }

-- a sips: URI or one with transport=tls
local function is_tls_uri(u)
  return u:match("^sips:") ~= nil or u:lower():match(";transport=tls") ~= nil
end

local function check_tls(tls, listen)
  local any = false
  for _, u in ipairs(listen) do any = any or is_tls_uri(u) end
  if tls == nil then
    if any then
      error("luasip.agent: a sips: or transport=tls listen URI needs the tls option"
        .. " ({ cert =, key =, ca = })", 3)
    end
    return nil
  end
  if type(tls) ~= "table" then
    error("luasip.agent: tls must be a table { cert =, key =, ca =, verify = }", 3)
  end
  for k, v in pairs(tls) do
    local want = TLS_OPTIONS[k]
    if not want then error("luasip.agent: tls." .. tostring(k) .. ": unknown option", 3) end
    if type(v) ~= want or (want == "string" and v == "") then
      error("luasip.agent: tls." .. k .. " must be a " .. (want == "string"
        and "PEM file path" or "boolean"), 3)
    end
  end
  if tls.key and not tls.cert then
    error("luasip.agent: tls.key needs tls.cert", 3)
  end
  if not any then
    error("luasip.agent: the tls option needs a sips: or transport=tls listen URI", 3)
  end
  return { cert = tls.cert, key = tls.key, ca = tls.ca, verify = tls.verify }
end

-- "sip:h:p;transport=tls" is bound as "sips:h:p": sofia binds TLS only for sips: URIs
-- (its sip: URIs offer UDP, TCP and SCTP); the port defaults to 5061 either way
local function bind_uri(u)
  local base, params = u:match("^sip:([^;]*)(;.*)$")
  if not base or not (params .. ";"):lower():find(";transport=tls;", 1, true) then return u end
  local kept = {}
  for p in params:gmatch(";([^;]*)") do
    if p:lower() ~= "transport=tls" then kept[#kept + 1] = ";" .. p end
  end
  return "sips:" .. base .. table.concat(kept)
end

local function check_listen(listen)
  if type(listen) == "string" then listen = { listen } end
  if type(listen) ~= "table" or #listen == 0 then
    error("luasip.agent: listen must be a URI or a list of URIs", 3)
  end
  for i, u in ipairs(listen) do
    if type(u) ~= "string" or not u:match("^sips?:") then
      error("luasip.agent: listen[" .. i .. "] must be a sip: URI", 3)
    end
    local port = u:match("^sips?:[^;]*:(%d+)") or u:match("^sips?:[^;%[%]]*%]:(%d+)")
    if port and tonumber(port) > 65535 then
      error("luasip.agent: listen[" .. i .. "] port must be 1-65535 (0: any free port)", 3)
    end
  end
  -- IPv6 listen URIs go first: sofia 1.12 matches "[v6]" destinations to the first
  -- transport of a protocol (its host_is_ip6_address does not take brackets), while
  -- IPv4 destinations are matched by address family.
  local ordered = {}
  for _, u in ipairs(listen) do
    if u:match("^sips?:%[") then ordered[#ordered + 1] = bind_uri(u) end
  end
  for _, u in ipairs(listen) do
    if not u:match("^sips?:%[") then ordered[#ordered + 1] = bind_uri(u) end
  end
  return ordered
end

local function check_timeouts(v)
  if v == false then return false end
  if v == nil then return nil end
  if type(v) ~= "table" then
    error("luasip.agent: handler_timeout must be a table { invite =, other = } or false", 3)
  end
  for k, s in pairs(v) do
    if (k ~= "invite" and k ~= "other") or (s ~= false and (type(s) ~= "number" or s <= 0)) then
      error("luasip.agent: handler_timeout." .. tostring(k) .. " must be seconds > 0", 3)
    end
  end
  return { invite = v.invite, other = v.other }
end

-- agent{ listen = uri | {uri...}, user_agent =, t1 =, in_dialog = "481" | "handler",
--   supported = {tag...}, handler_timeout = { invite =, other = } | false,
--   invite_timeout = seconds, max_message_size = bytes, overload = {...},
--   tls = { cert = pem, key = pem, ca = pem, verify = true }, sips_without_tls = false,
--   media = { address =, ports = { min, max }, prompts = dir } } -> agent | nil, err, code
function M.new(opts)
  if type(opts) ~= "table" then error("luasip.agent: options table expected", 2) end
  class.check_options(opts, OPTIONS, "luasip.agent")
  local listen = check_listen(opts.listen or { "sip:127.0.0.1:0" })
  if opts.user_agent ~= nil and (type(opts.user_agent) ~= "string"
      or opts.user_agent:find("[\r\n]")) then
    error("luasip.agent: user_agent must be a string without CR or LF", 2)
  end
  if opts.t1 ~= nil and (type(opts.t1) ~= "number" or opts.t1 <= 0 or opts.t1 > 60) then
    error("luasip.agent: t1 must be a number of seconds in (0, 60]", 2)
  end
  local in_dialog = opts.in_dialog or "481"
  if in_dialog ~= "481" and in_dialog ~= "handler" then
    error('luasip.agent: in_dialog must be "481" or "handler"', 2)
  end
  if opts.supported ~= nil and type(opts.supported) ~= "table" then
    error("luasip.agent: supported must be a list of option tags", 2)
  end
  local limits = check_timeouts(opts.handler_timeout)
  local media_config = media.config(opts.media, "luasip.agent", 2)
  if opts.invite_timeout ~= nil and (type(opts.invite_timeout) ~= "number"
    or opts.invite_timeout <= 0) then
    error("luasip.agent: invite_timeout must be seconds > 0", 2)
  end
  local mms = opts.max_message_size
  if mms ~= nil and (type(mms) ~= "number" or mms % 1 ~= 0 or mms < 1024
    or mms > 16777216) then
    error("luasip.agent: max_message_size must be an integer of bytes in [1024, 16777216]", 2)
  end
  local tls = check_tls(opts.tls, listen)
  if opts.sips_without_tls ~= nil and type(opts.sips_without_tls) ~= "boolean" then
    error("luasip.agent: sips_without_tls must be a boolean", 2)
  end
  if type(opts.dns) == "table" then
    class.check_options(opts.dns, DNS_OPTIONS, "luasip.agent: dns", 2)
    if opts.dns.hosts ~= nil and type(opts.dns.hosts) ~= "string" then
      error("luasip.agent: dns.hosts must be the path of a hosts file", 2)
    end
  end
  if type(opts.flood) == "table" then
    class.check_options(opts.flood, FLOOD_OPTIONS, "luasip.agent: flood", 2)
  end
  local a, err, code = core.agent{ listen = listen, user_agent = opts.user_agent,
    t1 = opts.t1, overload = opts.overload, max_message_size = mms, tls = tls,
    flood = opts.flood, stateless = opts.stateless == true, dns = opts.dns }
  if not a then return nil, err, code end
  local st = state(a)
  st.handlers = {}
  st.dns_hosts = type(opts.dns) == "table" and opts.dns.hosts or nil
  -- option tags a caller may Require: the core's 100rel (RFC 3262), timer (RFC 4028)
  -- and norefersub (RFC 4488)
  st.supported = { ["100rel"] = true, timer = true, norefersub = true }
  for _, tag in ipairs(opts.supported or {}) do st.supported[tostring(tag):lower()] = true end
  -- in-dialog requests matching no dialog: "481" (RFC 3261 12.2.2) or "handler" (the
  -- method's handler sees them: proxies and stateless applications)
  st.in_dialog = in_dialog
  st.stateless = opts.stateless == true
  -- RFC 5630: a sips: Request-URI that came over UDP/TCP is answered 416, unless the
  -- application opts out (behind a front that ends TLS)
  st.sips_without_tls = opts.sips_without_tls == true
  if limits == false then
    st.handler_timeout = false
  else
    local d = dispatcher.HANDLER_TIMEOUT
    st.handler_timeout = { invite = (limits or d).invite or d.invite,
      other = (limits or d).other or d.other }
  end
  st.invite_timeout = opts.invite_timeout or 180
  st.media = media_config
  return a
end

local function check(self, fname)
  local ok, closed = pcall(C.closed, self)
  if not ok then error(fname .. ": luasip.agent expected, got " .. type(self), 3) end
  if closed then error("attempt to use a closed luasip.agent (" .. fname .. ")", 3) end
  return state(self)
end

-- agent:on(method, fn | nil) -> previous handler (while an application's setup runs,
-- luasip.app stages it: installed with the rest of the setup's handlers, in one step)

--- Sets (or removes) the handler of a SIP method.  The handler runs as `fn(req)` in
-- a luasip coroutine of its own; CANCEL is the core's (see `req:on_cancel`).
-- @function agent:on
-- @string method the method, case-insensitive (extension methods too)
-- @tparam ?func fn the handler; nil removes it (the agent then answers 405)
-- @treturn ?func the previous handler
-- @usage app:on("OPTIONS", function(req) req:reply(200) end)
function methods.on(self, method, fn)
  local st = check(self, "luasip.agent:on")
  method = sipmethods.norm(method, "luasip.agent:on")
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.agent:on: handler must be a function or nil", 2)
  end
  -- a CANCEL matching no INVITE of ours reaches a handler only on a stateless agent
  -- (a stateless front forwards it: luasip.cluster)
  if method == "CANCEL" and not st.stateless then
    error("luasip.agent:on: CANCEL is handled by the core (use req:on_cancel)", 2)
  end
  if app.staging() then return app.stage(self, method, fn) end
  local old = st.handlers[method]
  st.handlers[method] = fn
  return old
end

-- agent:handlers() -> list of methods with a handler

--- The methods that have a handler.
-- @function agent:handlers
-- @treturn {string,...} the method names, sorted
function methods.handlers(self)
  local list = {}
  for m in pairs(state(self).handlers) do list[#list + 1] = m end
  table.sort(list)
  return list
end

-- agent:allow() -> the Allow value the agent advertises

--- The Allow header value the agent advertises (its handlers, and the core's methods).
-- @function agent:allow
-- @treturn string e.g. `"INVITE, ACK, CANCEL, OPTIONS, BYE"`
function methods.allow(self)
  return dispatcher.allow_list(state(self).handlers)
end

-- agent:uri([user]) -> "sip:user@host:port" for this agent

--- A SIP URI of this agent (its contact), with a user part when given.
-- @function agent:uri
-- @string[opt] user the user part
-- @treturn string e.g. `"sip:alice@127.0.0.1:5060"`
function methods.uri(self, user)
  local c = assert(self:contact())
  if user then c = c:gsub("^(sips?:)", function(scheme) return scheme .. user .. "@" end) end
  return c
end

local function copy(t)
  local o = {}
  for k, v in pairs(t) do o[k] = v end
  return o
end

-- the request without auth: send, then wait for the final response; level: where an
-- argument error points (as for error(); 3 when called by luasip.auth)
local function plain_request(self, opts, level)
  local tx, err, code = class.call("luasip.agent:request", level or 3, C.send, self, opts)
  if not tx then return nil, err, code end
  client_tx.set_on_provisional(tx, opts.on_provisional)
  if opts.on_sent then opts.on_sent(tx) end
  return tx:wait(opts.timeout)
end

-- agent:request{ method=, uri=, headers=, body=, content_type=, timeout=, auth =,
--   on_provisional = fn(res, tx) } -> response | nil, err, code [, response]

--- Sends a request outside a dialog and waits for its final response (waiting call).
-- @function agent:request
-- @tab opts `method`, `uri`, `headers`, `body`, `content_type`, `timeout` (seconds),
-- `proxy`, `from`, `to`, `auth` (credentials for a 401/407), `dialog`,
-- `on_provisional = fn(res, tx)`, `on_sent = fn(tx)`
-- @return the final response (`res.status`, `res.reason`, `res:header(name)`, ...), or
-- `nil, message, code [, response]` (a final response >= 300 gives its status as code)
-- @usage local res, err = app:request{ method = "OPTIONS", uri = "sip:127.0.0.1:5070" }
function methods.request(self, opts)
  local fname = "luasip.agent:request"
  check(self, fname)
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  dispatcher.current(fname)
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error(fname .. ": timeout must be a positive number", 2)
  end
  if opts.on_provisional ~= nil and type(opts.on_provisional) ~= "function" then
    error(fname .. ": on_provisional must be a function", 2)
  end
  local o = copy(opts)
  o.method = sipmethods.norm(opts.method, fname)
  if dns.applies(o) then             -- RFC 3263 targets in turn (lua/luasip/dns.lua)
    return dns.failover(self, o, function(x)
      if x.auth ~= nil then return auth.send_with_auth(self, x, plain_request, x.method, fname) end
      return plain_request(self, x, 4)
    end)
  end
  if o.auth ~= nil then
    return auth.send_with_auth(self, o, plain_request, o.method, fname)
  end
  return plain_request(self, o, 2)       -- a tail call: the caller is one level up
end

--- Subscribes to an event package (RFC 6665); see the README, "Events".
-- @function agent:subscribe
-- @tab opts `uri`, `event`, `expires`, `on_notify`, ...
-- @return the subscription, or `nil, message, code`

--- Publishes event state (RFC 3903); see the README, "Events".
-- @function agent:publish
-- @tab opts `uri`, `event`, `body`, `content_type`, `expires`, `etag`, ...
-- @return the publication, or `nil, message, code`

--- Sends a REFER outside a dialog (RFC 3515); see the README, "Call transfer".
-- @function agent:refer
-- @tab opts `uri`, `refer_to`, ...
-- @return the REFER's progress reports, or `nil, message, code`

-- agent:invite{ uri=, from=, to=, headers=, body=, content_type=, timeout=, auth =,
--   session_expires =, min_se =, on_provisional= } -> dialog, response | nil, err, code
--   [, response]

--- Makes a call: sends an INVITE, waits for its final response, ACKs a 2xx and
-- returns the dialog (waiting call).
-- @function agent:invite
-- @tab opts `uri`, `body`, `content_type`, `headers`, `timeout`, `proxy`, `from`, `to`,
-- `auth`, `session_expires`, `min_se`, `on_provisional`, `on_sent`, `media`
-- @return the dialog and the 2xx response, or `nil, message, code [, response]`
-- @usage local d = assert(app:invite{ uri = "sip:bob@127.0.0.1:5070", body = offer,
--   content_type = "application/sdp" })
-- d:bye()
function methods.invite(self, opts)
  local fname = "luasip.agent:invite"
  check(self, fname)
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  dispatcher.current(fname)
  if opts.media ~= nil then
    return call.invite_media(self, opts, fname)  -- a tail call: the caller is one level up
  end
  if dns.applies(opts) then
    return dns.failover(self, opts, function(x)
      if x.auth ~= nil then return auth.send_with_auth(self, x, call.invite, "INVITE", fname) end
      return call.invite(self, x, 4)
    end)
  end
  if opts.auth ~= nil then
    return auth.send_with_auth(self, opts, call.invite, "INVITE", fname)
  end
  return call.invite(self, opts, 2)      -- a tail call: the caller is one level up
end

-- these live with their features; the agent owns the names (assigned once, here)
methods.subscribe = require("luasip.events").subscribe
methods.publish = require("luasip.publications").publish
methods.refer = require("luasip.refer").agent_refer
-- agent:load(name, ...) -> true | nil, err, code (luasip.app: applications, reload)
methods.load = app.load

return M
