-- bob on the public side of spec/nat_spec.lua: calls alice through examples/pbx.lua
-- (digest as bob), then hangs up.  Output: CALL <status> / BYE sent | <error code>.
-- With "sdp": the INVITE carries an audio offer (PCMU), for phones that want one.
-- Usage: lua nat_caller.lua HOST PBX_PORT PASSWORD [sdp]
local sip = require "luasip"

local host, port, password, sdp = arg[1], arg[2], arg[3], arg[4] == "sdp"
local function say(...) io.stdout:write(table.concat({ ... }, " "), "\n") io.stdout:flush() end
local bob = assert(sip.agent{ listen = { "sip:" .. host .. ":0" } })
sip.spawn(function()
  local d, res_or_err, code = bob:invite{ uri = "sip:alice@" .. host .. ":" .. port,
    to = "<sip:alice@" .. host .. ">", from = "<sip:bob@" .. host .. ">", timeout = 15,
    auth = { username = "bob", password = password },
    body = sdp and table.concat({ "v=0", "o=bob 1 1 IN IP4 " .. host, "s=-",
      "c=IN IP4 " .. host, "t=0 0", "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000",
      "a=sendrecv", "" }, "\r\n") or nil, content_type = sdp and "application/sdp" or nil }
  say("CALL", tostring(d and res_or_err.status or code))
  if not d then os.exit(1) end
  local ok, _, bcode = d:bye()
  say("BYE", ok and "sent" or tostring(bcode))
  os.exit(0)
end)
sip.spawn(function() sip.sleep(40) say("TIMEOUT") os.exit(3) end)
sip.run()
