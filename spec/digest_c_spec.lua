local H = require "spec.helper"
local core = require "luasip.core"
local auth = require "luasip.auth"
local _ = H

local digest = select(3, core.class("luasip.digest"))

describe("luasip.digest (C)", function()
  it("gives RFC 2617 3.5's answer for Mufasa (MD5, qop=auth)", function()
    local ha1 = digest.ha1("MD5", "Mufasa", "testrealm@host.com", "Circle Of Life")
    assert.equal("939e7578ed9e3c518a452acee763bce9", ha1)
    assert.equal("6629fae49393a05397450978507c4ef1", digest.response("MD5", ha1,
      "dcd98b7102dd2f0e8b11d0f600bfb0c093", "00000001", "0a4f113b", "auth", "GET",
      "/dir/index.html"))
  end)

  it("gives RFC 7616 3.9.1's answer with MD5", function()
    local ha1 = digest.ha1(nil, "Mufasa", "http-auth@example.org", "Circle of Life")
    assert.equal("8ca523f5e9506fed4657c9700eebdbec", digest.response(nil, ha1,
      "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", "00000001",
      "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET", "/dir/index.html"))
  end)

  local sha = digest.supports("SHA-256");
  (sha and it or pending)("gives RFC 7616 3.9.1's answer with SHA-256 (libcrypto)", function()
    local ha1 = digest.ha1("SHA-256", "Mufasa", "http-auth@example.org", "Circle of Life")
    assert.equal("753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
      digest.response("SHA-256", ha1, "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v",
        "00000001", "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ", "auth", "GET",
        "/dir/index.html"))
  end)

  it("agrees with luasip.auth.response for auth-int, MD5-sess and RFC 2069", function()
    local base = { method = "INVITE", uri = "sip:bob@example.test", nonce = "abc123",
      username = "alice", realm = "example.test", password = "secret", nc = "0000000a",
      cnonce = "c0ffee" }
    local ha1 = digest.ha1("MD5", "alice", "example.test", "secret")
    local cases = {
      { qop = "auth-int", body = "v=0\r\n" },
      { qop = "auth-int" },
      { algorithm = "MD5-sess", qop = "auth" },
      { algorithm = "MD5-sess" },
      {},
    }
    for _, c in ipairs(cases) do
      local p = {}
      for k, v in pairs(base) do p[k] = v end
      for k, v in pairs(c) do p[k] = v end
      local want = auth.response(p)
      local got = digest.response(c.algorithm, ha1:upper(), p.nonce, p.nc, p.cnonce, c.qop,
        p.method, p.uri, c.body)
      assert.equal(want, got)
      assert.is_true(digest.check(want:upper(), c.algorithm, ha1, p.nonce, p.nc, p.cnonce,
        c.qop, p.method, p.uri, c.body))
      assert.is_false(digest.check(want:sub(1, 31) .. "x", c.algorithm, ha1, p.nonce, p.nc,
        p.cnonce, c.qop, p.method, p.uri, c.body))
      assert.is_false(digest.check(want .. "0", c.algorithm, ha1, p.nonce, p.nc,
        p.cnonce, c.qop, p.method, p.uri, c.body))
    end
  end)

  it("parses credentials and challenges like luasip.auth.parse", function()
    local values = {
      'Digest username="Mufasa", realm="testrealm@host.com", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", '
        .. 'uri="/dir/index.html", qop=auth, nc=00000001, cnonce="0a4f113b", '
        .. 'response="6629fae49393a05397450978507c4ef1", opaque="5ccc069c403ebaf9f0171e9517f40e41"',
      [[Digest realm="a\\b\"c",NONCE="n",algorithm=MD5,stale=true]],
      '  digest   a = "x y" ,, b=c',
      'Digest', 'Digest a="unterminated', 'Digest a', 'Digest a=b, =c', '', '  ', '"x"',
    }
    for _, v in ipairs(values) do
      local s1, p1 = auth.parse(v)
      local s2, p2 = digest.parse(v)
      assert.equal(s1, s2, v)
      assert.same(p1, p2, v)
    end
    local _, p = digest.parse(values[2])
    assert.equal([[a\b"c]], p.realm)
    assert.equal("n", p.nonce)
    assert.is_nil(digest.parse(nil))
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() digest.ha1("MD4", "a", "b", "c") end,
      "luasip.digest.ha1: unsupported algorithm 'MD4'")
    assert.has_error(function() digest.response("MD5", "x", "n", nil, nil, "auth", "GET", "/") end,
      "luasip.digest.response: nc must be a string")
    assert.has_error(function() digest.response("MD5", "x", "n", "1", "c", "bogus", "GET", "/") end,
      'luasip.digest.response: qop must be "auth", "auth-int" or nil')
    assert.has_error(function() digest.check(nil, "MD5", "x", "n", "1", "c", "auth", "GET", "/") end,
      "luasip.digest.check: response must be a string")
    assert.is_false(digest.supports("MD4"))
    assert.is_true(digest.supports("md5"))
  end)
end)
