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
  Floods: a source sending more than $PBX_FLOOD_RATE requests/s (50) is blocked for 30 s
  (loopback is exempt: the specs and benchmarks drive it from there); scanners dropped.
  Digest nonces live $PBX_NONCE_TTL seconds (300).  $PBX_DOMAIN: the users' domain and
  digest realm when it is not the host (several hosts behind one front: examples/deploy).
  Reload: the handlers are examples/pbx_app.lua; SIGHUP reloads them, calls stay up.
  Workers: $PBX_WORKERS=N runs it as N worker processes behind a stateless front on
  host:port (luasip.cluster; `make run WORKERS=2`), registrations and nonce counts in
  Redis at $PBX_REDIS (host:port or a socket path; default 127.0.0.1:6379; keys under
  $PBX_REDIS_PREFIX, default "luasip:pbx:"); $PBX_REDIS alone uses Redis in one process.
  With workers there is no TLS listener and no metrics page.
  NAT: phones on TCP/TLS are reached over the connection they registered on; with
  $PBX_NAT=1 UDP phones too are reached where their REGISTER came from (the address and
  port their NAT shows), not at their private Contact; in-dialog requests follow the
  same flows.
Usage: lua examples/pbx.lua [host:port]     (default 127.0.0.1:5060)
]]
local sip = require "luasip"

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local users = assert(loadfile(here .. "/users.lua"))()
local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport
local domain = os.getenv("PBX_DOMAIN") or host  -- users' domain and realm (several hosts)

-- PBX_WORKERS: from here on this script runs in each worker, on a port of its own
local ringing, dialogs = {}, {}        -- calls being forked, calls connected (pbx_app)
local workers = tonumber(os.getenv("PBX_WORKERS") or "")
local node = workers and workers > 0 and sip.cluster{ workers = workers,
  listen = "sip:" .. hostport, busy = function() return next(dialogs) or next(ringing) end }
local store, redis_at = nil, os.getenv("PBX_REDIS") or (node and "127.0.0.1:6379")
if redis_at then
  local rh, rp = redis_at:match("^%[?([^%]]+)%]?:(%d+)$")
  store = assert(sip.store.redis{ path = not rh and redis_at or nil, host = rh,
    port = tonumber(rp), prefix = os.getenv("PBX_REDIS_PREFIX") or "luasip:pbx:" })
end
if node then hostport = node.listen:match("^sip:(.*)$") end

local listen, tls = { "sip:" .. hostport }, nil
if not node and os.getenv("LUASIP_TLS_CERT") and os.getenv("LUASIP_TLS_KEY") then
  tls = { cert = os.getenv("LUASIP_TLS_CERT"), key = os.getenv("LUASIP_TLS_KEY"),
    ca = os.getenv("LUASIP_TLS_CA") }
  listen[2] = "sips:" .. hostport:match("^(.*):%d+$") .. ":"
    .. (os.getenv("LUASIP_TLS_PORT") or "5061")
end
local app = assert(sip.agent{ listen = listen, tls = tls, user_agent = "luasip-pbx",
  in_dialog = "handler", flood = { rate = tonumber(os.getenv("PBX_FLOOD_RATE") or "") or 50,
    exempt = { "127.0.0.0/8", "::1" } } })
if not node and os.getenv("LUASIP_METRICS") then
  assert(sip.metrics{ listen = os.getenv("LUASIP_METRICS") })
end

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local ivr = assert(loadfile(here .. "/ivr_menu.lua"))(here, log)

-- The handlers live in examples/pbx_app.lua, reloaded on SIGHUP (kill -HUP <pid>) while
-- calls go on; what must outlive a reload (registrations, calls being forked) is here.
local nat = os.getenv("PBX_NAT") == "1"
local registrar, location = sip.registrar{
  realm = domain, store = store, nat = nat,
  authorize = sip.auth.authorizer{ realm = domain, password = function(u) return users[u] end,
    failures = true,                  -- password guessing refused (5 failures per user)
    store = store, nonce_ttl = tonumber(os.getenv("PBX_NONCE_TTL") or "") },
}
local vm = assert(sip.agent{ listen = { "sip:" .. host .. ":0" }, user_agent = "luasip-pbx" })
package.path = here .. "/?.lua;" .. package.path
assert(app:load("pbx_app", { vm = vm, vm_uri = "@" .. host .. ":" .. vm:transports()[1].port,
  host = domain, users = users, registrar = registrar, location = location, ringing = ringing,
  dialogs = dialogs, store = store,
  ivr = ivr, log = log, ring = tonumber(os.getenv("PBX_VOICEMAIL_AFTER") or "") or 20,
  nonce_ttl = tonumber(os.getenv("PBX_NONCE_TTL") or ""), nat = nat }))
sip.on_signal("HUP", function()
  local ok, err = sip.reload("pbx_app")
  log(ok and "reloaded pbx_app" or ("reload of pbx_app failed, old handlers kept: " .. err))
end)

for _, t in ipairs(app:transports()) do
  if t.transport == "tls" then log("TLS on port", t.port) end
end
log("luasip pbx listening on", app:contact(), "realm", domain, "voicemail on", vm:contact(),
  node and ("worker " .. node.index .. "/" .. node.workers .. " behind " .. node.front) or "")
sip.run{ shutdown_timeout = node and node.drain or nil }
