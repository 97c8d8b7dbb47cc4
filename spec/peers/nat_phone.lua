-- The phone behind the NAT of spec/nat_spec.lua (run in the private namespace): registers
-- alice from its private address over udp or tcp and answers the call that comes.
-- Output: REGISTER <status> / INVITED <source address> / ANSWERED /
-- ENDED <reason>.
-- Usage: lua nat_phone.lua PRIVATE_IP PROXY_HOST PROXY_PORT udp|tcp [PASSWORD]
local sip = require "luasip"

local ip, proxy, pport, transport, password = arg[1], arg[2], arg[3], arg[4], arg[5]
local function say(...) io.stdout:write(table.concat({ ... }, " "), "\n") io.stdout:flush() end
local phone = assert(sip.agent{ listen = { "sip:" .. ip .. ":0" } })
local port = phone:transports()[1].port
local aor = "sip:alice@" .. proxy

phone:on("INVITE", function(req)
  say("INVITED", req.source.address)
  local d = req:answer{}
  if not d then return end
  say("ANSWERED")
  say("ENDED", tostring(d:wait_end(20)))
end)

sip.spawn(function()
  local res, err, code = phone:request{ method = "REGISTER",
    uri = "sip:" .. proxy .. ":" .. pport .. ";transport=" .. transport,
    headers = { To = "<" .. aor .. ">", From = "<" .. aor .. ">", Expires = "300",
      Contact = "<sip:alice@" .. ip .. ":" .. port .. ";transport=" .. transport .. ">" },
    auth = password and { username = "alice", password = password } }
  say("REGISTER", tostring(res and res.status or code or err))
end)
sip.spawn(function() sip.sleep(40) say("TIMEOUT") os.exit(3) end)
sip.run()
