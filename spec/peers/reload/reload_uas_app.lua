-- The application of spec/peers/reload/uas.lua: answers every INVITE, and tells for each
-- BYE which generation of this module answered the call and which one is loaded now.
local shared = require "reload_uas_state"

shared.generation = shared.generation + 1
local generation = shared.generation

local SDP = table.concat({ "v=0", "o=luasip 1 1 IN IP4 127.0.0.1", "s=-",
  "c=IN IP4 127.0.0.1", "t=0 0", "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "" },
  "\r\n")

local function say(...)
  io.stdout:write(table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

return function(agent)
  agent:on("INVITE", function(req)
    local d = req:answer{ body = SDP,
      headers = { ["X-Generation"] = tostring(generation) } }
    if not d then return say("answer failed") end
    say("call", generation)
    d:on("BYE", function() say("bye", generation, shared.generation) end)
  end)
end
