-- The public side of spec/nat_spec.lua (run in its own network namespace): a registrar
-- (nat = true when arg[3] is "nat") and a record-routing proxy on host:5060, plus a caller
-- that, once alice registered, calls her through the proxy and hangs up.
-- Output: READY / REGISTERED <transport> <address>:<port> / CALL <status> / BYE sent | <error code>.
-- Usage: lua nat_proxy.lua HOST PORT [nat]
local sip = require "luasip"
local location = require "luasip.location"

local host, port, nat = arg[1], arg[2], arg[3] == "nat"
local function say(...) io.stdout:write(table.concat({ ... }, " "), "\n") io.stdout:flush() end
local proxy = assert(sip.agent{ listen = { "sip:" .. host .. ":" .. port }, in_dialog = "handler" })
local caller = assert(sip.agent{ listen = { "sip:" .. host .. ":0" } })
local reg, loc = sip.registrar{ nat = nat }
local AOR = "sip:alice@" .. host

local function call()
  local d, res_or_err, code = caller:invite{ uri = "sip:alice@" .. host .. ":" .. port,
    to = "<" .. AOR .. ">", from = "<sip:bob@" .. host .. ">", timeout = 10 }
  say("CALL", tostring(d and res_or_err.status or code))
  if not d then os.exit(1) end
  local ok, _, bcode = d:bye()
  say("BYE", ok and "sent" or tostring(bcode))
  os.exit(0)
end

proxy:on("REGISTER", function(req)
  reg(req)
  local s = req.source
  say("REGISTERED", s.transport, s.address .. ":" .. s.port)
  if #(loc:lookup(AOR) or {}) > 0 then sip.spawn(call) end
end)
-- a new call: to alice's bindings, each over its flow, with a flow token in our
-- Record-Route so that the caller's in-dialog requests find the flow again
proxy:on("INVITE", function(req)
  if req.to_tag then
    local flow = location.request_flow(req)
    return req:proxy(flow and { { uri = req.uri, flow = flow } } or req.uri)
  end
  local targets = loc:lookup(AOR, proxy)
  if #targets == 0 then return req:reply(480) end
  req:proxy(targets, { record_route = targets[1].flow and location.flow_token(targets[1].flow)
    or true })
end)
proxy:on("ACK", function(ack) ack:forward(nil, location.request_flow(ack)) end)
proxy:on("BYE", function(req)
  local flow = location.request_flow(req)
  req:proxy(flow and { { uri = req.uri, flow = flow } } or req.uri)
end)
sip.spawn(function() sip.sleep(40) say("TIMEOUT") os.exit(3) end)
say("READY")
sip.run()
