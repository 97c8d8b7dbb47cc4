#!/usr/bin/env lua
--[[ chat.lua — instant messaging (MESSAGE, RFC 3428 page mode) between the users of a
  registrar.  Users are sip:user@host.  A MESSAGE for a user goes to every contact they
  have registered, with its body as it is (text/plain, message/cpim, application/json...),
  and is answered 200 once a contact took it.  For a user with no contact online it is
  kept and answered 202 Accepted, then delivered (with its Date) when they next register.
  No open relay: a REGISTER may bind only the address it came from (examples/own_contact.lua;
  else 403), and a MESSAGE for another domain is answered 403.
Usage: lua examples/chat.lua [host:port]     (default 127.0.0.1:5060)
  MIN_EXPIRES=n  the shortest registration (default 60 s)
]]
local sip = require "luasip"

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local own_contact = assert(loadfile(here .. "/own_contact.lua"))()
local hostport = arg and arg[1] or "127.0.0.1:5060"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or hostport

local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-chat" })
local registrar, location = sip.registrar{
  min_expires = tonumber(os.getenv("MIN_EXPIRES") or "") or 60,
  authorize = function(req) return own_contact(req) or nil end }     -- else 403
local inbox = sip.store.memory{}   -- messages kept for offline users (sip.store.redis to share)

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local function aor(user) return "sip:" .. user .. "@" .. host end

-- sends msg to every contact of user at once -> how many took it (2xx)
local function deliver(user, msg)
  local txs = {}
  for _, t in ipairs(location:lookup(aor(user)) or {}) do
    txs[#txs + 1] = app:send{ method = "MESSAGE", uri = t.uri, from = msg.from,
      to = "<" .. aor(user) .. ">", body = msg.body, content_type = msg.content_type,
      headers = { Date = msg.date } }
  end
  local n = 0
  for _, tx in ipairs(txs) do
    if tx:wait(10) then n = n + 1 end
  end
  return n
end

app:on("MESSAGE", function(req)
  local user = req.ruri.user
  if not user then return req:reply(404, "No Such User") end
  if req.ruri.host:gsub("[%[%]]", ""):lower() ~= host:lower() then return req:reply(403, "Relaying Denied") end
  local msg = { from = "<" .. req.from.uri .. ">", body = req.body or "",
    content_type = req.content_type or "text/plain",
    date = req:header("Date") or os.date("!%a, %d %b %Y %H:%M:%S GMT") }
  local n = deliver(user, msg)
  log("MESSAGE", req.from.uri, "->", user, msg.content_type, n > 0 and
    ("delivered to " .. n .. " contact(s)") or "kept")
  if n > 0 then return req:reply(200) end
  inbox:update("inbox:" .. aor(user), function(list)
    list = list or {}
    list[#list + 1] = msg
    return list
  end)
  req:reply(202, "Accepted")
end)

-- a user registers: 200 first, then what was kept for them
app:on("REGISTER", function(req)
  registrar(req)
  local user = req.to.uri:match("^sips?:([^@;:]+)@")
  if req:answered() ~= 200 or not user then return end
  local key = "inbox:" .. aor(user)
  local waiting = inbox:get(key)
  if not waiting or #(location:lookup(aor(user)) or {}) == 0 then return end
  inbox:del(key)
  local kept = {}
  for _, msg in ipairs(waiting) do
    if deliver(user, msg) == 0 then kept[#kept + 1] = msg end
  end
  log("inbox of", user, #waiting - #kept, "delivered,", #kept, "kept")
  if #kept > 0 then
    inbox:update(key, function(list)
      for _, m in ipairs(list or {}) do kept[#kept + 1] = m end
      return kept
    end)
  end
end)
app:on("OPTIONS", function(req) req:reply(200, { headers = { Allow = app:allow() } }) end)

log("luasip chat server listening on", app:contact(), "users sip:user@" .. host)
sip.run()
