-- luasip.auth: digest authentication for SIP (RFC 3261 22, RFC 2617 and RFC 7616 / RFC
-- 8760 with MD5, SHA-256 and SHA-512-256, qop=auth and auth-int).  Server side: check(req, opts)
-- answers a 401/407 challenge itself and returns the authenticated user; authorizer{...}
-- is a registrar authorize hook.  Client
-- side: agent:request{..., auth = {username =, password = | ha1 =}}, agent:invite{...} and
-- dialog:request(method, {auth = ...}) answer 401/407 challenges (send_with_auth).
-- Nonces carry their issue time and a keyed md5 of it, so processes sharing a secret
-- accept each other's nonces; the highest nonce count seen per nonce is kept in a luasip
-- store (by default a memory store private to this process) until the nonce expires,
-- raised by one atomic store:advance, so a count is accepted once by all the processes
-- sharing the store.  With a store given and no secret, the secret is the store's own
-- (made by the first process that needs it), so those processes share it too.
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"
local location = require "luasip.location"
local memory = require "luasip.store.memory"
local outage = require "luasip.store.outage"

local unpack = table.unpack or unpack
local md5 = core.md5
local digest = select(3, core.class("luasip.digest"))   -- the C functions (csrc/digest.c)

local M = {}

-- ------------------------------------------------------------------ digest

-- the algorithms by strength (a client answers the strongest challenge it can); each
-- also has a "-sess" variant (RFC 7616 3.4.2).  SHA ones need libcrypto in the build.
local STRENGTH = { ["MD5"] = 1, ["SHA-256"] = 2, ["SHA-512-256"] = 3 }

-- canonical name of a supported algorithm (nil: MD5), and its base without "-sess"; nil
-- when unsupported
local alg_cache, alg_n = {}, 0     -- name as given -> { canonical, base } | false
local function algorithm(name)
  name = name or "MD5"
  local hit = alg_cache[name]
  if hit then return hit[1], hit[2] end
  if hit == false then return nil end
  local up = name:upper()
  local base = up:gsub("%-SESS$", "")
  local canon = STRENGTH[base] and digest.supports(up) and (up:gsub("%-SESS$", "-sess"))
  if alg_n < 64 then                  -- names come from requests: a bounded memo
    alg_n = alg_n + 1
    alg_cache[name] = canon and { canon, base } or false
  end
  if not canon then return nil end
  return canon, base
end

-- parse(value) -> scheme, params | nil: one WWW-Authenticate, Proxy-Authenticate,
-- Authorization or Proxy-Authorization value; param names lowercased, values unquoted
function M.parse(value)
  if type(value) ~= "string" then return nil end
  local scheme, i = value:match("^%s*([%w%-%.!%%%*_%+`'~]+)()")
  if not scheme then return nil end
  local params, n = {}, #value
  while true do
    i = value:match("^[%s,]*()", i)
    if i > n then break end
    local name, j = value:match("^([%w%-%.!%%%*_%+`'~]+)%s*=%s*()", i)
    if not name then return nil end
    local v
    if value:sub(j, j) == '"' then
      local buf, k = {}, j + 1
      while true do
        local c = value:sub(k, k)
        if c == "" then return nil end          -- unterminated quoted string
        if c == '"' then break end
        if c == "\\" then
          k = k + 1
          c = value:sub(k, k)
        end
        buf[#buf + 1] = c
        k = k + 1
      end
      v, i = table.concat(buf), k + 1
    else
      v, i = value:match("^([^%s,\"]*)()", j)
    end
    params[name:lower()] = v
  end
  return scheme, params
end

local function quote(s)
  return '"' .. s:gsub('[\\"]', "\\%0") .. '"'
end

-- response{ method =, uri =, nonce =, ha1 = | username =, realm =, password =,
--   algorithm = "MD5" | "SHA-256" | "SHA-512-256" (or their "-sess"), qop = "auth" |
--   "auth-int" | nil, nc = "00000001", cnonce =, body = } -> the request-digest
--   (lowercase hex), RFC 2617 3.2.2.1, RFC 7616 3.4.1; computed in C (csrc/digest.c)
function M.response(p)
  if type(p) ~= "table" then error("luasip.auth.response: table expected", 2) end
  for _, k in ipairs{ "method", "uri", "nonce" } do
    if type(p[k]) ~= "string" then
      error("luasip.auth.response: " .. k .. " must be a string", 2)
    end
  end
  local alg = algorithm(p.algorithm)
  if not alg then
    error("luasip.auth.response: unsupported algorithm " .. tostring(p.algorithm), 2)
  end
  local ha1 = p.ha1
  if ha1 == nil then
    if type(p.username) ~= "string" or type(p.realm) ~= "string"
      or type(p.password) ~= "string" then
      error("luasip.auth.response: ha1 or username, realm and password expected", 2)
    end
    ha1 = digest.ha1(alg, p.username, p.realm, p.password)
  end
  if p.qop ~= nil and p.qop ~= "auth" and p.qop ~= "auth-int" then
    error('luasip.auth.response: qop must be "auth", "auth-int" or nil', 2)
  end
  -- qop nil: RFC 2069 compatibility (nc and cnonce unused, but for -sess)
  return digest.response(alg, ha1, p.nonce, p.nc or "00000001", p.cnonce or "", p.qop,
    p.method, p.uri, p.body)
end

-- the qop we answer a challenge with: auth, else auth-int, else none (RFC 2069);
-- false when the challenge offers only qop values we do not know
local function pick_qop(offer)
  if offer == nil then return nil end
  local has = {}
  for q in offer:gmatch("[^,%s]+") do has[q:lower()] = true end
  if has.auth then return "auth" end
  if has["auth-int"] then return "auth-int" end
  return false
end

-- the HA1 auth gives for an algorithm (auth.ha1: a hex string for MD5, or a table
-- { ["SHA-256"] = hex, MD5 = hex, ... }), or true when auth has the password; nil: none
local function ha1_for(auth, alg)
  if auth.password then return true end
  local h = auth.ha1
  if type(h) == "string" then return (alg:gsub("%-sess$", "") == "MD5") and h or nil end
  if type(h) == "table" then return h[alg:gsub("%-sess$", "")] end
  return nil
end

local function usable(params, auth)
  local alg = algorithm(params.algorithm)
  return params.realm and params.nonce and alg and pick_qop(params.qop) ~= false
    and (auth == nil or ha1_for(auth, alg) ~= nil)
end

-- credentials(challenge, auth, method, uri [, opts]) -> Authorization value | nil, err
-- challenge: a WWW-Authenticate/Proxy-Authenticate value or its parsed params; auth:
-- { username =, password = | ha1 = }; opts: { nc = 1, cnonce = (random), body = }
function M.credentials(challenge, auth, method, uri, opts)
  local params = challenge
  if type(challenge) == "string" then
    local scheme
    scheme, params = M.parse(challenge)
    if not scheme or scheme:lower() ~= "digest" then
      return nil, "not a Digest challenge"
    end
  end
  if type(params) ~= "table" then
    error("luasip.auth.credentials: challenge expected", 2)
  end
  if not usable(params, auth) then return nil, "unsupported challenge" end
  opts = opts or {}
  local qop = pick_qop(params.qop)
  local nc = ("%08x"):format(opts.nc or 1)
  local cnonce = opts.cnonce or core.random_hex(8)
  local ha1 = ha1_for(auth, algorithm(params.algorithm))
  local response = M.response{ method = method, uri = uri, nonce = params.nonce,
    ha1 = ha1 ~= true and ha1 or nil, username = auth.username, realm = params.realm,
    password = auth.password, algorithm = params.algorithm, qop = qop, nc = nc,
    cnonce = cnonce, body = opts.body }
  local v = { "Digest username=" .. quote(auth.username), "realm=" .. quote(params.realm),
    "nonce=" .. quote(params.nonce), "uri=" .. quote(uri),
    "response=" .. quote(response) }
  if params.algorithm then v[#v + 1] = "algorithm=" .. params.algorithm end
  if qop then
    v[#v + 1] = "cnonce=" .. quote(cnonce)
    v[#v + 1] = "qop=" .. qop
    v[#v + 1] = "nc=" .. nc
  end
  if params.opaque then v[#v + 1] = "opaque=" .. quote(params.opaque) end
  return table.concat(v, ", ")
end

-- ------------------------------------------------------------------ server side

-- Wall-clock seconds with fractions: nonces are compared across processes, so sip.now()
-- (monotonic, per process) will not do; os.time() alone is too coarse for short TTLs.
local wall0, mono0 = os.time(), core.now()
local function wall_clock()
  return wall0 + (core.now() - mono0)
end

local default_secret, default_store
local secrets = setmetatable({}, { __mode = "k" })   -- store -> the secret kept in it
local SECRET_KEY = "auth:secret"
local FUTURE_SKEW = 30          -- seconds a nonce may seem to come from the future

-- With the failures option (off by default; true: these defaults):
-- failed digests (a wrong password or an unknown user) are counted per source address and
-- per user at a source, per realm; past `failures.per_source` (20) or `failures.per_user`
-- (5) within `failures.window` seconds (60), credentials from there get 403 without being
-- checked for `failures.block` seconds (60): password guessing is slowed to nothing, other
-- sources and users are not affected.
local FAILURES = { per_source = 20, per_user = 5, window = 60, block = 60 }
local failed = {}       -- realm -> key -> { n =, since =, until_ = }
local failed_n = 0

local function failures_opts(v, fname)
  if v == nil or v == false then return false end
  if v == true then return FAILURES end
  if type(v) ~= "table" then error(fname .. ": failures must be true, false or a table", 4) end
  local o = {}
  for k, d in pairs(FAILURES) do
    local x = v[k]
    if x == nil then x = d end
    if type(x) ~= "number" or x <= 0 then
      error(fname .. ": failures." .. k .. " must be a number > 0", 4)
    end
    o[k] = x
  end
  for k in pairs(v) do
    if not FAILURES[k] then error(fname .. ": failures: unknown option '" .. tostring(k) .. "'", 4) end
  end
  return o
end

local function failure_keys(req, user)
  local src = req.source and req.source.address or "?"
  return "src " .. src, user and ("user " .. tostring(user) .. " " .. src) or nil
end

-- blocked(cfg, req, user) -> true while the source, or this user at it, is blocked
local function blocked(cfg, req, user, now)
  local t = cfg.failures and failed[cfg.realm]
  if not t then return false end
  local k1, k2 = failure_keys(req, user)
  for _, k in ipairs{ k1, k2 } do
    local e = t[k]
    if e and e.until_ and now < e.until_ then return true end
  end
  return false
end

local function count_failure(cfg, req, user, now)
  local f = cfg.failures
  if not f then return end
  local t = failed[cfg.realm]
  if not t then t = {}; failed[cfg.realm] = t end
  if failed_n > 100000 then                      -- forget what has expired
    failed_n = 0
    for _, rt in pairs(failed) do
      for k, e in pairs(rt) do
        if now - e.since > f.window and not (e.until_ and now < e.until_) then rt[k] = nil
        else failed_n = failed_n + 1 end
      end
    end
  end
  local k1, k2 = failure_keys(req, user)
  for i, k in ipairs{ k1, k2 } do
    local e = t[k]
    if not e or now - e.since > f.window then
      if not e then failed_n = failed_n + 1 end
      e = { n = 0, since = now }
      t[k] = e
    end
    e.n = e.n + 1
    local max = i == 1 and f.per_source or f.per_user
    if e.n >= max and not (e.until_ and now < e.until_) then
      e.until_ = now + f.block
      dispatcher.log("warn", ("auth: %d failed digests from %s%s in %g s: refused for %g s")
        :format(e.n, req.source and req.source.address or "?",
          i == 2 and (" for " .. tostring(user)) or "", f.window, f.block))
    end
  end
end

local function check_opts(opts, fname)
  if type(opts) ~= "table" then error(fname .. ": options table expected", 3) end
  if type(opts.realm) ~= "string" or opts.realm == "" then
    error(fname .. ": realm must be a non-empty string", 3)
  end
  if opts.password == nil and opts.ha1 == nil then
    error(fname .. ": password or ha1 function expected", 3)
  end
  for _, k in ipairs{ "password", "ha1", "clock" } do
    if opts[k] ~= nil and type(opts[k]) ~= "function" then
      error(fname .. ": " .. k .. " must be a function", 3)
    end
  end
  local ttl = opts.nonce_ttl
  if ttl ~= nil and (type(ttl) ~= "number" or ttl <= 0) then
    error(fname .. ": nonce_ttl must be a number of seconds > 0", 3)
  end
  if opts.secret ~= nil and (type(opts.secret) ~= "string" or opts.secret == "") then
    error(fname .. ": secret must be a non-empty string", 3)
  end
  local store = opts.store
  if store ~= nil and (type(store) ~= "table" or type(store.advance) ~= "function") then
    error(fname .. ": store must be a luasip store", 3)
  end
  local given, algs, offered = opts.algorithms or { "MD5" }, {}, {}
  if type(given) ~= "table" or #given == 0 then
    error(fname .. ": algorithms must be a non-empty list (\"SHA-256\", \"MD5\", ...)", 3)
  end
  for i, a in ipairs(given) do
    local name = type(a) == "string" and algorithm(a)
    if not name or name:match("%-sess$") then
      error(fname .. ": algorithms[" .. i .. "]: unsupported algorithm " .. tostring(a), 3)
    end
    algs[i], offered[name] = name, true
  end
  local qops, qop_list = {}, {}
  local given_qop = opts.qop or { "auth" }
  if type(given_qop) ~= "table" or #given_qop == 0 then
    error(fname .. ': qop must be a non-empty list ("auth", "auth-int")', 3)
  end
  for i, q in ipairs(given_qop) do
    if q ~= "auth" and q ~= "auth-int" then
      error(fname .. ": qop[" .. i .. ']: "auth" or "auth-int" expected, got ' .. tostring(q), 3)
    end
    if not qops[q] then qop_list[#qop_list + 1] = q end
    qops[q] = true
  end
  if not default_secret then default_secret = core.random_hex(16) end
  if not store and not default_store then default_store = memory.new() end
  local secret = opts.secret
  if not secret then secret = store and secrets[store] or (not store and default_secret) end
  return {
    realm = opts.realm, password = opts.password, ha1 = opts.ha1,
    proxy = not not opts.proxy,
    nonce_ttl = ttl or 300, secret = secret, store = store or default_store,
    clock = opts.clock or wall_clock,
    opaque = secret and md5("opaque:" .. secret .. ":" .. opts.realm),
    algorithms = algs, offered = offered, qops = qops, qop = table.concat(qop_list, ","),
    failures = failures_opts(opts.failures, fname),
  }
end

-- nonce = issue time in ms (13 decimal digits) .. 8 hex random digits
--   .. md5(secret:time:random:realm)
local function make_nonce(cfg)
  -- (an integer format: "%013.0f" of a float cost ~9,000 instructions in glibc)
  local ts = ("%013d"):format(math.floor(cfg.clock() * 1000))
  local rnd = core.random_hex(4)
  return ts .. rnd .. md5(cfg.secret .. ":" .. ts .. ":" .. rnd .. ":" .. cfg.realm)
end

-- nonce_time(cfg, nonce) -> issue time in seconds, or nil when we did not make it
-- (no pattern: a nonce whose mac is right is one we made, digits and hex digits as above)
local function nonce_time(cfg, nonce)
  if #nonce ~= 53 then return nil end
  local ts, rnd, mac = nonce:sub(1, 13), nonce:sub(14, 21), nonce:sub(22)
  local want = md5(cfg.secret .. ":" .. ts .. ":" .. rnd .. ":" .. cfg.realm)
  if mac ~= want and mac:lower() ~= want then return nil end
  return tonumber(ts) / 1000
end

local function names(cfg)
  if cfg.proxy then
    return 407, "Proxy Authentication Required", "Proxy-Authenticate",
      "Proxy-Authorization"
  end
  return 401, "Unauthorized", "WWW-Authenticate", "Authorization"
end

-- Answers req with a fresh challenge, one per algorithm in the order of the option
-- (RFC 7616 3.7: the preferred first; RFC 8760 for SIP), all with the same nonce;
-- -> nil, status, why
local function challenge(req, cfg, why, stale)
  local status, reason, header = names(cfg)
  local head = "Digest realm=" .. quote(cfg.realm) .. ', nonce="' .. make_nonce(cfg)
    .. '", opaque="' .. cfg.opaque .. '"' .. (stale and ", stale=true" or "")
  local values = {}
  for i, alg in ipairs(cfg.algorithms) do
    values[i] = head .. ", algorithm=" .. alg .. ', qop="' .. cfg.qop .. '"'
  end
  req:reply(status, reason, { headers = { [header] = values } })
  return nil, status, why
end

local function bad_request(req, reason, why)
  req:reply(400, reason)
  return nil, 400, why
end

-- our credentials in req: the first Digest ones for our realm, parsed
local function ours(v, cfg)
  local scheme, p = digest.parse(v)      -- M.parse's contract, in C
  return scheme and scheme:lower() == "digest" and p.realm == cfg.realm and p or nil
end

local function find_credentials(req, cfg)
  local _, _, _, header = names(cfg)
  local first = req:header(header)       -- the usual single one: no list made
  if not first then return nil end
  local p = ours(first, cfg)
  if p then return p end
  local list = req:headers(header)
  for i = 2, #list do
    p = ours(list[i], cfg)
    if p then return p end
  end
  return nil
end

local function uri_matches(digest_uri, req)
  local ruri = req.uri
  return digest_uri == ruri or location.uri_equal(digest_uri, ruri)
end

-- the secret of a shared store: the one stored there, else ours, stored (once)
local function load_secret(cfg)
  local store, fresh, secret = cfg.store, core.random_hex(16), nil
  local ok, err, code = store:update(SECRET_KEY, function(old)
    secret = type(old) == "string" and old or fresh
    if secret == old then return false end
    return fresh
  end)
  if not ok then return nil, err, code end
  secrets[store] = secret
  cfg.secret, cfg.opaque = secret, md5("opaque:" .. secret .. ":" .. cfg.realm)
  return true
end

local function verify(req, cfg)
  local method = req.method
  if method == "ACK" then return nil, nil, "an ACK cannot be challenged" end
  if not cfg.secret then
    local ok, err, code = load_secret(cfg)
    if not ok then return outage.reply(req, "Authentication", err, code) end
  end
  local p = find_credentials(req, cfg)
  if not p then return challenge(req, cfg, "no credentials") end
  if not (p.username and p.nonce and p.uri and p.response) then
    return bad_request(req, "Incomplete Authorization", "malformed")
  end
  if blocked(cfg, req, p.username, core.now()) then
    req:reply(403, "Too Many Failed Attempts")
    return nil, 403, "blocked"
  end
  local alg = algorithm(p.algorithm)
  if not alg or not cfg.offered[alg] then return challenge(req, cfg, "algorithm") end
  local qop = p.qop and p.qop:lower()
  if not cfg.qops[qop] then return challenge(req, cfg, "qop") end
  if not p.cnonce or not p.nc or not p.nc:match("^%x%x%x%x%x%x%x%x$") then
    return bad_request(req, "Incomplete Authorization", "malformed")
  end
  local nc = tonumber(p.nc, 16)
  if nc == 0 then return bad_request(req, "Incomplete Authorization", "malformed") end
  if not uri_matches(p.uri, req) then
    return bad_request(req, "Authorization URI Mismatch", "uri")
  end
  local now = cfg.clock()
  local issued = nonce_time(cfg, p.nonce)
  if not issued or issued > now + FUTURE_SKEW then
    return challenge(req, cfg, "bad nonce")
  end
  if p.opaque and p.opaque ~= cfg.opaque then return challenge(req, cfg, "opaque") end
  local ha1
  if cfg.ha1 then
    ha1 = cfg.ha1(p.username, cfg.realm, alg)
  else
    local password = cfg.password(p.username, cfg.realm)
    if type(password) == "string" then
      ha1 = digest.ha1(alg, p.username, cfg.realm, password)
    end
  end
  if type(ha1) ~= "string" then
    count_failure(cfg, req, p.username, core.now())
    return challenge(req, cfg, "unknown user")
  end
  -- computed and compared in C (csrc/digest.c), without building the strings here
  -- (auth-int: the digest covers H(entity-body) too, RFC 7616 3.4.3)
  if not digest.check(p.response, alg, ha1, p.nonce, p.nc, p.cnonce, qop, method,
    p.uri, qop == "auth-int" and (req.body or "") or nil) then
    count_failure(cfg, req, p.username, core.now())
    return challenge(req, cfg, "bad response")
  end
  local left = issued + cfg.nonce_ttl - now
  if left <= 0 then return challenge(req, cfg, "stale", true) end
  -- nonce counts must rise (RFC 7616 3.4): a count seen before is a replay
  local fresh, err, code = cfg.store:advance("auth:nc:" .. p.nonce, nc, left + 1)
  if fresh == nil then return outage.reply(req, "Authentication", err, code) end
  if not fresh then return challenge(req, cfg, "replay", true) end
  return p.username
end

-- check(req, { realm =, password = fn(user, realm) | ha1 = fn(user, realm),
--   proxy = false, nonce_ttl = 300, secret = (per process; the store's when a store is
--   given), store = (per process), qop = { "auth" } (and/or "auth-int": the digest
--   covers the body too), clock = (wall clock, seconds) })
--   -> user | nil, status, why
-- Answers req itself unless it returns a user: 401/407 with a fresh nonce when the
-- credentials are missing, for another realm or algorithm, wrong (an unknown user and a
-- wrong password look the same on the wire) or carry a nonce we did not make; with
-- stale=true when the digest is right but the nonce expired or its nonce count was
-- already used; 400 when the credentials are incomplete or their uri is not the
-- Request-URI (RFC 2617 3.2.2.5); 503 with Retry-After while the store is unreachable
-- (500 for another store failure).  why: "no credentials", "algorithm", "qop",
-- "bad nonce", "opaque", "unknown user", "bad response", "stale", "replay",
-- "malformed", "uri", "store".
function M.check(req, opts)
  local cfg = check_opts(opts, "luasip.auth.check")
  return verify(req, cfg)
end

-- authorizer{ realm =, password = | ha1 =, ..., allow = fn(user, aor, req) -> boolean }
--   -> fn(req, aor) -> user | nil, the authorize hook of sip.registrar.  It challenges
-- like check; an authenticated user may register only the AOR with the same user part
-- (unless allow says otherwise): any other AOR gets 403.
function M.authorizer(opts)
  local cfg = check_opts(opts, "luasip.auth.authorizer")
  local allow = opts.allow
  if allow ~= nil and type(allow) ~= "function" then
    error("luasip.auth.authorizer: allow must be a function", 2)
  end
  allow = allow or function(user, aor)
    local u = location.uri_user(aor)
    return u ~= nil and u == user
  end
  return function(req, aor)
    local user = verify(req, cfg)
    if not user then return nil end
    if not allow(user, aor, req) then
      req:reply(403, "Forbidden")
      return nil
    end
    return user
  end
end

-- ------------------------------------------------------------------ client side

-- agent -> { [username \0 next hop] = { challenge params (with .header and .nc)... } }:
-- the last challenges answered, for credentials sent ahead of a challenge (nonce reuse
-- with the next nonce count, RFC 7616 3.4)
local cache = setmetatable({}, { __mode = "k" })

local function cache_key(opts, auth)
  local hop = opts.proxy or opts.uri
  local u = type(hop) == "string" and location.parse_uri(hop)
  local host = u and u.host and (u.host .. ":" .. (u.port or "")) or "?"
  return auth.username .. "\0" .. host
end

local function header_name(k)
  if type(k) == "string" then return k:lower() end
  return nil
end

-- header names (lowercase, with compact forms) the retry sets itself
local PINNED = { from = true, f = true, ["call-id"] = true, i = true, cseq = true }

-- copy of a headers table without the PINNED ones (map or "Name: value" list form)
local function unpinned(headers)
  local out = {}
  for k, v in pairs(headers or {}) do
    local name = header_name(k)
    if not name and type(v) == "string" then
      name = (v:match("^%s*([^:%s]+)%s*:") or ""):lower()
    end
    if not PINNED[name] then
      if type(k) == "number" then out[#out + 1] = v else out[k] = v end
    end
  end
  return out
end

-- adds credentials for every cached/offered challenge to headers
local function add_credentials(headers, entries, auth, method, uri, body)
  local by_header = {}
  for _, ch in ipairs(entries) do
    ch.nc = ch.nc + 1
    local v = M.credentials(ch, auth, method, uri, { nc = ch.nc, body = body })
    if v then
      local list = by_header[ch.header] or {}
      by_header[ch.header] = list
      list[#list + 1] = v
    end
  end
  for name, list in pairs(by_header) do
    local old = headers[name]
    if type(old) == "string" then table.insert(list, 1, old)
    elseif type(old) == "table" then
      for i = #old, 1, -1 do table.insert(list, 1, old[i]) end
    end
    headers[name] = list
  end
  return headers
end

-- the challenges of a 401/407 that auth can answer, the strongest algorithm for each
-- realm (RFC 7616 3.7, RFC 8760 2.4) -> list, any stale=true
local function challenges_of(res, auth)
  local list, stale, best = {}, false, {}
  for _, h in ipairs{ "WWW-Authenticate", "Proxy-Authenticate" } do
    local header = h == "WWW-Authenticate" and "Authorization" or "Proxy-Authorization"
    for _, v in ipairs(res:headers(h)) do
      local scheme, p = M.parse(v)
      if scheme and scheme:lower() == "digest" and usable(p, auth)
        and (auth.realm == nil or auth.realm == p.realm) then
        p.header, p.nc = header, 0
        local id = header .. "\0" .. p.realm
        local _, base = algorithm(p.algorithm)
        local i = best[id]
        if not i then
          list[#list + 1] = p
          best[id] = #list
        elseif STRENGTH[base] > STRENGTH[select(2, algorithm(list[i].algorithm))] then
          list[i] = p
        end
        if p.stale and p.stale:lower() == "true" then stale = true end
      end
    end
  end
  return list, stale
end

-- raises at the level of the caller of agent:request / agent:invite
local function check_auth(opts, fname, in_dialog)
  local auth = opts.auth
  if type(auth) ~= "table" then error(fname .. ": auth must be a table", 3) end
  if type(auth.username) ~= "string" then
    error(fname .. ": auth.username must be a string", 3)
  end
  if type(auth.password) ~= "string" and type(auth.ha1) ~= "string"
    and type(auth.ha1) ~= "table" then
    error(fname .. ": auth.password or auth.ha1 must be a string", 3)
  end
  if auth.realm ~= nil and type(auth.realm) ~= "string" then
    error(fname .. ": auth.realm must be a string", 3)
  end
  if not in_dialog and type(opts.uri) ~= "string" then
    error(fname .. ": uri must be a string", 3)
  end
end

local MAX_SENDS = 4   -- bounds the answers to challenges from ever new realms

-- Sends with send(self, o) (the original request or invite) and answers challenges.  It
-- retries when a challenge comes from a realm (and header) it has not answered in this
-- call yet -- once for a plain 401 or 407, twice for a 407 then a 401 -- and once more
-- when a challenge says stale=true.  Credentials sent ahead from the cache do not count
-- as an answer: a server that restarted with another secret challenges them afresh.
local function with_auth(self, opts, send, method, in_dialog)
  local auth = opts.auth
  local per_agent = cache[self]
  if not per_agent then
    per_agent = {}
    cache[self] = per_agent
  end
  local key = cache_key(opts, auth)
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.auth = nil
  local base = opts.headers or {}
  local entries = auth.preemptive ~= false and per_agent[key]
  if entries then
    local h = {}
    for k, v in pairs(base) do h[k] = v end
    o.headers = add_credentials(h, entries, auth, method, opts.uri, opts.body)
  end
  local answered, current, stale_retried, sends = {}, {}, false, 0
  while true do
    local r = { send(self, o) }
    sends = sends + 1
    local res, code = r[4], r[3]
    if r[1] ~= nil or not res or (code ~= 401 and code ~= 407) then
      if r[1] == nil then per_agent[key] = nil end
      return unpack(r, 1, 4)
    end
    local list, stale = challenges_of(res, auth)
    local fresh = false
    for _, ch in ipairs(list) do
      local id = ch.header .. "\0" .. ch.realm
      if not answered[id] then fresh = true end
      current[id] = ch
    end
    local again = sends < MAX_SENDS and (fresh or (stale and not stale_retried))
    if not again then
      per_agent[key] = nil
      return unpack(r, 1, 4)
    end
    if not fresh then stale_retried = true end
    entries = {}
    for id, ch in pairs(current) do
      answered[id] = true
      entries[#entries + 1] = ch
    end
    per_agent[key] = entries
    -- RFC 3261 22.2: same Call-ID and From tag, the next CSeq (in a dialog, the leg
    -- keeps all three)
    local h = unpinned(base)
    if not in_dialog then
      h.From = res:header("From")
      h["Call-ID"] = res.call_id
      h.CSeq = (res.cseq + 1) .. " " .. method
    end
    o.headers = add_credentials(h, entries, auth, method, opts.uri, opts.body)
    o.from = nil
  end
end

-- send_with_auth(self, opts, send, method, fname [, in_dialog]) -> what send returns:
-- the auth = {...} option of agent:request, agent:invite and dialog:request (the class
-- modules call it; raises at the level of their caller)
function M.send_with_auth(self, opts, send, method, fname, in_dialog)
  check_auth(opts, fname, in_dialog)
  return with_auth(self, opts, send, method, in_dialog)
end

return M
