#!/usr/bin/env lua
--[[ uas.lua — a SIP endpoint (UAS) that answers every SIP method the way the RFCs say.
  OPTIONS 200 with Allow/Accept/Supported; MESSAGE 200 (prints the body); INVITE 180 then
  200 with an SDP answer to the offer (a reliable 183 with it first when the caller
  supports 100rel; Request-URI user "ring": rings 10 s first, so it can be cancelled;
  session timers when asked), then the call is a dialog (BYE, INFO, UPDATE, re-INVITE
  and hold in it are answered; with UAS_TRANSFERS=1 a REFER in it is carried out with
  NOTIFY progress, the call itself kept until the transferor hangs up -- off by default,
  405: anyone who calls could have it call any host, an open relay);
  INFO, UPDATE, PRACK, NOTIFY 200; REGISTER 200 echoing the
  Contacts with their expires; SUBSCRIBE 200 with Expires; PUBLISH 200 with SIP-ETag;
  REFER 202.
Usage: lua examples/uas.lua [host:port]     (default 127.0.0.1:5060; [::1]:5060 for IPv6)
]]
local sip = require "luasip"

local hostport = arg[1] or "127.0.0.1:5060"
local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-uas" })
local ALLOW = table.concat(sip.methods, ", ")
local ACCEPT = "application/sdp, text/plain, message/cpim, application/json, multipart/mixed"
local host = hostport:match("^%[?([^%]]+)%]?:%d+$") or "127.0.0.1"

local quiet = os.getenv("UAS_QUIET") == "1"     -- benchmarks: no per-request log
local transfers = os.getenv("UAS_TRANSFERS") == "1"
-- values from the network (URIs, bodies) go into the log: control bytes other than LF and
-- TAB are written as \xNN, as the core's log does, so none reaches a terminal raw
local function escape(c) return ("\\x%02x"):format(c:byte()) end
local function log(...)
  if quiet then return end
  local line = table.concat({ ... }, " "):gsub("[%z\1-\8\11-\31\127]", escape)
  io.stdout:write(os.date("%H:%M:%S "), line, "\n")
  io.stdout:flush()
end

local CAPS = { address = host, media = { audio = { port = 40000,
  codecs = { "PCMU/8000", "PCMA/8000", "telephone-event/8000" } } } }

-- our SDP: the answer to the caller's offer (RFC 3264), or an offer of our own
local function sdp_for(offer)
  if offer then return sip.sdp.answer(offer, CAPS) end
  local ip = host:find(":") and "IP6 " .. host or "IP4 " .. host
  return table.concat({
    "v=0", "o=luasip 1 1 IN " .. ip, "s=luasip", "c=IN " .. ip, "t=0 0",
    "m=audio 40000 RTP/AVP 0 8 101", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
    "a=rtpmap:101 telephone-event/8000", "a=sendrecv", "" }, "\r\n")
end

local function has_tag(req, tag)
  for _, h in ipairs{ "Supported", "Require" } do
    for _, v in ipairs(req:headers(h)) do if v:lower() == tag then return true end end
  end
end

local function accepts(list, ctype)
  for item in (list or ""):gmatch("[^,]+") do
    local t = item:match("^%s*([^;%s]+)"):lower()
    if t == "*/*" or t == ctype or t == ctype:match("^[^/]+") .. "/*" then return true end
  end
  return false
end

local function ok(req) log(req.method, req.uri); req:reply(200) end

app:on("OPTIONS", function(req)
  log("OPTIONS", req.uri, "from", req.from.uri)
  req:reply(200, { headers = { Allow = ALLOW, Accept = ACCEPT, Supported = "path" } })
end)

app:on("MESSAGE", function(req)
  log("MESSAGE from", req.from.uri, "(" .. tostring(req.content_type) .. "):", req.body or "")
  req:reply(200)
end)

app:on("INVITE", function(req)
  log("INVITE", req.uri, "from", req.from.uri)
  local accept = req:header("Accept")
  if accept and not accepts(accept, "application/sdp") then
    return req:reply(406, { headers = { Accept = "application/sdp",
      Warning = '399 luasip "only application/sdp sessions"' } })
  end
  if req.body and req.content_type ~= "application/sdp" then
    return req:reply(415, { headers = { Accept = "application/sdp" } })
  end
  local sdp, _, code = sdp_for(req.body)
  if not sdp then return req:reply(code or 488) end
  if has_tag(req, "100rel") then
    -- early media answer, sent reliably (RFC 3262); waits for the PRACK
    local prack, perr = req:reply(183, { reliable = true, body = sdp, content_type = "application/sdp" })
    if not prack then return log("183 not PRACKed: " .. tostring(perr)) end
  else
    req:reply(180)
  end
  if req.ruri.user == "ring" then
    local _, err = sip.sleep(10)
    if err == "cancelled" then return log("INVITE cancelled by the caller") end
  end
  -- session timers (RFC 4028) when the caller asks for them
  local call, err = req:answer{ body = sdp, content_type = "application/sdp",
    session_expires = req:header("Session-Expires") and 1800 or nil }
  if not call then return log("no ACK: " .. tostring(err)) end
  log("call established with", req.from.uri)
  call:on("INFO", function(r) log("INFO in call:", r.body or ""); r:reply(200) end)
  -- a transfer (RFC 3515), when enabled: call the Refer-To target and report by NOTIFY;
  -- this call stays up until the transferor hangs it up (RFC 5589 section 6)
  if transfers then
    call:on("REFER", sip.refer.handler(function(sub)
      log("REFER in call to", sub.target)
      local d, why = sub:invite(app)
      if not d then return log("transfer to", sub.target, "failed:", tostring(why)) end
      log("transferred call established with", sub.target)
      log("transferred call ended:", d:wait_end())
    end))
  end
  log("call ended:", call:wait_end())
end)

-- out of dialog (in-dialog ones go to the call; stray ones get 481 from the core)
for _, m in ipairs{ "INFO", "UPDATE", "PRACK", "NOTIFY" } do app:on(m, ok) end

app:on("REGISTER", function(req)
  local scheme = req.to.uri:match("^(%a+):")
  if scheme ~= "sip" and scheme ~= "sips" then
    return req:reply(400, "Bad To URI Scheme")
  end
  local contacts, default = {}, req.expires or 3600
  for _, c in ipairs(req.contact) do
    if not c.star then
      local e = c.expires or default
      if e > 0 then contacts[#contacts + 1] = "<" .. c.uri .. ">;expires=" .. e end
    end
  end
  log("REGISTER", req.to.uri, #contacts .. " contact(s)")
  req:reply(200, { headers = { Contact = contacts, Date = os.date("!%a, %d %b %Y %H:%M:%S GMT") } })
end)

app:on("SUBSCRIBE", function(req)
  log("SUBSCRIBE", req.uri, req:header("Event") or "")
  req:reply(200, { headers = { Expires = tostring(req.expires or 3600) } })
end)

app:on("PUBLISH", function(req)
  log("PUBLISH", req.uri, req:header("Event") or "")
  local etag = req:header("SIP-If-Match") or ("%08x"):format(math.random(0, 0x7fffffff))
  req:reply(200, { headers = { ["SIP-ETag"] = etag, Expires = tostring(req.expires or 3600) } })
end)

app:on("REFER", function(req)
  log("REFER", req.uri, "to", req:header("Refer-To") or "?")
  if not req:header("Refer-To") then return req:reply(400, "Missing Refer-To") end
  req:reply(202)
end)

log("luasip uas listening on", app:contact())
sip.run()
