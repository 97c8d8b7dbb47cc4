-- luasip.dns: the RFC 3263 targets of a SIP URI, and trying them in turn.
--
-- nta resolves every request it sends (NAPTR -> SRV -> A/AAAA on sofia's resolver) and
-- moves to the next target on a timeout or a transport error, but not on a 503 response,
-- and sofia's resolver does not read /etc/hosts. For agent:request and agent:invite to a
-- host name (no proxy, no Route) this module resolves the URI itself (core.dns_resolve,
-- csrc/resolve.c: asynchronous, the loop runs on) and sends to each target in order
-- (as the request's next hop, the Request-URI unchanged) until one answers other than
-- 503 or 408; req:proxy to one such URI gets the targets as sequential branches, each with
-- its next hop (proxy_targets; csrc/proxy.c moves on after a 503 or a 408 only). A 503
-- with Retry-After marks its target down for that long. A name listed in the hosts file
-- is used as an A/AAAA record.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

local M = {}

-- how long a resolution may take: sofia's resolver retries a silent name server after 1,
-- 2, 4, 8 and 16 s (31 s per query, not configurable in 1.12); its query runs on unseen
M.timeout = 8

local HOSTS = "/etc/hosts"
M.hosts_file = HOSTS

-- the addresses the hosts file at path gives name (in file order), or nil
function M.hosts(name, path)
  local f = io.open(path or M.hosts_file)
  if not f then return nil end
  local found = {}
  name = name:lower()
  for line in f:lines() do
    line = line:gsub("#.*", "")
    local addr, names = line:match("^%s*(%S+)%s+(.*)$")
    if addr then
      for n in names:gmatch("%S+") do
        if n:lower() == name then found[#found + 1] = addr break end
      end
    end
  end
  f:close()
  return found[1] and found or nil
end

local function numeric(host)
  return host:match("^%d+%.%d+%.%d+%.%d+$") ~= nil or host:find(":", 1, true) ~= nil
end
M.numeric = numeric

-- parse(uri) -> scheme, host (no brackets), port | nil, transport | nil; nil if not SIP
local function parse(uri)
  local scheme, rest = tostring(uri):match("^%s*<?(sips?):(.*)$")
  if not scheme then return nil end
  rest = rest:gsub("^[^@;>]*@", "")
  local host, tail = rest:match("^%[([^%]]+)%](.*)$")
  if not host then host, tail = rest:match("^([^:;>?]+)(.*)$") end
  if not host then return nil end
  local port = tonumber(tail:match("^:(%d+)") or "")
  local transport = tail:lower():match(";transport=(%w+)")
  return scheme:lower(), host, port, transport
end
M.parse = parse

dispatcher.on_event("dns_resolved", function(q)
  local slot = q and core.state(q).slot
  if slot then dispatcher.fill(slot, q:results()) end
end)

-- resolve(uri [, agent [, hosts_path]]) -> { {address=, port=, transport=}... } | nil, err,
-- "dns" (waiting call unless the host is numeric or in the hosts file)
function M.resolve(uri, agent, hosts_path)
  local scheme, host, port, transport = parse(uri)
  if not scheme then return nil, "not a SIP URI: " .. tostring(uri), "dns" end
  local tls = scheme == "sips" or transport == "tls"
  local addrs = numeric(host) and { host } or M.hosts(host, hosts_path)
  if addrs then
    local list = {}
    for i, a in ipairs(addrs) do
      list[i] = { address = a, port = port or (tls and 5061 or 5060),
        transport = tls and "tls" or transport or "udp" }
    end
    return list
  end
  local slot = dispatcher.new_slot("luasip.dns.resolve")
  local q, err, code = core.dns_resolve(tostring(uri):match("^%s*<?([^>]*)"), agent)
  if not q then return nil, err, code end
  core.state(q).slot = slot
  local list, why = dispatcher.wait(slot, M.timeout)
  if why == "timeout" then why = "no answer from the name servers" end
  if not list then return nil, ("cannot resolve %s: %s"):format(host, tostring(why)), "dns" end
  return list
end

-- the target as a next-hop URI; UDP is left implicit so that nta still moves a request
-- too large for UDP to TCP (RFC 3261 18.1.1)
local function next_hop(t)
  local a = t.address:find(":", 1, true) and "[" .. t.address .. "]" or t.address
  if t.transport == "udp" then return ("sip:%s:%d"):format(a, t.port) end
  return ("sip:%s:%d;transport=%s"):format(a, t.port, t.transport)
end

local function names_route(headers)
  if type(headers) ~= "table" then return false end
  for k, v in pairs(headers) do
    if type(k) == "string" and k:lower() == "route" then return true end
    if type(v) == "string" and v:lower():match("^%s*route%s*:") then return true end
  end
  return false
end

local unpack = table.unpack or unpack   -- luacheck: ignore 143

-- Targets that answered 503 with Retry-After (RFC 3263 4.3): "address port transport" ->
-- until when (sip.now seconds) they are skipped
M.down = {}

local function key(t) return t.address .. " " .. t.port .. " " .. t.transport end

-- busy(target, res): a 503 from target with Retry-After (RFC 3263 4.3: "120",
-- "120;duration=60", "120 (lunch)") skips it for that many seconds
function M.busy(t, res)
  local kind = type(res)
  local value = (kind == "userdata" or kind == "table") and res.status == 503
    and res:header("Retry-After")
  local n = tonumber(tostring(value or ""):match("^%s*(%d+)") or "")
  if n and n > 0 then M.down[key(t)] = core.now() + n end
end

-- usable(targets) -> the targets not marked down (all of them when every one is)
function M.usable(targets)
  local now, up = core.now(), {}
  for _, t in ipairs(targets) do
    local until_ = M.down[key(t)]
    if until_ and until_ <= now then M.down[key(t)], until_ = nil, nil end
    if not until_ then up[#up + 1] = t end
  end
  return #up > 0 and up or targets
end

-- proxy_targets(req, uri) -> { {uri=, hop=}... } (uri's RFC 3263 targets, in order, each
-- as the next hop of a branch to uri) | false (not for failover: not a sip: URI with a host
-- name, TLS, or a Route to follow) | nil, err (the name does not resolve)
function M.proxy_targets(req, uri)
  -- the usual case first, cheaply (~0.2 us, parse ~1.2): a numeric host needs no DNS
  local tail = uri:match("^sips?:[^@;>]*@[%d%.]+(.?)") or uri:match("^sips?:[%d%.]+(.?)")
  if (tail and (tail == "" or tail == ":" or tail == ";" or tail == ">"))
    or uri:find("^sips?:[^@;>]*@?%[") then
    return false
  end
  local scheme, host, _, transport = parse(uri)
  if scheme ~= "sip" or transport == "tls" or numeric(host) then return false end
  local routes = req:headers("Route") or {}
  if #routes > 1 or (#routes == 1 and (routes[1]:find(",", 1, true) or not req:loose_route()))
  then
    return false
  end
  local agent = req.agent
  local targets, err = M.resolve(uri, agent, agent and core.state(agent).dns_hosts)
  if not targets then return nil, err end
  local list = {}
  for i, t in ipairs(M.usable(targets)) do
    if t.transport == "tls" then return false end    -- nta keeps the name (RFC 5922)
    list[i] = { uri = uri, hop = next_hop(t), target = t }
  end
  return list
end

-- applies(opts) -> whether a request with these options goes through failover: a sip:
-- (not sips:, not TLS) Request-URI with a host name, no proxy, no Route header
function M.applies(opts)
  local scheme, host, _, transport = parse(type(opts.uri) == "string" and opts.uri or "")
  return scheme == "sip" and transport ~= "tls" and not numeric(host) and opts.proxy == nil
    and not names_route(opts.headers)
end

-- failover(agent, opts, fn) -> what fn(opts) returns, fn called once per target of
-- opts.uri (with opts.proxy set to it) until one answers other than 503 or 408
function M.failover(agent, opts, fn)
  local targets, err = M.resolve(opts.uri, agent, core.state(agent).dns_hosts)
  if not targets then return nil, err, 503 end
  targets = M.usable(targets)
  for _, t in ipairs(targets) do
    -- TLS checks the certificate against the name: only nta keeps it (RFC 5922)
    if t.transport == "tls" then return fn(opts) end
  end
  local last
  for _, t in ipairs(targets) do
    local o = {}
    for k, v in pairs(opts) do o[k] = v end
    o.proxy = next_hop(t)
    last = { fn(o) }
    local code, res = last[3], last[4]
    if last[1] or (code ~= 503 and code ~= 408) then break end
    M.busy(t, res)
    dispatcher.log("info", ("%s %s -> %s: %s, trying the next target"):format(
      tostring(opts.method or "INVITE"), tostring(opts.uri), o.proxy, tostring(last[2])))
  end
  return unpack(last, 1, 4)
end

return M
