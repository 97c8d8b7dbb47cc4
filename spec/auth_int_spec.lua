-- Digest qop=auth-int (RFC 2617 3.2.2.3, RFC 7616 3.4.3): the request-digest also covers
-- H(entity-body).  A hand-checked vector for each algorithm, then two luasip agents over
-- loopback: a server offering auth-int (sip.auth.check{ qop = ... }) and a client that
-- answers a challenge offering only auth-int.
local H = require "spec.helper"
local sip = H.sip

local digest = select(3, require("luasip.core").class("luasip.digest"))
local sha = digest.supports("SHA-256") and digest.supports("SHA-512-256")

local NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"   -- RFC 7616 3.9.1's
local CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
local BODY = "Hello, Mufasa\r\n"

describe("luasip.auth qop=auth-int", function()
  after_each(function() H.close_agents() end)

  -- computed by hand (Python's hashlib, outside luasip) as
  --   H(H("Mufasa:http-auth@example.org:Circle of Life") ":" NONCE ":00000001:" CNONCE
  --     ":auth-int:" H("MESSAGE:sip:simba@example.org:" H(BODY)))
  local VECTORS = {
    { "MD5", "c025a3e15ec4bae8345546890c9872e6" },
    { "SHA-256", "c065932a549430a839196c6a356a09978a0e957c37b2f9a939ddd653271fbe72" },
    { "SHA-512-256", "1e50f2a18ee8656bf1de657d00e82fad2677a52a3a9e67a4460b5d5b9e151e0b" },
  }
  it("computes the request-digest over the body (hand-checked, 3 algorithms)", function()
    for _, v in ipairs(VECTORS) do
      if v[1] == "MD5" or sha then
        local p = { username = "Mufasa", password = "Circle of Life", algorithm = v[1],
          realm = "http-auth@example.org", nonce = NONCE, uri = "sip:simba@example.org",
          qop = "auth-int", nc = "00000001", cnonce = CNONCE, method = "MESSAGE",
          body = BODY }
        assert.equal(v[2], sip.auth.response(p), v[1])
        p.body = BODY .. "!"
        assert.not_equal(v[2], sip.auth.response(p), v[1])
        -- a challenge offering auth-int only is answered with auth-int
        local value = assert(sip.auth.credentials('Digest realm="http-auth@example.org", '
          .. 'qop="auth-int", algorithm=' .. v[1] .. ', nonce="' .. NONCE .. '"',
          { username = "Mufasa", password = "Circle of Life" }, "MESSAGE",
          "sip:simba@example.org", { cnonce = CNONCE, body = BODY }))
        local _, c = sip.auth.parse(value)
        assert.equal("auth-int", c.qop)
        assert.equal(v[2], c.response)
      end
    end
  end)

  -- a server agent checking MESSAGEs with opts; -> agent, log of (user | why)
  local function server(opts)
    local uas = H.agent()
    local log = {}
    opts.realm = "example.test"
    opts.password = function(user) return user == "alice" and "wonderland" or nil end
    uas:on("MESSAGE", function(req)
      local user, _, why = sip.auth.check(req, opts)
      log[#log + 1] = user or why
      if user then req:reply(200) end
    end)
    return uas, log
  end
  local ALICE = { username = "alice", password = "wonderland" }

  it("answers an auth-int-only challenge, for each algorithm, and the server checks it",
    function()
      for _, alg in ipairs(sha and { "MD5", "SHA-256", "SHA-512-256" } or { "MD5" }) do
        local uas, log = server{ qop = { "auth-int" }, algorithms = { alg } }
        local uac = H.agent()
        local _, _, code, res = H.run(function()
          return uac:request{ method = "MESSAGE", uri = uas:uri("alice"), body = BODY,
            content_type = "text/plain" }
        end)
        assert.equal(401, code)
        assert.matches('qop="auth-int"', res:header("WWW-Authenticate"), 1, true)
        local ok = H.run(function()
          return assert(uac:request{ method = "MESSAGE", uri = uas:uri("alice"), body = BODY,
            content_type = "text/plain", auth = ALICE })
        end)
        assert.equal(200, ok.status)
        assert.same({ "no credentials", "no credentials", "alice" }, log)
      end
    end)

  it("refuses an auth-int digest made over another body, and qop=auth where only auth-int is offered",
    function()
      local uas, log = server{ qop = { "auth-int" } }
      local uac = H.agent()
      local _, _, _, res = H.run(function()
        return uac:request{ method = "MESSAGE", uri = uas:uri("alice"), body = BODY,
          content_type = "text/plain" }
      end)
      local challenge = res:header("WWW-Authenticate")
      local function send(opts)
        local value = assert(sip.auth.credentials(challenge, ALICE, "MESSAGE", uas:uri("alice"),
          opts))
        return H.run(function()
          return uac:request{ method = "MESSAGE", uri = uas:uri("alice"), body = BODY,
            content_type = "text/plain", headers = { Authorization = value } }
        end)
      end
      local r, _, code = send{ body = "another body", nc = 1 }
      assert.is_nil(r)
      assert.equal(401, code)
      -- the same challenge answered with qop=auth (rewritten into the offer)
      local auth_only = challenge:gsub('qop="auth%-int"', 'qop="auth"')
      local value = assert(sip.auth.credentials(auth_only, ALICE, "MESSAGE", uas:uri("alice"),
        { nc = 2 }))
      r, _, code = H.run(function()
        return uac:request{ method = "MESSAGE", uri = uas:uri("alice"), body = BODY,
          content_type = "text/plain", headers = { Authorization = value } }
      end)
      assert.is_nil(r)
      assert.equal(401, code)
      r = assert(send{ body = BODY, nc = 3 })
      assert.equal(200, r.status)
      assert.same({ "no credentials", "bad response", "qop", "alice" }, log)
    end)

  it("offers auth and auth-int when told; a client then picks auth; auth only by default",
    function()
      local uas = server{ qop = { "auth", "auth-int" } }
      local plain = server{}
      local uac = H.agent()
      for _, case in ipairs{ { uas, 'qop="auth,auth-int"' }, { plain, 'qop="auth"' } } do
        local _, _, code, res = H.run(function()
          return uac:request{ method = "MESSAGE", uri = case[1]:uri("alice"), body = BODY,
            content_type = "text/plain" }
        end)
        assert.equal(401, code)
        assert.matches(case[2], res:header("WWW-Authenticate"), 1, true)
        local ok = H.run(function()
          return assert(uac:request{ method = "MESSAGE", uri = case[1]:uri("alice"),
            body = BODY, content_type = "text/plain", auth = ALICE })
        end)
        assert.equal(200, ok.status)
      end
    end)

  it("checks the qop option", function()
    local req_stub = setmetatable({}, { __index = function() error("not reached") end })
    for _, case in ipairs{
      { { "auth-conf" }, 'qop[1]: "auth" or "auth-int" expected, got auth-conf' },
      { {}, "qop must be a non-empty list" },
      { "auth", "qop must be a non-empty list" } } do
      local ok, err = pcall(sip.auth.check, req_stub, { realm = "r", qop = case[1],
        password = function() end })
      assert.is_false(ok)
      assert.matches("luasip.auth.check: " .. case[2], err, 1, true)
    end
  end)
end)
