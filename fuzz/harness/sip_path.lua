-- The luasip side of the sip_path libFuzzer target (fuzz/harness/sip_path.c): an agent
-- on 127.0.0.1 (UDP, OS-chosen port) whose handler, for every method, reads every field
-- and header of the request, then replies, proxies to a dead loopback port or answers
-- (INVITE), chosen from the Call-ID.  Returns { port =, step = fn(ms) -> handler runs }.
-- A handler that raises (reading a field of any request must not) makes step raise,
-- which the C side reports as a finding.
local sip = require "luasip"
local methods = require "luasip.sipmethods"

local DEAD = "sip:127.0.0.1:9"      -- nothing listens: ICMP, the branch fails with 503
local HEADERS = { "Via", "From", "To", "Call-ID", "CSeq", "Contact", "Route",
  "Record-Route", "Max-Forwards", "Content-Type", "Content-Length", "Expires", "Event",
  "Subscription-State", "Refer-To", "Referred-By", "Replaces", "Require", "Supported",
  "Allow", "Session-Expires", "Min-SE", "RSeq", "RAck", "Authorization",
  "Proxy-Authorization", "WWW-Authenticate", "User-Agent", "Accept", "Subject", "X-Any",
  "v", "f", "t", "m", "i", "l", "c", "k", "o", "r", "s" }

local handled, broken = 0, nil
local log_errors = 0

-- the first error lines are shown (for the human: not findings); FUZZ_SIP_LOG=1 shows all
local verbose = os.getenv("FUZZ_SIP_LOG") == "1"
sip.set_logger(function(level, message)
  if verbose or (level == "error" and log_errors < 20) then
    log_errors = log_errors + 1
    io.stderr:write("sip_path log: ", level, " ", tostring(message):sub(1, 300), "\n")
  end
end, verbose and "debug" or "error")

local sink = 0
local function touch(v, depth)
  depth = depth or 0
  if type(v) == "table" and depth < 4 then
    for k, x in pairs(v) do touch(k, depth + 1); touch(x, depth + 1) end
  elseif type(v) == "string" then
    sink = (sink + #v) % 65536
  end
end

local function read_all(req)
  for _, f in ipairs{ "method", "uri", "ruri", "from", "to", "from_tag", "to_tag",
    "call_id", "cseq", "cseq_method", "via", "contact", "expires", "max_forwards", "body",
    "content_type", "source", "transport", "version" } do
    touch(req[f])
  end
  for _, h in ipairs(HEADERS) do
    touch(req:header(h))
    touch(req:headers(h))
  end
  touch(req:raw())
  if req.body and (req.content_type or ""):lower():find("sdp", 1, true) then
    touch(sip.sdp.parse(req.body))
  end
end

local function pick(req)
  local id, n = req.call_id or "", 0
  for i = 1, #id do n = (n + id:byte(i)) % 251 end
  return n % 3
end

local function handle(req)
  read_all(req)
  if req.method == "ACK" then return end
  local k = pick(req)
  if k == 1 then
    req:proxy(DEAD, { timeout = 1 })
  elseif k == 2 and req.method == "INVITE" then
    local answer = req.body and sip.sdp.answer(req.body, { address = "127.0.0.1",
      media = { audio = { port = 9, codecs = { "PCMU/8000", "telephone-event/8000" } } } })
    req:answer{ body = answer or nil, timeout = 0.3 }
  else
    req:reply(k == 0 and 200 or 404, nil, { headers = { ["X-Fuzz"] = tostring(sink) } })
  end
end

local function handler(req)
  handled = handled + 1
  local ok, err = xpcall(handle, debug.traceback, req)
  if not ok then broken = broken or ("the handler raised: " .. tostring(err)) end
end

local agent = assert(sip.agent{ listen = "sip:127.0.0.1:0;transport=udp", t1 = 0.02,
  overload = false, handler_timeout = { invite = 2, other = 1 } })
for _, m in ipairs(methods.list) do
  if m ~= "CANCEL" then agent:on(m, handler) end       -- the core answers CANCEL
end

local function step(ms)
  sip.step(tonumber(ms))
  if broken then error(broken, 0) end
  return handled
end

return { port = agent:transports()[1].port, step = step }
