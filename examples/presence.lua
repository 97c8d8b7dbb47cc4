#!/usr/bin/env lua
--[[ presence.lua — a presence server: registrar, event state publication (PUBLISH,
  RFC 3903) and subscriptions (SUBSCRIBE/NOTIFY, RFC 6665) with PIDF documents (RFC 3863).
  Users are sip:user@host.  Watchers SUBSCRIBE to a user (Event: presence) and get a
  NOTIFY at once and on every change: the user is "open" while registered and "closed"
  once the last registration expires or is removed; what the user PUBLISHes (until it
  expires or is removed) wins over what the registration says.  No open relay: a
  SUBSCRIBE whose Contact (where the NOTIFYs go) is not the address it came from is
  answered 403 (examples/own_contact.lua).
Usage: lua examples/presence.lua [host:port]     (default 127.0.0.1:5060)
  MIN_EXPIRES=n  the shortest registration, publication and subscription (default 60 s)
]]
local sip = require "luasip"

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local own_contact = assert(loadfile(here .. "/own_contact.lua"))()
local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport
local min_expires = tonumber(os.getenv("MIN_EXPIRES") or "") or 60

local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-presence" })

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local function aor(user) return "sip:" .. user .. "@" .. host end
local function resource(req) return req.ruri.user and aor(req.ruri.user) end

local registrar, location = sip.registrar{ min_expires = min_expires }
local publications

-- a user's presence now: what they published, else open while registered
local function state(user_aor)
  local body, ctype = publications:state(user_aor)
  if body then return body, ctype end
  local contacts = location:lookup(user_aor) or {}
  return sip.pidf.build{ entity = user_aor, status = #contacts > 0 and "open" or "closed",
    contact = contacts[1] and contacts[1].uri }, sip.pidf.content_type
end

local on_subscribe, presence = sip.events{ package = "presence", min_expires = min_expires,
  resource = resource, state = state, authorize = own_contact }      -- false: 403

-- tells the watchers when a user's presence has changed
local last = {}
local function changed(user_aor)
  local body = state(user_aor)
  if body == last[user_aor] then return end
  last[user_aor] = body
  local n = presence:notify(user_aor)
  log("presence", user_aor, sip.pidf.parse(body).status or "?", "->", n, "watcher(s)")
end

local on_publish
on_publish, publications = sip.publications{ package = "presence", min_expires = min_expires,
  resource = resource, on_change = changed }

-- one timer per user, at the next expiry of one of their registrations
local timers = {}
local function watch(user_aor)
  if timers[user_aor] then timers[user_aor]:cancel() end
  timers[user_aor] = nil
  local soonest
  for _, b in ipairs(location:lookup(user_aor) or {}) do
    if not soonest or b.expires < soonest then soonest = b.expires end
  end
  if soonest then
    timers[user_aor] = sip.timer(soonest + 0.1, function()
      changed(user_aor)
      watch(user_aor)
    end)
  end
end

app:on("REGISTER", function(req)
  registrar(req)
  local user = req.to.uri:match("^sips?:([^@;:]+)@")
  if req:answered() ~= 200 or not user then return end
  changed(aor(user))
  watch(aor(user))
end)
app:on("SUBSCRIBE", function(req)
  log("SUBSCRIBE", req.from.uri, "->", req.uri, "expires", tostring(req.expires))
  on_subscribe(req)
end)
app:on("PUBLISH", on_publish)
app:on("OPTIONS", function(req) req:reply(200, { headers = { Allow = app:allow() } }) end)

log("luasip presence server listening on", app:contact(), "users sip:user@" .. host)
sip.run()
