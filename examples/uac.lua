#!/usr/bin/env lua
--[[ uac.lua — a SIP client (UAC): sends each SIP method to a target, prints the answers.
  OPTIONS; MESSAGE (text); INVITE with an SDP offer (prints provisionals), then BYE in the
  dialog built from the 200; REGISTER (our Contact, Expires 3600); SUBSCRIBE and PUBLISH
  (presence, PIDF); NOTIFY; REFER; INFO; UPDATE; PRACK; BYE.  Exits 0 when every request
  got a final response from the target.  Listens on 127.0.0.1 (::1), OS-chosen port.
Usage: lua examples/uac.lua [sip:user@host:port | host:port] [METHOD...]
       (default sip:127.0.0.1:5060, every method above)
]]
local sip = require "luasip"

local target = arg[1] or "sip:127.0.0.1:5060"
if not target:match("^sips?:") then target = "sip:" .. target end
local methods = { select(2, ...) }      -- the script's arguments after the target
if #methods == 0 then
  methods = { "OPTIONS", "MESSAGE", "INVITE", "REGISTER", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "REFER", "INFO", "UPDATE", "PRACK", "BYE" }
end
for i, m in ipairs(methods) do
  methods[i] = m:upper()
  assert(m:match("^%a+$"), "usage: lua examples/uac.lua [sip:user@host:port] [METHOD...]")
end
local v6 = target:match("^sips?:[^@]*@?%[") ~= nil
local app = assert(sip.agent{ listen = { v6 and "sip:[::1]:0" or "sip:127.0.0.1:0" },
  user_agent = "luasip-uac" })
local me = app:uri("uac")
local host = app:transports()[1].host

local ip = (v6 and "IP6 " or "IP4 ") .. host:gsub("[%[%]]", "")
local SDP = table.concat({ "v=0", "o=luasip 1 1 IN " .. ip, "s=luasip", "c=IN " .. ip,
  "t=0 0", "m=audio 40002 RTP/AVP 0 8", "a=rtpmap:0 PCMU/8000", "a=rtpmap:8 PCMA/8000",
  "a=sendrecv", "" }, "\r\n")

local PIDF = '<?xml version="1.0" encoding="UTF-8"?>\n'
  .. '<presence xmlns="urn:ietf:params:xml:ns:pidf" entity="' .. me .. '">\n'
  .. '  <tuple id="t1"><status><basic>open</basic></status></tuple>\n</presence>\n'

-- what each method carries (method names not listed here go out bare)
local REQUESTS = {
  MESSAGE = { body = "Hello from luasip", content_type = "text/plain" },
  INVITE = { body = SDP, content_type = "application/sdp" },
  REGISTER = { headers = { Contact = "<" .. me .. ">", Expires = "3600" } },
  SUBSCRIBE = { headers = { Event = "presence", Accept = "application/pidf+xml",
    Expires = "600" } },
  NOTIFY = { body = PIDF, content_type = "application/pidf+xml",
    headers = { Event = "presence", ["Subscription-State"] = "active;expires=600" } },
  PUBLISH = { headers = { Event = "presence", Expires = "3600" }, body = PIDF,
    content_type = "application/pidf+xml" },
  REFER = { headers = { ["Refer-To"] = "<sip:alice@" .. host .. ">" } },
  INFO = { body = "Signal=5\r\nDuration=160\r\n",
    content_type = "application/dtmf-relay" },
}
local SHOW = { "Allow", "Accept", "Supported", "Contact", "Expires", "SIP-ETag" }

local function show(method, res, err, extra)
  if not res then return print(method .. " failed: " .. tostring(err)) end
  print(("%s %d %s%s"):format(method, res.status, res.reason, extra or ""))
  for _, h in ipairs(SHOW) do
    local v = res:headers(h)
    if #v > 0 then print("    " .. h .. ": " .. table.concat(v, ", ")) end
  end
  if res.body then print(("    %d bytes of %s"):format(#res.body, res.content_type)) end
end

-- sends one request; true when a final response came back from the peer (a response
-- without a source was made by our own stack: transport error or timeout)
local function send(method, opts, label)
  opts.method, opts.uri, opts.timeout = method, opts.uri or target, 32
  opts.from = opts.from or ("<" .. me .. ">")
  local res, err, _, failed = app:request(opts)
  local r = res or failed
  if r and not r.source then r, err = nil, err .. " (local)" end
  show(label or method, r, err)
  return r ~= nil, res
end

local function invite()
  local opts = REQUESTS.INVITE
  opts.on_provisional = function(res) show("INVITE", res, nil, " (provisional)") end
  local got, res = send("INVITE", opts)
  if not res then return got end
  -- the core sent the ACK; hang up in the dialog the 200 created
  local contact = res.contact[1]
  local bye_ok = send("BYE", { uri = contact and contact.uri or target, headers = {
    ["Call-ID"] = res.call_id, From = res.from.value, To = res.to.value,
    CSeq = (res.cseq + 1) .. " BYE" } }, "BYE (in dialog)")
  return got and bye_ok
end

local failures, done = 0, false
sip.spawn(function()
  print("luasip uac " .. me .. " -> " .. target)
  for _, m in ipairs(methods) do
    local got
    if m == "INVITE" then got = invite() else got = send(m, REQUESTS[m] or {}) end
    if not got then failures = failures + 1 end
  end
  done = true
  sip.stop()
end)
if not done then sip.run() end        -- until the coroutine above calls stop()
app:close()
print(failures == 0 and "every request got a final response"
  or (failures .. " request(s) without a final response"))
os.exit(failures == 0 and 0 or 1)
