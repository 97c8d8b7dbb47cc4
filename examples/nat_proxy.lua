#!/usr/bin/env lua
--[[ nat_proxy.lua — a registrar and record-routing proxy that anchors the media of every
  call in rtpengine, as a Kamailio script does with rtpengine_offer / rtpengine_answer /
  rtpengine_delete: phones behind NAT then send RTP to rtpengine, which relays it.
  The INVITE's SDP goes through `offer`, the SDP of each answer (18x, 2xx) through
  `answer`, the session is deleted on BYE and when the call fails; re-INVITEs and
  UPDATEs in either direction are offered and answered the same way.  With several rtpengines the commands
  fail over from one to the next; a call stays on the one that took its offer.
  When no rtpengine answers, calls fail 503 ($RTPENGINE_ON_FAILURE=pass: they go
  through with their SDP unchanged).  No authentication: put it behind examples/pbx.lua's
  rules before exposing it.
Usage: lua examples/nat_proxy.lua [host:port] [rtpengine-host:port ...]
  (default 127.0.0.1:5060, and rtpengine's ng port 127.0.0.1:2223)
]]
local sip = require "luasip"

local hostport = arg and arg[1] or "127.0.0.1:5060"
local servers = {}
for i = 2, arg and #arg or 0 do servers[#servers + 1] = arg[i] end
if #servers == 0 then servers[1] = "127.0.0.1:2223" end

-- the flags of a typical NAT set-up: no ICE towards plain phones, rtpengine's address in
-- o= and c=, plain RTP/AVP
local FLAGS = "ICE=remove replace-origin replace-session-connection RTP/AVP"
local rtp = sip.rtpengine{ servers = servers, offer = FLAGS, answer = FLAGS,
  on_failure = os.getenv("RTPENGINE_ON_FAILURE") or "fail" }

local app = assert(sip.agent{ listen = { "sip:" .. hostport }, in_dialog = "handler",
  user_agent = "luasip-nat-proxy" })
local registrar, location = sip.registrar{}
app:on("REGISTER", registrar)

-- in-dialog requests are relayed only along a Record-Route we put in
local function routed(req)
  if req:loose_route() then return true end
  req:reply(403, "Not Routed Here")
  return false
end

app:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)

app:on("BYE", function(req)
  if not routed(req) then return end
  local ok, err = rtp:delete(req)
  if not ok then sip.log("warn", "rtpengine delete: " .. tostring(err)) end
  req:proxy(req.uri)
end)

-- an UPDATE may carry a new offer: through rtpengine like a re-INVITE
app:on("UPDATE", function(req) if routed(req) then rtp:proxy(req, req.uri) end end)

for _, method in ipairs{ "INFO", "MESSAGE", "NOTIFY", "REFER", "PRACK" } do
  app:on(method, function(req)
    if req.to_tag then
      if routed(req) then req:proxy(req.uri) end
      return
    end
    local targets = location:lookup(req.uri)
    if #targets == 0 then return req:reply(404) end
    req:proxy(targets)
  end)
end

app:on("OPTIONS", function(req)
  if req.to_tag and routed(req) then return req:proxy(req.uri) end
  req:reply(200)
end)

app:on("INVITE", function(req)
  if req.to_tag then                       -- a re-INVITE: its offer is relayed too
    if routed(req) then rtp:proxy(req, req.uri) end
    return
  end
  local targets = location:lookup(req.uri)
  if #targets == 0 then return req:reply(404) end
  local res, err = rtp:proxy(req, targets, { record_route = true })
  sip.log("info", ("call %s -> %s: %s"):format(req.from.uri, req.uri,
    res and tostring(res.status) or tostring(err)))
end)

print(("nat_proxy on %s, rtpengine %s"):format(hostport, table.concat(servers, ", ")))
sip.run()
