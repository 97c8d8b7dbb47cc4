#!/usr/bin/env lua
--[[ click_to_call.lua — click-to-call by transfer (RFC 3515): calls A, and once A answers
  asks A (REFER) to call B; prints each report A sends back (NOTIFY with message/sipfrag:
  "100 Trying", "180 Ringing", ...), then hangs up on A after the final one.  Exits 0 when
  A reports that B answered (2xx), 1 otherwise.
Usage: lua examples/click_to_call.lua [host:port] A_uri B_uri
       (default 127.0.0.1:5060; e.g. sip:alice@127.0.0.1:5070 sip:bob@127.0.0.1:5080)
]]
local sip = require "luasip"

local args = { ... }
local hostport = "127.0.0.1:5060"
if #args == 3 then hostport = table.remove(args, 1) end
local a_uri, b_uri = args[1], args[2]
if not (a_uri and b_uri and a_uri:match("^sips?:") and b_uri:match("^sips?:")) then
  io.stderr:write("usage: lua examples/click_to_call.lua [host:port] A_uri B_uri\n")
  os.exit(2)
end

local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-c2c" })

local function say(...)
  io.stdout:write(table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

-- we bring no media: an inactive stream, so A's phone does not wait for our audio
local host = app:transports()[1].host:gsub("[%[%]]", "")
local ip = (host:find(":") and "IP6 " or "IP4 ") .. host
local SDP = table.concat({ "v=0", "o=luasip-c2c 1 1 IN " .. ip, "s=click-to-call",
  "c=IN " .. ip, "t=0 0", "m=audio 9 RTP/AVP 0", "a=inactive", "" }, "\r\n")

local ok = false
sip.spawn(function()
  say("calling A", a_uri)
  local call, res, code = app:invite{ uri = a_uri, body = SDP, timeout = 60,
    from = app:uri("click-to-call"),
    on_provisional = function(r) say("A:", r.status, r.reason) end }
  if not call then
    say("A did not answer:", res, tostring(code))
    return sip.stop()
  end
  say("A answered:", res.status, res.reason)

  say("asking A to call B", b_uri)
  local status, line, why = call:refer(b_uri, { timeout = 90,
    on_progress = function(st, reason) say("progress:", st, reason) end })
  if status then
    say("final:", line)
    ok = status >= 200 and status < 300
  else
    say("transfer failed:", line, tostring(why))
  end

  call:bye()
  say(ok and "B is connected to A" or "no call between A and B")
  sip.stop()
end)

sip.run()
app:close()
os.exit(ok and 0 or 1)
