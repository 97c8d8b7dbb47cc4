#!/usr/bin/env lua
--[[ pbx.lua — a small PBX: registrar with digest authentication, and a record-routing
  proxy that calls every registered contact of a user at once.
  REGISTER needs alice/bob/carol's password (examples/users.lua); INVITE and MESSAGE
  from them are authenticated (407) and sent to the callee's contacts; 404 for unknown
  users, 480 for MESSAGE to users not registered, 403 for other domains (no open relay);
  OPTIONS to the PBX itself is answered; in-dialog requests follow the Record-Route.
  Voicemail: a call to a user who is offline, or who does not answer within
  $PBX_VOICEMAIL_AFTER seconds (20), is answered with a beep and recorded into
  $IVR_RECORDINGS/<user>/ (default recordings/); sip:ivr@<pbx> (anyone) reaches the menu
  of examples/ivr.lua.  Prompts: `make prompts` (build/prompts, or $IVR_PROMPTS).
  TLS: with $LUASIP_TLS_CERT and $LUASIP_TLS_KEY (PEM files) it also listens on
  sips:<host>:5061 ($LUASIP_TLS_PORT; $LUASIP_TLS_CA: the CAs its TLS peers are checked
  against, default the system's), with the same users and rules.
  Metrics: $LUASIP_METRICS=host:port serves the Prometheus page at /metrics there.
Usage: lua examples/pbx.lua [host:port]     (default 127.0.0.1:5060)
]]
local sip = require "luasip"

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local users = assert(loadfile(here .. "/users.lua"))()
local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport

local listen, tls = { "sip:" .. hostport }, nil
if os.getenv("LUASIP_TLS_CERT") and os.getenv("LUASIP_TLS_KEY") then
  tls = { cert = os.getenv("LUASIP_TLS_CERT"), key = os.getenv("LUASIP_TLS_KEY"),
    ca = os.getenv("LUASIP_TLS_CA") }
  listen[2] = "sips:" .. hostport:match("^(.*):%d+$") .. ":"
    .. (os.getenv("LUASIP_TLS_PORT") or "5061")
end
local app = assert(sip.agent{ listen = listen, tls = tls, user_agent = "luasip-pbx",
  in_dialog = "handler" })
if os.getenv("LUASIP_METRICS") then
  assert(sip.metrics{ listen = os.getenv("LUASIP_METRICS") })
end

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local ivr = assert(loadfile(here .. "/ivr_menu.lua"))(here, log)
local ring = tonumber(os.getenv("PBX_VOICEMAIL_AFTER") or "") or 20

-- A registered user's voicemail answers on an agent of its own: the proxy forks each call
-- to it beside the user's phones; it answers after `ring` seconds unless a phone answered
-- (the proxy then cancels it), or gives the phones' answer when all of them said no.
local ringing = {}   -- Call-ID -> { user =, phones =, failed =, status =, reason = } (forking)
local vm = assert(sip.agent{ listen = { "sip:" .. host .. ":0" }, user_agent = "luasip-pbx" })
local vm_uri = "@" .. host .. ":" .. vm:transports()[1].port
vm:on("INVITE", function(req)
  local c, t0 = ringing[req.call_id], sip.now()
  -- only calls the PBX is forking to that user (no way round authentication)
  if not c or c.user ~= req.ruri.user then return req:reply(403, "Not Routed Here") end
  while sip.now() - t0 < ring do                   -- looks at the phones 5 times a second
    if c.failed >= c.phones then return req:reply(c.status, c.reason) end
    local _, err = sip.sleep(0.2)
    if err == "cancelled" then return end
  end
  local call = req:answer{ media = true }
  if not call then return end
  log("voicemail for", req.ruri.user, tostring(ivr.voicemail(call, req.ruri.user)))
end)

local ours = { [host] = true, ["localhost"] = true, ["127.0.0.1"] = true }
local function password(user) return users[user] end

-- REGISTER: digest-authenticated registrar; a user registers only their own AOR
local registrar, location = sip.registrar{
  realm = host,
  authorize = sip.auth.authorizer{ realm = host, password = password },
}
app:on("REGISTER", function(req)
  registrar(req)
  log("REGISTER", req.to.uri, tostring(req:answered()))
end)

-- in-dialog requests go where their Request-URI says, but only along a route we
-- record-routed ourselves (top Route = this PBX): no open relay through To tags
local function routed_here(req) return req:loose_route() end

local function in_dialog(req)
  if req.to_tag then
    if routed_here(req) then req:proxy(req.uri) else req:reply(403, "Not Routed Here") end
    return true
  end
end

-- calls and messages between users of this PBX
local function route(req, opts)
  if in_dialog(req) then return end
  local user = sip.auth.check(req, { realm = host, password = password, proxy = true })
  if not user then return end                        -- 407 (or 400) sent by check
  if req.from.uri:match("^sips?:([^@;]+)@") ~= user then
    return req:reply(403, "From Does Not Match Credentials")
  end
  if not ours[req.ruri.host] then
    return req:reply(403, "Relaying Denied")
  end
  local callee = req.ruri.user
  if not callee or not users[callee] then return req:reply(404, "No Such User") end
  local targets = location:lookup("sip:" .. callee .. "@" .. host) or {}
  local invite = req.method == "INVITE"
  if #targets == 0 and not invite then return req:reply(480, "Temporarily Unavailable") end
  if #targets == 0 then                                 -- offline: straight to voicemail
    local call = req:answer{ media = true }
    return call and log("voicemail for", callee, tostring(ivr.voicemail(call, callee)))
  end
  log(req.method, user, "->", callee, "(" .. #targets .. " contact(s))")
  if invite then
    local c = { user = callee, phones = #targets, failed = 0 }
    ringing[req.call_id] = c
    opts.on_response = function(res)                 -- the best failure of the phones
      if res.status < 300 then return end
      c.failed = c.failed + 1
      if not c.status or res.status < c.status then c.status, c.reason = res.status, res.reason end
    end
    targets[#targets + 1] = "sip:" .. callee .. vm_uri
  end
  local res, err = req:proxy(targets, opts)
  ringing[req.call_id] = nil
  log(req.method, user, "->", callee, res and res.status or err)
end

app:on("INVITE", function(req)
  if req.to_tag or req.ruri.user ~= "ivr" or not ours[req.ruri.host] then
    return route(req, { record_route = true })
  end
  local call = req:answer{ media = true }                -- the menu, for anyone
  if call then log("ivr", call.call_id, ivr.menu(call)) end
end)
app:on("MESSAGE", function(req) route(req) end)
app:on("ACK", function(ack) if routed_here(ack) then ack:forward() end end)
for _, m in ipairs{ "BYE", "INFO", "UPDATE", "NOTIFY", "PRACK", "REFER", "SUBSCRIBE" } do
  app:on(m, function(req)
    if not in_dialog(req) then req:reply(m == "BYE" and 481 or 404) end
  end)
end

app:on("OPTIONS", function(req)
  if in_dialog(req) then return end
  if req.ruri.user and users[req.ruri.user] then return route(req) end
  req:reply(200, { headers = { Allow = app:allow(), Accept = "application/sdp, text/plain" } })
end)

for _, t in ipairs(app:transports()) do
  if t.transport == "tls" then log("TLS on port", t.port) end
end
log("luasip pbx listening on", app:contact(), "realm", host, "voicemail on", vm:contact())
sip.run()
