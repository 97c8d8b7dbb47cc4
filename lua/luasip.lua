-- luasip: SIP applications as Lua scripts, on sofia-sip.
--   local sip = require "luasip"
--   local app = assert(sip.agent{ listen = { "sip:127.0.0.1:5060" } })
--   app:on("OPTIONS", function(req) req:reply(200) end)
--   sip.run()
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
require "luasip.dialog"
require "luasip.proxy"

local sip = {
  _VERSION = "luasip 0.1.0",
  sofia_version = core.sofia_version,
  run = core.run,
  stop = core.stop,
  now = core.now,
  time = core.time,
  spawn = dispatcher.spawn,
  sleep = dispatcher.sleep,
  timer = dispatcher.timer,
  log = dispatcher.log,
  set_logger = dispatcher.set_logger,
  stats = core.stats,
  md5 = core.md5,
  random_hex = core.random_hex,
  methods = {
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE",
  },
}

-- step([ms]) -> ms until the next timer (-1: none).  For hosts that drive the loop.
function sip.step(ms)
  if ms ~= nil and type(ms) ~= "number" then error("luasip.step: ms must be a number", 2) end
  return core.step(ms and math.floor(ms) or 0)
end

local agent_methods = core.methods("luasip.agent")
local tx_methods = core.methods("luasip.client_tx")
local req_methods = core.methods("luasip.request")

local function check_agent(self, fname)
  if type(self) ~= "userdata" or not self.closed then
    error(fname .. ": luasip.agent expected, got " .. type(self), 3)
  end
  if self:closed() then error("attempt to use a closed luasip.agent (" .. fname .. ")", 3) end
end

-- agent{ listen = {uri...} | uri, user_agent =, supported = {tag...} } -> agent | nil, err, code
function sip.agent(opts)
  if type(opts) ~= "table" then error("luasip.agent: options table expected", 2) end
  local listen = opts.listen or { "sip:127.0.0.1:0" }
  if type(listen) == "string" then listen = { listen } end
  if type(listen) ~= "table" or #listen == 0 then
    error("luasip.agent: listen must be a URI or a list of URIs", 2)
  end
  for i, u in ipairs(listen) do
    if type(u) ~= "string" or not u:match("^sips?:") then
      error("luasip.agent: listen[" .. i .. "] must be a sip: URI", 2)
    end
  end
  if opts.user_agent ~= nil and type(opts.user_agent) ~= "string" then
    error("luasip.agent: user_agent must be a string", 2)
  end
  -- IPv6 listen URIs go first: sofia 1.12 matches "[v6]" destinations to the first
  -- transport of a protocol (its host_is_ip6_address does not take brackets), while
  -- IPv4 destinations are matched by address family.
  local ordered = {}
  for _, u in ipairs(listen) do if u:match("^sips?:%[") then ordered[#ordered + 1] = u end end
  for _, u in ipairs(listen) do if not u:match("^sips?:%[") then ordered[#ordered + 1] = u end end
  if opts.t1 ~= nil and (type(opts.t1) ~= "number" or opts.t1 <= 0 or opts.t1 > 60) then
    error("luasip.agent: t1 must be a number of seconds in (0, 60]", 2)
  end
  local a, err, code = core.agent{ listen = ordered, user_agent = opts.user_agent,
    t1 = opts.t1 }
  if not a then return nil, err, code end
  a._handlers = {}
  -- option tags a caller may Require: the core's 100rel (RFC 3262), timer (RFC 4028)
  -- and norefersub (RFC 4488)
  a._supported = { ["100rel"] = true, timer = true, norefersub = true }
  -- in-dialog requests matching no dialog: "481" (RFC 3261 12.2.2) or "handler" (the
  -- method's handler sees them: proxies and stateless applications)
  a._in_dialog = opts.in_dialog or "481"
  if a._in_dialog ~= "481" and a._in_dialog ~= "handler" then
    a:close()
    error('luasip.agent: in_dialog must be "481" or "handler"', 2)
  end
  for _, tag in ipairs(opts.supported or {}) do a._supported[tag:lower()] = true end
  return a
end

local function norm_method(m, fname)
  if type(m) ~= "string" or not m:match("^[%w%-%.!%%%*_%+`'~]+$") then
    error(fname .. ": method must be a SIP method token", 3)
  end
  return m:upper()
end

-- agent:on(method, fn | nil) -> previous handler
function agent_methods.on(self, method, fn)
  check_agent(self, "luasip.agent:on")
  method = norm_method(method, "luasip.agent:on")
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.agent:on: handler must be a function or nil", 2)
  end
  if method == "CANCEL" then
    error("luasip.agent:on: CANCEL is handled by the core (use req:on_cancel)", 2)
  end
  local old = self._handlers[method]
  self._handlers[method] = fn
  return old
end

-- agent:handlers() -> list of methods with a handler
function agent_methods.handlers(self)
  local list = {}
  for m in pairs(self._handlers) do list[#list + 1] = m end
  table.sort(list)
  return list
end

-- agent:allow() -> the Allow value the agent advertises
function agent_methods.allow(self)
  return dispatcher.allow_list(self._handlers)
end

-- agent:uri([user]) -> "sip:user@host:port" for this agent
function agent_methods.uri(self, user)
  local c = assert(self:contact())
  if user then c = c:gsub("^sip:", "sip:" .. user .. "@") end
  return c
end

-- tx:wait([timeout]) -> response | nil, err, code [, response]
function tx_methods.wait(self, timeout)
  local res = self._final
  if not res then
    local slot = dispatcher.new_slot("luasip.client_tx:wait")
    self._slot = slot
    local err, code
    res, err, code = dispatcher.wait(slot, timeout)
    self._slot = nil
    if not res then
      if self.is_invite and self:status() < 200 then
        -- stop ringing; nta finishes the INVITE (487) in the background, and a 200
        -- that crosses the CANCEL is ended with BYE (events.response)
        self._gave_up = true
        self:cancel()
      else
        self:close()
      end
      return nil, err, code
    end
  end
  if res.status >= 300 then
    return nil, tostring(res.status) .. " " .. tostring(res.reason), res.status, res
  end
  if not self.is_invite then
    -- SUBSCRIBE / REFER sent with dialog = true: the 2xx made a dialog
    local d = self:dialog()
    if d then res.dialog = require("luasip.dialog").init(d) end
  end
  return res
end

-- agent:request{ method=, uri=, headers=, body=, content_type=, timeout=,
--   on_provisional = fn(res, tx) } -> response | nil, err, code [, response]
function agent_methods.request(self, opts)
  check_agent(self, "luasip.agent:request")
  if type(opts) ~= "table" then error("luasip.agent:request: options table expected", 2) end
  dispatcher.current("luasip.agent:request")
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    error("luasip.agent:request: timeout must be a positive number", 2)
  end
  if opts.on_provisional ~= nil and type(opts.on_provisional) ~= "function" then
    error("luasip.agent:request: on_provisional must be a function", 2)
  end
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.method = norm_method(opts.method, "luasip.agent:request")
  local tx, err, code = self:send(o)
  if not tx then return nil, err, code end
  tx._on_provisional = opts.on_provisional
  if opts.on_sent then opts.on_sent(tx) end
  return tx:wait(opts.timeout)
end

-- req:reply(status [, reason] [, opts]): opts.reliable = true sends a 101-199 reliably
-- (RFC 3262) and waits for its PRACK: -> prack | nil, "timeout" | nil, "cancelled"
local c_reply = req_methods.reply
function req_methods.reply(self, status, reason, opts)
  local o = type(reason) == "table" and reason or opts
  if not (type(o) == "table" and o.reliable) then return c_reply(self, status, reason, opts) end
  dispatcher.current("luasip.request:reply")
  local slot = dispatcher.new_slot("luasip.request:reply")
  self._prack_slot = slot
  local ok, err, code = c_reply(self, status, reason, opts)
  if not ok then
    self._prack_slot = nil
    return nil, err, code
  end
  local prack, perr, pcode = dispatcher.wait(slot, o.timeout)
  self._prack_slot = nil
  return prack, perr, pcode
end

dispatcher.events.prack = function(inv, prack)
  if inv and inv._prack_slot then dispatcher.fill(inv._prack_slot, prack) end
end

dispatcher.events.request_closed = function(req)
  for _, k in ipairs{ "_ack_slot", "_prack_slot" } do
    if req[k] then dispatcher.fill(req[k], nil, "agent closed", "closed") end
  end
end

dispatcher.events.prack_timeout = function(inv)
  if inv and inv._prack_slot then dispatcher.fill(inv._prack_slot, nil, "timeout", "timeout") end
end

-- tx:dialog() -> the transaction's dialog (early or confirmed), ready for use
local c_tx_dialog = tx_methods.dialog
function tx_methods.dialog(self)
  local d = c_tx_dialog(self)
  if d then require("luasip.dialog").init(d) end
  return d
end

-- req:wait_ack([timeout]) -> ack | nil, "timeout" | nil, "terminated"
function req_methods.wait_ack(self, timeout)
  if self._ack then return self._ack end
  if self._ack_timeout then return nil, "timeout", "timeout" end
  local slot = dispatcher.new_slot("luasip.request:wait_ack")
  self._ack_slot = slot
  return dispatcher.wait(slot, timeout)
end

-- req:on_cancel(fn) -> previous: fn(req) runs when a CANCEL ends this INVITE
function req_methods.on_cancel(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.request:on_cancel: function expected", 2)
  end
  local old = self._on_cancel
  self._on_cancel = fn
  return old
end

-- registrar and location (lua/luasip/registrar.lua) ---------------------------------
-- registrar{...} -> handler, location;  location{ store = } -> location;
-- store.memory{...} -> store (DESIGN D10: the embedded default store)
local registrar = require "luasip.registrar"
local location = require "luasip.location"
local memory_store = require "luasip.store.memory"
sip.registrar = registrar.new
sip.location = location.new
sip.store = { memory = memory_store.new,
  redis = function(...) return require("luasip.store.redis").new(...) end }
sip.redis = function(...) return require("luasip.redis").connect(...) end
-- end of registrar and location -------------------------------------------------------

-- digest authentication (lua/luasip/auth.lua) -----------------------------------------
-- auth.check(req, opts) -> user | nil, status, why;  auth.authorizer{...} -> registrar
-- authorize hook;  auth.credentials / auth.response / auth.parse.  Loading it adds the
-- auth = {username =, password = | ha1 =} option to agent:request and agent:invite.
sip.auth = require "luasip.auth"
-- end of digest authentication --------------------------------------------------------

-- B2BUA (lua/luasip/b2bua.lua) -------------------------------------------------------
-- b2bua(req, targets [, opts]) -> a_dialog, b_dialog | nil, err, code [, response]:
-- bridges an incoming INVITE to an outgoing one and relays the dialogs' requests
sip.b2bua = require("luasip.b2bua").b2bua
-- end of B2BUA ------------------------------------------------------------------------

-- SDP (lua/luasip/sdp.lua) -------------------------------------------------------------
-- sdp.parse(str) -> table | nil, err;  sdp.build(table) -> str;  sdp.answer(offer, caps)
-- -> answer | nil, err, code;  sdp.hold / unhold / bump;  sdp.codecs;  sdp.attribute
sip.sdp = require "luasip.sdp"
-- end of SDP ---------------------------------------------------------------------------

-- events, publications and presence (lua/luasip/events.lua, publications.lua, pidf.lua) -
-- events{...} -> SUBSCRIBE handler, notifier (RFC 6665);  publications{...} -> PUBLISH
-- handler, publications (RFC 3903);  pidf.build / parse / merge (RFC 3863).  Loading them
-- adds agent:subscribe{...} -> subscription and agent:publish{...} -> publication.
sip.events = require("luasip.events").new
sip.publications = require("luasip.publications").new
sip.pidf = require "luasip.pidf"
-- end of events, publications and presence ------------------------------------------

-- REFER (lua/luasip/refer.lua) --------------------------------------------------------
-- refer.accept(req [, opts]) -> subscription | nil, err, code;  refer.handler(fn [, opts])
-- -> REFER handler;  refer.parse_refer_to / parse_replaces / replaces (RFC 3515, 3891,
-- 4488).  Loading it adds dialog:refer(target [, opts]) and agent:refer{...} -> final
-- status, sipfrag line | nil, err, code.
sip.refer = require "luasip.refer"
-- end of REFER ------------------------------------------------------------------------

return sip
