-- luasip.location: the location service -- bindings of addresses-of-record (AOR) to
-- contact addresses, kept in a store (luasip.store.memory by default; any store with the
-- same interface, e.g. Redis, will do).  One store key per AOR holds a serialisable record
-- { aor =, bindings = { binding... } } whose store TTL is its longest binding's.
-- A binding: { uri =, q = (nil: none given), expires_at = (store clock), call_id =,
-- cseq =, path = {"<sip:...>"...} | nil, source = {address =, port =, transport =},
-- user_agent =, instance = "urn:...", reg_id =, params = {}, registered_at =, updated_at =,
-- received = "sip:address:port;transport=..." (where the REGISTER came from: the flow),
-- ob = true (an RFC 5626 outbound flow), nat = true (the registrar's nat option) }.
-- Also the URI helpers of RFC 3261 19.1.4 used by the registrar: parse, AOR canonical
-- form (10.3 step 5) and URI equality.
local core = require "luasip.core"
local memory = require "luasip.store.memory"

local uri_aor = core.uri_aor

local M = {}

-- ------------------------------------------------------------------ URIs

local function unescape(s)
  return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- characters a SIP user part may carry unescaped (RFC 3261 25.1: unreserved and
-- user-unreserved); everything else is %HH-escaped in the canonical form
local function escape_user(s)
  return (s:gsub("[^%w%-_%.!~%*'%(%)&=%+%$,;%?/]", function(c)
    return ("%%%02X"):format(c:byte())
  end))
end

-- parse(uri) -> { scheme, user, password, host, port, params = {name = value | true},
--   headers = {name = value} } | nil, err.  Names and host lowercased, %HH unescaped
--   (the user part keeps its case).  Non-SIP URIs: { scheme, opaque }.  In C
--   (csrc/uri.c), as are the AOR of a URI string and URI equality below.
function M.parse_uri(s)
  if type(s) ~= "string" then return nil, "URI expected" end
  return core.uri_parse(s)
end

-- memoise(of_string, of_other) -> a function of a URI: of_string(uri) for a string, its
-- answers kept (a URI seen again and again -- a user's To and From on each REGISTER, the
-- AOR of each lookup -- is worked out once), of_other(uri) for anything else.  Only
-- strings of at most CACHE_KEY_MAX bytes with a non-nil answer are kept (a request's To
-- may be ~64 KB: 4096 of those would hold a quarter of a gigabyte), up to CACHE_MAX of
-- them; then the cache starts again.
local CACHE_MAX, CACHE_KEY_MAX = 4096, 256
local function memoise(of_string, of_other)
  local cache, n = {}, 0
  return function(uri)
    local v = cache[uri]                -- (before type(): the usual case, a hit)
    if v ~= nil then return v end
    if type(uri) ~= "string" then return of_other(uri) end
    local err
    v, err = of_string(uri)
    if v ~= nil and #uri <= CACHE_KEY_MAX then
      if n >= CACHE_MAX then cache, n = {}, 0 end
      cache[uri] = v
      n = n + 1
    end
    return v, err
  end
end

-- uri_user(uri) -> the user part of a URI (unescaped) or nil (the digest authorizer asks
-- it for every REGISTER's AOR)
M.uri_user = memoise(core.uri_user, function() return nil end)

-- aor(uri | parts) -> canonical AOR "scheme:user@host[:port]" | nil, err
-- RFC 3261 10.3 step 5: parameters removed, escapes undone (re-escaped where needed),
-- scheme and host in lower case.  parts is a table as req.ruri.
M.aor = memoise(uri_aor, function(uri)
  if type(uri) ~= "table" then return nil, "URI expected" end
  local u = { scheme = uri.scheme and uri.scheme:lower(), user = uri.user,
    host = uri.host and uri.host:lower(), port = uri.port }
  if u.user then u.user = unescape(u.user) end
  if u.scheme ~= "sip" and u.scheme ~= "sips" then
    return nil, "an address-of-record must be a sip: or sips: URI"
  end
  if not u.host or u.host == "" then return nil, "no host in URI" end
  return u.scheme .. ":" .. (u.user and u.user ~= "" and escape_user(u.user) .. "@" or "")
    .. u.host .. (u.port and ":" .. u.port or "")
end)

-- uri_equal(a, b) -> boolean: URI equality of RFC 3261 19.1.4 (what is not a URI string
-- equals only itself)
M.uri_equal = core.uri_equal

-- ------------------------------------------------------------------ location

local Location = {}
Location.__index = Location

-- the live locations (weak), for the luasip_registrations gauge of luasip.metrics
M.instances = setmetatable({}, { __mode = "k" })

-- location{ store = (memory store), prefix = "location:" } -> location
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("luasip.location: options table expected", 2) end
  local store = opts.store or memory.new()
  if type(store) ~= "table" or type(store.update) ~= "function"
    or type(store.get) ~= "function" then
    error("luasip.location: store must be a luasip store (get, set, del, update, keys)", 2)
  end
  local prefix = opts.prefix or "location:"
  if type(prefix) ~= "string" then error("luasip.location: prefix must be a string", 2) end
  local self = setmetatable({ store = store, prefix = prefix }, Location)
  M.instances[self] = true
  return self
end

local function key_of(self, aor, fname)
  local canon, err = M.aor(aor)
  if not canon then error(fname .. ": bad address-of-record (" .. tostring(err) .. ")", 3) end
  return self.prefix .. canon, canon
end

-- live bindings of a record at time now, sorted: q descending (no q counts as 1), then the
-- most recently updated first
local function before(x, y)
  local qx, qy = x.q or 1, y.q or 1
  if qx ~= qy then return qx > qy end
  if x.updated_at ~= y.updated_at then return x.updated_at > y.updated_at end
  return x.uri < y.uri
end

local function live(record, now)
  local list, n, expired = {}, 0, false
  local all = record and record.bindings
  if all then
    for i = 1, #all do
      local b = all[i]
      if b.expires_at > now then n = n + 1; list[n] = b else expired = true end
    end
    if n > 1 then table.sort(list, before) end
  end
  return list, expired
end

-- a shallow copy of binding b with `expires` = the seconds it has left
local function with_remaining(b, now)
  local c = {}
  for k, v in pairs(b) do c[k] = v end
  c.expires = math.ceil(b.expires_at - now - 1e-6)
  return c
end

-- writes bindings back as the record, or deletes it when none is left
local function record_of(aor, list, now)
  if #list == 0 then return nil end
  local last = now
  for _, b in ipairs(list) do if b.expires_at > last then last = b.expires_at end end
  return { aor = aor, bindings = list }, math.max(last - now, 0.001)
end

-- location:update(aor, fn) -> bindings | nil, err, code
-- Atomic read-modify-write of an AOR's bindings: fn(bindings, now) gets the live ones
-- (sorted, expired ones purged) and returns the new list, or nil, reason, status to leave
-- them unchanged (update then returns nil, reason, status).  fn must not yield and may run
-- more than once.  Returns the bindings now stored, with `expires` set to what remains.
function Location:update(aor, fn)
  local key, canon = key_of(self, aor, "luasip.location:update")
  if type(fn) ~= "function" then error("luasip.location:update: function expected", 2) end
  local result, abort
  local ok, err, code = self.store:update(key, function(record, now)
    local list = live(record, now)
    local new, reason, status = fn(list, now)
    if new == nil then
      abort = { reason or "update refused", status or 500 }
      return false
    end
    abort = nil
    local rec, ttl = record_of(canon, new, now)
    result = {}
    for i, b in ipairs((live(rec, now))) do result[i] = with_remaining(b, now) end
    return rec, ttl
  end)
  if not ok then return nil, err, code end
  if abort then return nil, abort[1], abort[2] end
  return result
end

-- location:bindings(aor) -> list of bindings (live, sorted, with `expires` remaining)
function Location:bindings(aor)
  local key = key_of(self, aor, "luasip.location:bindings")
  local record, err, code = self.store:get(key)
  if record == nil and err then return nil, err, code end
  local now = self.store:now()
  local list, expired = live(record, now)
  if expired then
    -- purge what has expired (unless a writer got there first)
    local ok, perr, pcode = self:update(aor, function(l) return l end)
    if not ok then return nil, perr, pcode end
  end
  for i, b in ipairs(list) do list[i] = with_remaining(b, now) end
  return list
end

-- ------------------------------------------------------------------ NAT and flows

-- flow_uri(source) -> "sip:address:port;transport=x": the flow a request came over
-- (req.source: { address =, port =, transport = })
function M.flow_uri(source)
  if type(source) ~= "table" or not source.address then return nil end
  local host = source.address:find(":", 1, true) and "[" .. source.address .. "]"
    or source.address
  return ("sip:%s:%d;transport=%s"):format(host, source.port,
    (source.transport or "udp"):lower())
end

local STREAM = { tcp = true, tls = true, ws = true, wss = true }

-- the flow of binding b that requests to it should take, or nil (its Contact): the
-- outbound flow, the NATed source (registrar option nat), or the connection of a TCP/TLS
-- client (kept as its flow, RFC 5626 / RFC 3261 18.2.2-like reuse)
local function flow_of(b)
  if not b.received or b.path then return nil end
  if b.ob or b.nat then return b.received end
  if b.source and STREAM[(b.source.transport or ""):lower()] then return b.received end
  return nil
end

-- flow_token(flow) -> a token for the user part of a Record-Route or Path URI (RFC 5626
-- 5.3): the flow, hex-encoded (not signed: the proxy checks the dialog it belongs to)
function M.flow_token(flow)
  return "ob-" .. flow:gsub(".", function(c) return ("%02x"):format(c:byte()) end)
end

-- token_flow(token) -> the flow of a token of flow_token | nil
function M.token_flow(token)
  local hex = type(token) == "string" and token:match("^ob%-(%x+)$")
  if not hex or #hex % 2 == 1 then return nil end
  return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

-- request_flow(req) -> the flow named by the flow token of req's top Route (ours), unless
-- req came over that very flow (it then goes where its Request-URI says) | nil
function M.request_flow(req)
  local route = req:header("Route")
  local user = route and route:match("^%s*<?sips?:([^@;>]+)@")
  local flow = user and M.token_flow(user)
  if not flow or flow == M.flow_uri(req.source) then return nil end
  return flow
end

-- location:lookup(aor [, agent]) -> list of targets { uri, q, path, flow, ob, source,
--   received, expires, instance, reg_id, user_agent, aor }, highest q first; {} when
--   nobody is registered.  flow: where req:proxy sends the request (the Request-URI
--   stays the Contact).  With the agent, outbound bindings whose connection is gone are
--   removed (RFC 5626 flow failure) and of an instance's flows only the newest is used.
function Location:lookup(aor, agent)
  local list, err, code = self:bindings(aor)
  if not list then return nil, err, code end
  local canon = M.aor(aor)
  local targets, dead, seen = {}, {}, {}
  for _, b in ipairs(list) do
    local flow = flow_of(b)
    if b.ob and flow and agent and not agent:flow_alive(flow) then
      dead[#dead + 1] = b
    elseif not (b.ob and b.instance and seen[b.instance]) then
      if b.ob and b.instance then seen[b.instance] = true end
      targets[#targets + 1] = { uri = b.uri, q = b.q or 1, path = b.path, flow = flow,
        ob = b.ob, source = b.source, received = b.received, expires = b.expires,
        instance = b.instance, reg_id = b.reg_id, user_agent = b.user_agent, aor = canon }
    end
  end
  if #dead > 0 then
    local ok, uerr, ucode = self:update(aor, function(l)
      local keep = {}
      for _, b in ipairs(l) do
        local gone = false
        for _, d in ipairs(dead) do
          if b.received == d.received and M.uri_equal(b.uri, d.uri) then gone = true end
        end
        if not gone then keep[#keep + 1] = b end
      end
      return keep
    end)
    if not ok then return nil, uerr, ucode end
  end
  return targets
end

-- location:remove(aor [, contact]) -> number of bindings removed | nil, err, code
function Location:remove(aor, contact)
  if contact ~= nil and type(contact) ~= "string" then
    error("luasip.location:remove: contact must be a URI string", 2)
  end
  local n = 0
  local ok, err, code = self:update(aor, function(list)
    n = 0
    local keep = {}
    for _, b in ipairs(list) do
      if contact == nil or M.uri_equal(b.uri, contact) then n = n + 1
      else keep[#keep + 1] = b end
    end
    return keep
  end)
  if not ok then return nil, err, code end
  return n
end

-- location:aors() -> sorted list of the AORs that have bindings
function Location:aors()
  local keys, err, code = self.store:keys(self.prefix)
  if not keys then return nil, err, code end
  local list = {}
  for i, k in ipairs(keys) do list[i] = k:sub(#self.prefix + 1) end
  return list
end

-- location:aor(uri) -> canonical AOR | nil, err
function Location.aor(_, uri)
  return M.aor(uri)
end

return M
