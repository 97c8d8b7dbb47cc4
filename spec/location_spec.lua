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
  end)

  it("parse_uri hands out a table of the caller's own", function()
    local u = location.parse_uri("sip:a@h;p=1")
    u.params.p = "changed"
    assert.equal("1", location.parse_uri("sip:a@h;p=1").params.p)
    assert.is_true(location.uri_equal("sip:a@h;p=1", "sip:a@h;p=1"))
  end)
end)
