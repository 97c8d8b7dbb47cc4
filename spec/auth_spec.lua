local H = require "spec.helper"
local sip = H.sip

local REALM = "example.test"
local USERS = { alice = "wonderland", bob = "builder" }
local ALICE = { username = "alice", password = "wonderland" }

local function password(user, realm)
  assert.equal(REALM, realm)
  return USERS[user]
end

-- the first challenge of a response, parsed
local function challenge_of(res, header)
  local scheme, p = sip.auth.parse(res:header(header or "WWW-Authenticate"))
  assert.equal("Digest", scheme)
  return p
end

describe("luasip.auth digest computation", function()
  it("computes the RFC 2617 3.5 example response", function()
    assert.equal("6629fae49393a05397450978507c4ef1", sip.auth.response{
      username = "Mufasa", password = "Circle Of Life", realm = "testrealm@host.com",
      nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093", uri = "/dir/index.html", qop = "auth",
      nc = "00000001", cnonce = "0a4f113b", method = "GET" })
    local ha1 = sip.md5("Mufasa:testrealm@host.com:Circle Of Life")
    assert.equal("6629fae49393a05397450978507c4ef1", sip.auth.response{ ha1 = ha1:upper(),
      nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093", uri = "/dir/index.html", qop = "auth",
      nc = "00000001", cnonce = "0a4f113b", method = "GET" })
    -- the same through the client's credentials builder, from the example's challenge
    local v = assert(sip.auth.credentials('Digest realm="testrealm@host.com", '
      .. 'qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
      .. 'opaque="5ccc069c403ebaf9f0171e9517f40e41"',
      { username = "Mufasa", password = "Circle Of Life" }, "GET", "/dir/index.html",
      { nc = 1, cnonce = "0a4f113b" }))
    local scheme, p = sip.auth.parse(v)
    assert.equal("Digest", scheme)
    assert.same({ username = "Mufasa", realm = "testrealm@host.com",
      nonce = "dcd98b7102dd2f0e8b11d0f600bfb0c093", uri = "/dir/index.html", qop = "auth",
      nc = "00000001", cnonce = "0a4f113b", response = "6629fae49393a05397450978507c4ef1",
      opaque = "5ccc069c403ebaf9f0171e9517f40e41" }, p)
  end)

  it("parses quoted strings with commas and escapes", function()
    local scheme, p = sip.auth.parse('Digest username="a\\"b", realm="x, y",nonce=abc ,'
      .. ' qop="auth,auth-int", stale=TRUE')
    assert.equal("Digest", scheme)
    assert.same({ username = 'a"b', realm = "x, y", nonce = "abc", qop = "auth,auth-int",
      stale = "TRUE" }, p)
    assert.is_nil(sip.auth.parse('Digest realm="unterminated'))
    assert.is_nil(sip.auth.parse(""))
  end)
end)

describe("luasip.auth", function()
  local uas, uac, seen, results
  before_each(function()
    uas, uac = H.agent(), H.agent()
    seen, results = {}, {}
  end)
  after_each(function() H.close_agents() end)

  -- serve(opts [, agent]): OPTIONS and MESSAGE answered 200 (X-User: user) when check
  -- passes; every request reaching the handler and every check result is recorded
  local function serve(opts, agent)
    opts.realm = opts.realm or REALM
    if not opts.ha1 then opts.password = opts.password or password end
    local function handler(req)
      seen[#seen + 1] = { call_id = req.call_id, from_tag = req.from_tag, cseq = req.cseq,
        authorization = req:header("Authorization"),
        proxy_authorization = req:header("Proxy-Authorization") }
      local r = { sip.auth.check(req, opts) }
      results[#results + 1] = r
      if r[1] then req:reply(200, "OK", { headers = { ["X-User"] = r[1] } }) end
    end
    agent = agent or uas
    agent:on("OPTIONS", handler)
    agent:on("MESSAGE", handler)
  end

  local function request(opts, via)
    opts.method = opts.method or "OPTIONS"
    opts.uri = opts.uri or uas:contact()
    return H.run(function() return (via or uac):request(opts) end)
  end

  it("challenges a request without credentials with 401 and a Digest WWW-Authenticate",
    function()
    serve{}
    local _, err, code, res = request{}
    assert.equal(401, code)
    assert.equal("401 Unauthorized", err)
    local p = challenge_of(res)
    assert.equal(REALM, p.realm)
    assert.matches("^%d+%x+$", p.nonce)
    assert.equal(53, #p.nonce)
    assert.matches("^%x+$", p.opaque)
    assert.equal("MD5", p.algorithm)
    assert.equal("auth", p.qop)
    assert.is_nil(p.stale)
    assert.matches('qop="auth"', res:header("WWW-Authenticate"))
    assert.same({ nil, 401, "no credentials" }, results[1])
    -- every challenge has a nonce of its own
    local _, _, _, res2 = request{}
    assert.are_not.equal(p.nonce, challenge_of(res2).nonce)
    assert.equal(p.opaque, challenge_of(res2).opaque)
  end)

  it("authenticates with the client's auth option after one challenge", function()
    serve{}
    local uri = uas:contact()
    local res = assert(request{ uri = uri, auth = ALICE })
    assert.equal(200, res.status)
    assert.equal("alice", res:header("X-User"))
    assert.equal(2, #seen)
    -- RFC 3261 22.2: the retry keeps Call-ID and From tag, with the next CSeq
    assert.is_nil(seen[1].authorization)
    assert.equal(seen[1].call_id, seen[2].call_id)
    assert.equal(seen[1].from_tag, seen[2].from_tag)
    assert.equal(seen[1].cseq + 1, seen[2].cseq)
    local _, p = sip.auth.parse(seen[2].authorization)
    assert.equal("alice", p.username)
    assert.equal(REALM, p.realm)
    assert.equal(uri, p.uri)
    assert.equal("auth", p.qop)
    assert.equal("00000001", p.nc)
    assert.matches("^%x+$", p.cnonce)
    assert.equal("MD5", p.algorithm)
    assert.is_string(p.opaque)
    assert.same({ "alice" }, results[2])
  end)

  it("accepts a client's ha1 and a server's ha1 function", function()
    serve{ ha1 = function(user, realm)
      return USERS[user] and sip.md5(user .. ":" .. realm .. ":" .. USERS[user])
    end }
    local res = assert(request{ method = "MESSAGE", body = "hi",
      content_type = "text/plain",
      auth = { username = "bob", ha1 = sip.md5("bob:" .. REALM .. ":builder") } })
    assert.equal("bob", res:header("X-User"))
  end)

  it("answers a wrong password with a fresh challenge and the client gives up", function()
    serve{}
    local _, _, code, res = request{ auth = { username = "alice", password = "nope" } }
    assert.equal(401, code)
    assert.equal(2, #seen)
    assert.same({ nil, 401, "bad response" }, results[2])
    assert.is_nil(challenge_of(res).stale)
    -- an unknown user looks the same on the wire
    _, _, code, res = request{ auth = { username = "mallory", password = "x" } }
    assert.equal(401, code)
    assert.equal(4, #seen)
    assert.same({ nil, 401, "unknown user" }, results[4])
    assert.is_nil(challenge_of(res).stale)
  end)

  it("sends the next nonce count unchallenged, then retries a stale nonce on its own",
    function()
    local ttl = 0.4
    serve{ nonce_ttl = ttl }
    local auth = ALICE
    assert(request{ auth = auth })
    local issued = sip.now()
    assert.equal(2, #seen)
    -- the next request reuses the nonce with nc=2: no challenge
    assert(request{ auth = auth })
    assert.equal(3, #seen)
    local _, p = sip.auth.parse(seen[3].authorization)
    assert.equal("00000002", p.nc)
    H.run_until(function() return sip.now() > issued + ttl + 0.05 end, 3, "nonce expiry")
    local res = assert(request{ auth = auth })
    assert.equal(200, res.status)
    assert.equal(5, #seen)
    assert.same({ nil, 401, "stale" }, results[4])
    assert.same({ "alice" }, results[5])
    local _, p5 = sip.auth.parse(seen[5].authorization)
    assert.equal("00000001", p5.nc)
    assert.are_not.equal(p.nonce, p5.nonce)
    -- preemptive = false: challenged every time
    assert(request{ auth = { username = "alice", password = "wonderland",
      preemptive = false } })
    assert.equal(7, #seen)
    assert.is_nil(seen[6].authorization)
  end)

  it("answers an expired nonce with stale=true; the client retries that once, then stops",
    function()
    -- a clock that jumps 10 s each time the server reads it: nonces are stale on arrival
    local t = 1e9
    serve{ nonce_ttl = 5, clock = function() t = t + 10; return t end }
    local _, _, code, res = request{ auth = ALICE }
    assert.equal(401, code)
    assert.equal(3, #seen)
    assert.same({ nil, 401, "no credentials" }, results[1])
    assert.same({ nil, 401, "stale" }, results[2])
    assert.same({ nil, 401, "stale" }, results[3])
    assert.equal("true", challenge_of(res).stale)
    assert.equal(seen[1].call_id, seen[3].call_id)
    assert.equal(seen[1].cseq + 2, seen[3].cseq)
  end)

  it("rejects a replayed nonce count with a stale challenge", function()
    serve{}
    local uri = uas:contact()
    local _, _, _, res = request{ uri = uri }
    local ch = res:header("WWW-Authenticate")
    local creds = assert(sip.auth.credentials(ch, ALICE, "OPTIONS", uri,
      { nc = 1, cnonce = "c0ffee" }))
    assert(request{ uri = uri, headers = { Authorization = creds } })
    local code
    _, _, code, res = request{ uri = uri, headers = { Authorization = creds } }
    assert.equal(401, code)
    assert.same({ nil, 401, "replay" }, results[3])
    assert.equal("true", challenge_of(res).stale)
    local auth = ALICE
    local nc3 = sip.auth.credentials(ch, auth, "OPTIONS", uri, { nc = 3 })
    assert(request{ uri = uri, headers = { Authorization = nc3 } })
    -- lower than the highest seen: a replay too
    local nc2 = sip.auth.credentials(ch, auth, "OPTIONS", uri, { nc = 2 })
    _, _, code = request{ uri = uri, headers = { Authorization = nc2 } }
    assert.equal(401, code)
    assert.same({ nil, 401, "replay" }, results[5])
  end)

  it("accepts nonces made by another process with the same secret, and only those",
    function()
    local other, third = H.agent(), H.agent()
    serve{ secret = "shared secret" }
    serve({ secret = "shared secret" }, other)
    serve({ secret = "another secret" }, third)
    local _, _, _, res = request{}
    local ch = res:header("WWW-Authenticate")
    local creds = sip.auth.credentials(ch, ALICE, "OPTIONS", other:contact())
    local ok = assert(request{ uri = other:contact(),
      headers = { Authorization = creds } })
    assert.equal("alice", ok:header("X-User"))
    creds = sip.auth.credentials(ch, ALICE, "OPTIONS", third:contact())
    local _, _, code = request{ uri = third:contact(),
      headers = { Authorization = creds } }
    assert.equal(401, code)
    assert.same({ nil, 401, "bad nonce" }, results[3])
  end)

  it("takes back its nonce whatever the case of its mac, and nothing longer",
    function()
    serve{}
    local uri = uas:contact()
    local _, _, _, res = request{ uri = uri }
    local ch = res:header("WWW-Authenticate")
    local nonce = challenge_of(res).nonce
    assert.equal(53, #nonce)              -- 13 digits of time, 8 random hex, 32 of mac
    local upper = ch:gsub(nonce, nonce:sub(1, 21) .. nonce:sub(22):upper(), 1)
    local creds = sip.auth.credentials(upper, ALICE, "OPTIONS", uri)
    local ok = assert(request{ uri = uri, headers = { Authorization = creds } })
    assert.equal("alice", ok:header("X-User"))
    local longer = ch:gsub(nonce, nonce .. "0", 1)
    creds = sip.auth.credentials(longer, ALICE, "OPTIONS", uri)
    local _, _, code = request{ uri = uri, headers = { Authorization = creds } }
    assert.equal(401, code)
    assert.same({ nil, 401, "bad nonce" }, results[3])
  end)

  it("answers 400 when the digest uri is not the Request-URI or fields are missing",
    function()
    serve{}
    local _, _, _, res = request{}
    local ch = res:header("WWW-Authenticate")
    local creds = sip.auth.credentials(ch, ALICE, "OPTIONS", "sip:elsewhere.test")
    local _, err, code = request{ headers = { Authorization = creds } }
    assert.equal(400, code)
    assert.equal("400 Authorization URI Mismatch", err)
    assert.same({ nil, 400, "uri" }, results[2])
    _, _, code = request{ headers = { Authorization = 'Digest username="alice", realm="'
      .. REALM .. '", nonce="x"' } }
    assert.equal(400, code)
    assert.same({ nil, 400, "malformed" }, results[3])
    -- credentials for another realm are not ours: a challenge
    _, _, code = request{ headers = { Authorization = creds:gsub(REALM, "other.test") } }
    assert.equal(401, code)
    assert.same({ nil, 401, "no credentials" }, results[4])
  end)

  it("uses 407, Proxy-Authenticate and Proxy-Authorization in proxy mode", function()
    serve{ proxy = true }
    local _, err, code, res = request{}
    assert.equal(407, code)
    assert.equal("407 Proxy Authentication Required", err)
    assert.is_nil(res:header("WWW-Authenticate"))
    assert.equal(REALM, challenge_of(res, "Proxy-Authenticate").realm)
    res = assert(request{ auth = { username = "bob", password = "builder" } })
    assert.equal("bob", res:header("X-User"))
    assert.is_nil(seen[3].authorization)
    local _, p = sip.auth.parse(seen[3].proxy_authorization)
    assert.equal("bob", p.username)
    -- Authorization is not for a proxy
    local _, _, _, r407 = request{}
    local ch = challenge_of(r407, "Proxy-Authenticate")
    local creds = sip.auth.credentials(ch, { username = "bob", password = "builder" },
      "OPTIONS", uas:contact())
    _, _, code = request{ headers = { Authorization = creds } }
    assert.equal(407, code)
  end)

  it("answers a 407 then a 401 from two realms, keeping both credentials", function()
    local PROXY = "proxy.test"
    uas:on("OPTIONS", function(req)
      seen[#seen + 1] = { authorization = req:header("Authorization"),
        proxy_authorization = req:header("Proxy-Authorization") }
      local user, status = sip.auth.check(req, { realm = PROXY, proxy = true,
        password = function(u, realm)
          assert.equal(PROXY, realm)
          return USERS[u]
        end })
      results[#results + 1] = { user, status }
      if not user then return end
      -- dave's password differs in the second realm
      user, status = sip.auth.check(req, { realm = REALM, password = function(u)
        if u == "dave" then return "elsewhere" end
        return USERS[u]
      end })
      results[#results + 1] = { user, status }
      if user then req:reply(200) end
    end)
    local res = assert(request{ auth = ALICE })
    assert.equal(200, res.status)
    assert.equal(3, #seen)
    assert.same({ { nil, 407 }, { "alice" }, { nil, 401 }, { "alice" }, { "alice" } },
      results)
    local _, p = sip.auth.parse(seen[3].proxy_authorization)
    assert.equal(PROXY, p.realm)
    assert.equal("00000002", p.nc)
    local _, w = sip.auth.parse(seen[3].authorization)
    assert.equal(REALM, w.realm)
    assert.equal("00000001", w.nc)
    -- a wrong password for the second realm: three requests, no loop
    USERS.dave = "pw"
    local _, _, code = request{ auth = { username = "dave", password = "pw" } }
    USERS.dave = nil
    assert.equal(401, code)
    assert.equal(6, #seen)
    -- auth.realm limits the answers to one realm: the 401 stays unanswered
    _, _, code = request{ auth = { username = "alice", password = "wonderland",
      realm = PROXY, preemptive = false } }
    assert.equal(401, code)
    assert.equal(8, #seen)
  end)

  it("authenticates an INVITE through agent:invite and sets up the dialog", function()
    local checked = {}
    uas:on("INVITE", function(req)
      local user, status, why = sip.auth.check(req, { realm = REALM, password = password,
        proxy = true })
      checked[#checked + 1] = { user, status, why }
      if user then
        local dialog = assert(req:answer{ body = "v=0\r\n",
          content_type = "application/sdp" })
        dialog:wait_end(5)
      end
    end)
    local d, _, code = H.run(function()
      return uac:invite{ uri = uas:uri("bob"), body = "v=0\r\n",
        auth = { username = "carol", password = "x" } }
    end)
    assert.is_nil(d)
    assert.equal(407, code)
    assert.same({ nil, 407, "unknown user" }, checked[2])
    local ended = H.run(function()
      local dialog, res = assert(uac:invite{ uri = uas:uri("bob"), body = "v=0\r\n",
        auth = { username = "alice", password = "wonderland" } })
      assert.equal(200, res.status)
      assert(dialog:bye())
      return true
    end)
    assert.is_true(ended)
    assert.same({ "alice" }, checked[4])
  end)
end)

describe("luasip.auth.authorizer", function()
  local uas, uac, loc, cseq
  local AOR = "sip:alice@example.test"
  before_each(function()
    uas, uac = H.agent(), H.agent()
    cseq = 0
    local reg
    reg, loc = sip.registrar{ authorize = sip.auth.authorizer{ realm = REALM,
      password = password } }
    uas:on("REGISTER", reg)
  end)
  after_each(function() H.close_agents() end)

  local function register(to, from, auth)
    cseq = cseq + 1
    return H.run(function()
      return uac:request{ method = "REGISTER", uri = uas:contact(), auth = auth,
        headers = { To = "<" .. to .. ">", From = "<" .. from .. ">",
          Contact = "<sip:x@127.0.0.1:5999>", CSeq = cseq .. " REGISTER" } }
    end)
  end

  it("registers an authenticated user for its own AOR through sip.registrar", function()
    local _, _, code, res = register(AOR, AOR)
    assert.equal(401, code)
    assert.equal(REALM, challenge_of(res).realm)
    assert.same({}, loc:lookup(AOR))
    res = assert(register(AOR, AOR, { username = "alice", password = "wonderland" }))
    assert.equal(200, res.status)
    assert.equal(1, #loc:lookup(AOR))
    _, _, code = register(AOR, AOR, { username = "alice", password = "wrong" })
    assert.equal(401, code)
  end)

  it("answers 403 to another user's AOR and to a third-party registration", function()
    local bob = "sip:bob@example.test"
    local alice = { username = "alice", password = "wonderland" }
    local _, err, code = register(bob, bob, alice)
    assert.equal(403, code)
    assert.equal("403 Forbidden", err)
    _, err, code = register(AOR, bob, alice)
    assert.equal(403, code)
    assert.equal("403 Third-Party Registration Forbidden", err)
    assert.same({}, loc:aors())
    -- an allow policy may let an authenticated user register elsewhere
    local reg
    reg, loc = sip.registrar{ authorize = sip.auth.authorizer{ realm = REALM,
      password = password, allow = function(user) return user == "alice" end } }
    uas:on("REGISTER", reg)
    assert(register(bob, bob, alice))
    assert.equal(1, #loc:lookup(bob))
  end)

  it("checks its options", function()
    assert.has_error(function() sip.auth.authorizer{ password = password } end,
      "luasip.auth.authorizer: realm must be a non-empty string")
    assert.has_error(function() sip.auth.authorizer{ realm = REALM } end,
      "luasip.auth.authorizer: password or ha1 function expected")
    assert.has_error(function() sip.auth.authorizer{ realm = REALM, password = "pw" } end,
      "luasip.auth.authorizer: password must be a function")
    assert.has_error(function()
      sip.auth.authorizer{ realm = REALM, password = password, nonce_ttl = 0 }
    end, "luasip.auth.authorizer: nonce_ttl must be a number of seconds > 0")
    H.run(function()
      assert.has_error(function()
        uac:request{ method = "OPTIONS", uri = uas:contact(), auth = { password = "x" } }
      end, "luasip.agent:request: auth.username must be a string")
      assert.has_error(function()
        uac:invite{ uri = uas:contact(), auth = { username = "x" } }
      end, "luasip.agent:invite: auth.password or auth.ha1 must be a string")
    end)
  end)
end)

describe("luasip.auth digest with SHA-256 and SHA-512-256 (RFC 7616, RFC 8760)", function()
  local sha = select(3, require("luasip.core").class("luasip.digest")).supports("SHA-256")
  local t = sha and it or pending
  -- RFC 7616 3.9.1: the same request answered with SHA-256 and with MD5
  local NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
  local CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
  local OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
  local function rfc_challenge(alg)
    return 'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=' .. alg
      .. ', nonce="' .. NONCE .. '", opaque="' .. OPAQUE .. '"'
  end

  t("computes the RFC 7616 3.9.1 example (SHA-256 and MD5)", function()
    local p = { username = "Mufasa", password = "Circle of Life",
      realm = "http-auth@example.org", nonce = NONCE, uri = "/dir/index.html",
      qop = "auth", nc = "00000001", cnonce = CNONCE, method = "GET" }
    p.algorithm = "SHA-256"
    -- the RFC's value, also checked by hand: H = sha256 hex,
    -- H(H("Mufasa:http-auth@example.org:Circle of Life") ":" nonce ":00000001:" cnonce
    --   ":auth:" H("GET:/dir/index.html"))
    assert.equal("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
      sip.auth.response(p))
    p.algorithm = "MD5"
    assert.equal("8ca523f5e9506fed4657c9700eebdbec", sip.auth.response(p))
    -- the client's credentials for the RFC's challenges
    local auth = { username = "Mufasa", password = "Circle of Life" }
    local v = assert(sip.auth.credentials(rfc_challenge("SHA-256"), auth, "GET",
      "/dir/index.html", { cnonce = CNONCE }))
    local _, c = sip.auth.parse(v)
    assert.equal("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1", c.response)
    assert.equal("SHA-256", c.algorithm)
    assert.equal(OPAQUE, c.opaque)
    assert.equal("auth", c.qop)
    -- an HA1 given per algorithm; an MD5 HA1 (a string) cannot answer SHA-256
    local ha1 = select(3, require("luasip.core").class("luasip.digest")).ha1("SHA-256", "Mufasa",
      "http-auth@example.org", "Circle of Life")
    v = assert(sip.auth.credentials(rfc_challenge("SHA-256"),
      { username = "Mufasa", ha1 = { ["SHA-256"] = ha1 } }, "GET", "/dir/index.html",
      { cnonce = CNONCE }))
    assert.equal("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
      select(2, sip.auth.parse(v)).response)
    assert.same({ nil, "unsupported challenge" }, { sip.auth.credentials(
      rfc_challenge("SHA-256"), { username = "Mufasa", ha1 = "0123" }, "GET", "/x") })
    assert.same({ nil, "unsupported challenge" }, { sip.auth.credentials(
      rfc_challenge("SHA-1"), auth, "GET", "/x") })
  end)

  describe("between two agents", function()
    local uas, uac, loc, seen
    local AOR = "sip:alice@example.test"
    local function serve(algorithms, ha1)
      local reg
      reg, loc = sip.registrar{ authorize = sip.auth.authorizer{ realm = REALM,
        algorithms = algorithms, password = not ha1 and password or nil, ha1 = ha1 } }
      uas:on("REGISTER", function(req)
        seen[#seen + 1] = req:header("Authorization") or false
        reg(req)
      end)
    end
    local function register(auth)
      return H.run(function()
        return uac:request{ method = "REGISTER", uri = uas:contact(), auth = auth,
          headers = { To = "<" .. AOR .. ">", From = "<" .. AOR .. ">",
            Contact = "<sip:x@127.0.0.1:5999>" } }
      end)
    end
    before_each(function()
      uas, uac, seen = H.agent(), H.agent(), {}
    end)
    after_each(function() H.close_agents() end)

    t("registers with SHA-256, chosen from a 401 offering SHA-256 then MD5", function()
      serve({ "SHA-256", "MD5" })
      local _, _, code, res = register()
      assert.equal(401, code)
      local offered = {}
      for i, v in ipairs(res:headers("WWW-Authenticate")) do
        offered[i] = select(2, sip.auth.parse(v)).algorithm
      end
      assert.same({ "SHA-256", "MD5" }, offered)
      res = assert(register(ALICE))
      assert.equal(200, res.status)
      assert.equal(1, #loc:lookup(AOR))
      assert.equal("SHA-256", select(2, sip.auth.parse(seen[#seen])).algorithm)
      -- a wrong password is refused with SHA-256 as with MD5
      local _, _, c = register{ username = "alice", password = "wrong" }
      assert.equal(401, c)
    end)

    t("picks the strongest offered whatever the order; SHA-512-256 and ha1 per algorithm",
      function()
        local asked = {}
        serve({ "MD5", "SHA-512-256", "SHA-256" }, function(user, realm, alg)
          asked[#asked + 1] = alg
          local d = select(3, require("luasip.core").class("luasip.digest"))
          return user == "alice" and d.ha1(alg, user, realm, "wonderland") or nil
        end)
        local res = assert(register(ALICE))
        assert.equal(200, res.status)
        assert.equal("SHA-512-256", select(2, sip.auth.parse(seen[#seen])).algorithm)
        assert.same({ "SHA-512-256" }, asked)
      end)

    t("answers MD5 when the client has only an MD5 HA1, and fails on SHA-256 only", function()
      serve({ "SHA-256", "MD5" })
      local md5_only = { username = "alice", ha1 = sip.md5("alice:" .. REALM .. ":wonderland") }
      assert.equal(200, assert(register(md5_only)).status)
      assert.equal("MD5", select(2, sip.auth.parse(seen[#seen])).algorithm)
      serve({ "SHA-256" })
      local _, _, code = register(md5_only)
      assert.equal(401, code)
    end)

    it("checks the algorithms option", function()
      assert.has_error(function()
        sip.auth.authorizer{ realm = REALM, password = password, algorithms = { "SHA-1" } }
      end, "luasip.auth.authorizer: algorithms[1]: unsupported algorithm SHA-1")
      assert.has_error(function()
        sip.auth.authorizer{ realm = REALM, password = password, algorithms = {} }
      end, 'luasip.auth.authorizer: algorithms must be a non-empty list ("SHA-256", "MD5", ...)')
      assert.has_error(function()
        sip.auth.authorizer{ realm = REALM, password = password, algorithms = { "MD5-sess" } }
      end, "luasip.auth.authorizer: algorithms[1]: unsupported algorithm MD5-sess")
    end)
  end)
end)

describe("luasip.auth failed digests", function()
  after_each(function() H.close_agents() end)

  it("refuses a user after too many wrong passwords from one source, then lets them in again",
    function()
      local realm = "fail.test"
      local uas, uac = H.agent(), H.agent()
      local logs, restore = H.capture_logs()
      uas:on("MESSAGE", function(req)
        local user = sip.auth.check(req, { realm = realm,
          password = function(u) return ({ alice = "right", bob = "bobpw" })[u] end,
          failures = { per_user = 3, block = 0.5 } })
        if user then req:reply(200) end
      end)
      local function send(user, pw)
        return H.run(function()
          local res, _, code = uac:request{ method = "MESSAGE", uri = uas:uri("x"),
            body = "hi", content_type = "text/plain",
            auth = { username = user, password = pw } }
          return res and res.status or code
        end)
      end
      for _ = 1, 3 do assert.equal(401, send("alice", "guess")) end
      assert.equal(403, send("alice", "right"))         -- blocked: not even checked
      assert.equal(200, send("bob", "bobpw"))           -- another user from there is not
      H.run(function() sip.sleep(0.6) end)              -- the block lasts 0.5 s
      assert.equal(200, send("alice", "right"))
      restore()
      local warned = false
      for _, l in ipairs(logs) do
        warned = warned or l.msg:find("3 failed digests from 127.0.0.1 for alice", 1, true) ~= nil
      end
      assert.is_true(warned)
      assert.has_error(function()
        sip.auth.check(nil, { realm = realm, password = function() end, failures = { x = 1 } })
      end)
    end)
end)
