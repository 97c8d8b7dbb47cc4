-- bob on the public side of spec/nat_spec.lua: calls alice through examples/pbx.lua
-- (digest as bob), then hangs up.  Output: CALL <status> / BYE sent | <error code>.
-- Usage: lua nat_caller.lua HOST PBX_PORT PASSWORD
local sip = require "luasip"

local host, port, password = arg[1], arg[2], arg[3]
local function say(...) io.stdout:write(table.concat({ ... }, " "), "\n") io.stdout:flush() end
local bob = assert(sip.agent{ listen = { "sip:" .. host .. ":0" } })
sip.spawn(function()
  local d, res_or_err, code = bob:invite{ uri = "sip:alice@" .. host .. ":" .. port,
    to = "<sip:alice@" .. host .. ">", from = "<sip:bob@" .. host .. ">", timeout = 15,
    auth = { username = "bob", password = password } }
  say("CALL", tostring(d and res_or_err.status or code))
  if not d then os.exit(1) end
  local ok, _, bcode = d:bye()
  say("BYE", ok and "sent" or tostring(bcode))
  os.exit(0)
end)
sip.spawn(function() sip.sleep(40) say("TIMEOUT") os.exit(3) end)
sip.run()
