-- luasip.location's URI helpers: the same answers on every call (they are cached)
local location = require "luasip.location"

describe("luasip.location URI helpers", function()
  it("gives the canonical AOR of a URI on every call, cached or not", function()
    for _ = 1, 3 do
      assert.equal("sip:alice@example.com", location.aor("sip:alice@EXAMPLE.com;transport=udp"))
      assert.equal("sips:b%20b@h:5061", location.aor("<sips:b%20b@h:5061?subject=x>"))
    end
    assert.equal("sip:alice@example.com", location.aor{ scheme = "SIP", user = "alice",
      host = "Example.COM" })
  end)

  it("refuses a URI that is not sip or sips on every call", function()
    for _ = 1, 2 do
      local aor, err = location.aor("tel:+123")
      assert.is_nil(aor)
      assert.matches("sip: or sips:", err)
      assert.is_nil((location.aor("not a uri")))
      assert.is_nil((location.aor(nil)))
    end
  end)

  it("keeps answering right once its caches were emptied (more URIs than they hold)", function()
    for i = 1, 5000 do
      assert.equal("sip:u" .. i .. "@h", location.aor("sip:u" .. i .. "@H;x=" .. i))
    end
    assert.equal("sip:u1@h", location.aor("sip:u1@H;x=1"))
    assert.equal("u7", location.uri_user("sip:u7@H;x=7"))
  end)

  it("does not keep long URIs in its caches (300 To URIs of 2 KB)", function()
    collectgarbage()
    collectgarbage()
    local before = collectgarbage("count")
    local pad = ("x"):rep(2000)
    for i = 1, 300 do
      local uri = "sip:long" .. i .. "@h;p=" .. pad
      assert.equal("sip:long" .. i .. "@h", location.aor(uri))
      assert.equal("long" .. i, location.uri_user(uri))
    end
    collectgarbage()
    collectgarbage()
    -- kept, the 300 keys would hold ~600 KB
    local kept = collectgarbage("count") - before
    assert.is_true(kept < 200, ("%.0f KB kept"):format(kept))
    -- short ones are still answered from the cache, and answered the same
    assert.equal("sip:u1@h", location.aor("sip:u1@H;x=1"))
  end)

  it("compares URIs by RFC 3261 19.1.4, again and again", function()
    for _ = 1, 2 do
      assert.is_true(location.uri_equal("sip:a@H;transport=udp", "sip:a@h;transport=UDP"))
      assert.is_false(location.uri_equal("sip:a@h", "sip:a@h;user=phone"))
      assert.is_false(location.uri_equal("sip:a@h", "sips:a@h"))
      assert.is_true(location.uri_equal("x", "x"))
      assert.is_false(location.uri_equal(nil, "sip:a@h"))
    end
  end)

  it("returns the user part of a URI (uri_user), nil without one", function()
    assert.equal("a b", location.uri_user("sip:a%20b@h"))
    assert.is_nil(location.uri_user("sip:h"))
    assert.is_nil(location.uri_user(nil))
    assert.is_nil(location.uri_user("tel:+15551234"))
    assert.is_nil(location.uri_user("not a uri"))
    assert.equal("a@b", location.uri_user("sips:a%40b@h:5061;transport=tls"))
    assert.equal("a b", location.uri_user("sip:a%20b@h"))   -- memoised: the same again
  end)

  it("parse_uri hands out a table of the caller's own", function()
    local u = location.parse_uri("sip:a@h;p=1")
    u.params.p = "changed"
    assert.equal("1", location.parse_uri("sip:a@h;p=1").params.p)
    assert.is_true(location.uri_equal("sip:a@h;p=1", "sip:a@h;p=1"))
  end)

  it("parses a SIP URI into its parts (escapes, IPv6, port, parameters, headers)", function()
    assert.same({ scheme = "sips", user = "A b", password = "p:w", host = "[::1]", port = 5061,
      params = { transport = "tcp", lr = true, maddr = "x" }, headers = { subject = "Hi%", x = "" } },
      location.parse_uri(" <SIPS:A%20b:p:w@[::1]:0005061;Transport=TCP;lr;maddr=y;MADDR=X"
        .. "?Subject=Hi%25&x> "))
    assert.same({ scheme = "tel", opaque = "+1-234" }, location.parse_uri("TEL:+1-%32%33%34"))
    assert.same({ scheme = "sip", user = "", host = "h", params = {}, headers = {} },
      location.parse_uri("sip:@h"))
    assert.equal("5060", tostring(location.parse_uri("sip:h:5060").port))
    for uri, why in pairs{ ["sip:"] = "not a URI", ["sip:a@"] = "no host in URI",
      ["sip:[::1"] = "no host in URI", ["sip:h:x"] = "bad URI after host", [""] = "not a URI",
      ["sip:h" .. (";p"):rep(65)] = "too many URI parameters" } do
      local u, err = location.parse_uri(uri)
      assert.is_nil(u, uri)
      assert.equal(why, err, uri)
    end
    assert.same({ nil, "URI expected" }, { location.parse_uri(42) })
    -- longer than the parser's stack scratch
    local long = "sip:" .. ("%41"):rep(400) .. "@H;p=" .. ("%42"):rep(300)
    local u = location.parse_uri(long)
    assert.equal(("A"):rep(400), u.user)
    assert.equal(("b"):rep(300), u.params.p)
    assert.equal("sip:" .. ("A"):rep(400) .. "@h", location.aor(long))
    assert.is_true(location.uri_equal(long, long:gsub("@H", "@h")))
  end)

  it("escapes what a user part may not carry in the canonical AOR, and keeps the port", function()
    assert.equal("sip:a%22%20b;c@h:5060", location.aor("sip:a%22 b;c@H:05060;x"))
    assert.equal("sip:h", location.aor("sip:@h"))
  end)

  it("compares parameters as 19.1.4 says: user, ttl, method, maddr must be in both", function()
    assert.is_true(location.uri_equal("sip:a@h;foo=1", "sip:a@h"))
    assert.is_false(location.uri_equal("sip:a@h", "sip:a@h;maddr=x"))
    assert.is_false(location.uri_equal("sip:a@h;foo=1", "sip:a@h;foo=2"))
    assert.is_true(location.uri_equal("sip:a@h;foo=1;foo=2", "sip:a@h;foo=2"))   -- the last counts
    assert.is_false(location.uri_equal("sip:a@h;lr", "sip:a@h;lr="))
    assert.is_false(location.uri_equal("sip:a@h?x=1", "sip:a@h"))
    assert.is_false(location.uri_equal("sip:a@h?x=A", "sip:a@h?x=a"))
    assert.is_false(location.uri_equal("sip:a@h:5060", "sip:a@h"))
    assert.is_true(location.uri_equal("sip:a@h:5060", "sip:a@h:05060"))
    assert.is_false(location.uri_equal("sip:A@h", "sip:a@h"))
    assert.is_false(location.uri_equal("sip:h:x", "sip:h:x;a"))                 -- not URIs
    assert.is_false(location.uri_equal(5060, 5060.5))
  end)
end)
