local H = require "spec.helper"
local sip = H.sip

local AOR = "sip:alice@example.test"

describe("luasip.registrar", function()
  local uas, uac, loc, cseq
  before_each(function()
    uas, uac = H.agent(), H.agent()
    cseq = 0
  end)
  after_each(function() H.close_agents() end)

  local function serve(opts)
    local reg
    reg, loc = sip.registrar(opts or {})
    uas:on("REGISTER", reg)
    return loc
  end

  -- register{ header = value | false } -> response | nil, err, code, response
  -- To/From alice, Call-ID "reg-1@test" and a rising CSeq unless given (false drops one)
  local function register(headers, via)
    cseq = cseq + 1
    local h = { To = "<" .. AOR .. ">", From = "<" .. AOR .. ">",
      ["Call-ID"] = "reg-1@test", CSeq = cseq .. " REGISTER" }
    for k, v in pairs(headers or {}) do h[k] = v end
    for k, v in pairs(h) do if v == false then h[k] = nil end end
    return H.run(function()
      return (via or uac):request{ method = "REGISTER", uri = uas:contact(), headers = h }
    end)
  end

  -- the Contact list of a response as { uri = {expires =, q =} }
  local function listed(res)
    local set = {}
    for _, c in ipairs(res.contact) do set[c.uri] = { expires = c.expires, q = c.q } end
    return set
  end

  local function uris(targets)
    local list = {}
    for i, t in ipairs(targets) do list[i] = t.uri end
    return list
  end

  it("adds a binding and answers 200 listing it with its expires and a Date", function()
    serve()
    local res = assert(register{ Contact = "<sip:alice@127.0.0.1:5999>", Expires = "120" })
    assert.equal(200, res.status)
    assert.same({ ["sip:alice@127.0.0.1:5999"] = { expires = 120 } }, listed(res))
    assert.matches("^%a%a%a, %d%d %a%a%a %d%d%d%d %d%d:%d%d:%d%d GMT$", res:header("Date"))
    local targets = loc:lookup(AOR)
    assert.equal(1, #targets)
    assert.equal("sip:alice@127.0.0.1:5999", targets[1].uri)
    assert.equal(120, targets[1].expires)
    assert.equal(1, targets[1].q)
    assert.equal(AOR, targets[1].aor)
    assert.same({ AOR }, loc:aors())
  end)

  it("refreshes a binding in place and removes it with expires=0", function()
    serve()
    assert(register{ Contact = "<sip:alice@127.0.0.1:5999;transport=udp>", Expires = "60" })
    local first = loc:bindings(AOR)[1]
    local res = assert(register{ Contact = "<sip:alice@127.0.0.1:5999;Transport=UDP>",
      Expires = "300" })
    assert.equal(1, #res.contact)
    assert.equal(300, res.contact[1].expires)
    local b = loc:bindings(AOR)
    assert.equal(1, #b)
    assert.equal(300, b[1].expires)
    assert.equal(first.registered_at, b[1].registered_at)
    assert.equal(cseq, b[1].cseq)
    res = assert(register{ Contact = "<sip:alice@127.0.0.1:5999;transport=udp>;expires=0" })
    assert.equal(200, res.status)
    assert.same({}, res.contact)
    assert.same({}, loc:lookup(AOR))
    assert.same({}, loc:aors())
  end)

  it("keeps several contacts per AOR and looks them up highest q first", function()
    serve()
    local res = assert(register{ Contact = { "<sip:a@127.0.0.1:1>;q=0.1",
      "<sip:b@127.0.0.1:2>;q=1.0", "<sip:c@127.0.0.1:3>;q=0.5" }, Expires = "600" })
    assert.equal(3, #res.contact)
    res = assert(register{ ["Call-ID"] = "other-device@test",
      Contact = "<sip:d@127.0.0.1:4>;q=0.7", Expires = "600" })
    assert.same({
      ["sip:a@127.0.0.1:1"] = { expires = 600, q = 0.1 },
      ["sip:b@127.0.0.1:2"] = { expires = 600, q = 1 },
      ["sip:c@127.0.0.1:3"] = { expires = 600, q = 0.5 },
      ["sip:d@127.0.0.1:4"] = { expires = 600, q = 0.7 },
    }, listed(res))
    local targets = loc:lookup(AOR)
    assert.same({ "sip:b@127.0.0.1:2", "sip:d@127.0.0.1:4", "sip:c@127.0.0.1:3",
      "sip:a@127.0.0.1:1" }, uris(targets))
    assert.same({ 1, 0.7, 0.5, 0.1 }, { targets[1].q, targets[2].q, targets[3].q,
      targets[4].q })
  end)

  it("takes each contact's expires from its parameter, else Expires, else the default", function()
    serve{ default_expires = 1800 }
    local res = assert(register{ Contact = { "<sip:a@127.0.0.1:1>;expires=100",
      "<sip:b@127.0.0.1:2>" }, Expires = "200" })
    assert.same({ ["sip:a@127.0.0.1:1"] = { expires = 100 },
      ["sip:b@127.0.0.1:2"] = { expires = 200 } }, listed(res))
    res = assert(register{ Contact = "<sip:c@127.0.0.1:3>" })
    assert.equal(1800, listed(res)["sip:c@127.0.0.1:3"].expires)
    assert.equal(3, #res.contact)
    -- a contact given twice in one request: the last one counts
    res = assert(register{ Contact = { "<sip:c@127.0.0.1:3>;expires=500",
      "<sip:c@127.0.0.1:3>;expires=700" } })
    assert.equal(700, listed(res)["sip:c@127.0.0.1:3"].expires)
    assert.equal(3, #res.contact)
  end)

  it("removes every binding with Contact: * and Expires: 0, and answers 400 to * otherwise",
    function()
    serve()
    assert(register{ Contact = { "<sip:a@127.0.0.1:1>", "<sip:b@127.0.0.1:2>" } })
    local _, _, code = register{ Contact = "*", Expires = "60" }
    assert.equal(400, code)
    _, _, code = register{ Contact = "*" }
    assert.equal(400, code)
    _, _, code = register{ Contact = { "*", "<sip:c@127.0.0.1:3>" }, Expires = "0" }
    assert.equal(400, code)
    assert.equal(2, #loc:lookup(AOR))
    local res = assert(register{ Contact = "*", Expires = "0" })
    assert.equal(200, res.status)
    assert.same({}, res.contact)
    assert.same({}, loc:lookup(AOR))
  end)

  it("answers 423 with Min-Expires to a too brief interval and caps a too long one", function()
    serve{ min_expires = 60, max_expires = 7200 }
    local _, _, code, res = register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "30" }
    assert.equal(423, code)
    assert.equal("60", res:header("Min-Expires"))
    -- all or nothing: one brief contact refuses the whole request
    _, _, code = register{ Contact = { "<sip:a@127.0.0.1:1>;expires=3600",
      "<sip:b@127.0.0.1:2>;expires=10" } }
    assert.equal(423, code)
    assert.same({}, loc:lookup(AOR))
    res = assert(register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "100000" })
    assert.equal(7200, res.contact[1].expires)
    res = assert(register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "60" })
    assert.equal(60, res.contact[1].expires)
  end)

  it("lets bindings expire on time", function()
    serve{ min_expires = 1 }
    local res = assert(register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "1" })
    assert.equal(1, res.contact[1].expires)
    assert.equal(1, #loc:lookup(AOR))
    H.run_until(function() return #loc:lookup(AOR) == 0 end, 4, "binding expiry")
    assert.same({}, loc:aors())
    res = assert(register())
    assert.same({}, res.contact)
  end)

  it("fails an out-of-order REGISTER of the same Call-ID with 500, atomically", function()
    serve()
    assert(register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "60", CSeq = "10 REGISTER" })
    local _, _, code = register{ Contact = "<sip:a@127.0.0.1:1>", Expires = "300",
      CSeq = "10 REGISTER" }
    assert.equal(500, code)
    _, _, code = register{ Contact = { "<sip:b@127.0.0.1:2>", "<sip:a@127.0.0.1:1>" },
      Expires = "300", CSeq = "9 REGISTER" }
    assert.equal(500, code)
    local targets = loc:lookup(AOR)
    assert.same({ "sip:a@127.0.0.1:1" }, uris(targets))
    assert.is_true(targets[1].expires <= 60)
    -- another Call-ID (the UA restarted) replaces the binding whatever its CSeq
    local res = assert(register{ ["Call-ID"] = "reg-2@test", CSeq = "1 REGISTER",
      Contact = "<sip:a@127.0.0.1:1>", Expires = "300" })
    assert.equal(300, res.contact[1].expires)
    assert.equal("reg-2@test", loc:bindings(AOR)[1].call_id)
    -- Contact: * follows the same rule
    _, _, code = register{ ["Call-ID"] = "reg-2@test", CSeq = "1 REGISTER", Contact = "*",
      Expires = "0" }
    assert.equal(500, code)
    assert.equal(1, #loc:lookup(AOR))
    assert(register{ ["Call-ID"] = "reg-2@test", CSeq = "2 REGISTER", Contact = "*",
      Expires = "0" })
    assert.same({}, loc:lookup(AOR))
  end)

  it("refuses a third-party registration with 403 unless the policy allows it", function()
    serve()
    local _, err, code = register{ From = "<sip:bob@example.test>",
      Contact = "<sip:a@127.0.0.1:1>" }
    assert.equal(403, code)
    assert.equal("403 Third-Party Registration Forbidden", err)
    assert.same({}, loc:lookup(AOR))
    local seen
    serve{ third_party = function(req, from_aor, to_aor)
      seen = { req.method, from_aor, to_aor }
      return from_aor == "sip:bob@example.test"
    end }
    assert(register{ From = "<sip:bob@example.test>", Contact = "<sip:a@127.0.0.1:1>" })
    assert.same({ "REGISTER", "sip:bob@example.test", AOR }, seen)
    assert.equal(1, #loc:lookup(AOR))
    _, _, code = register{ From = "<sip:eve@example.test>", Contact = "<sip:e@127.0.0.1:1>" }
    assert.equal(403, code)
  end)

  it("stores Path with the binding, returns it in lookup and echoes it to a UA that supports path",
    function()
    serve()
    local path = { "<sip:edge1.example.test;lr>", "<sip:edge2.example.test;lr>" }
    local res = assert(register{ Contact = "<sip:a@127.0.0.1:1>", Path = path })
    assert.same({}, res:headers("Path"))
    assert.same(path, loc:lookup(AOR)[1].path)
    res = assert(register{ Contact = "<sip:a@127.0.0.1:1>", Path = table.concat(path, ", "),
      Supported = "path" })
    assert.same(path, res:headers("Path"))
    assert.same(path, loc:lookup(AOR)[1].path)
    -- a refresh without Path drops the old route
    assert(register{ Contact = "<sip:a@127.0.0.1:1>" })
    assert.is_nil(loc:lookup(AOR)[1].path)
  end)

  it("answers a REGISTER without Contact with the current bindings and changes nothing",
    function()
    serve()
    local res = assert(register())
    assert.equal(200, res.status)
    assert.same({}, res.contact)
    assert(register{ Contact = { "<sip:a@127.0.0.1:1>;q=0.2", "<sip:b@127.0.0.1:2>" },
      Expires = "300" })
    local before = loc:bindings(AOR)
    res = assert(register{ Expires = "0" })
    assert.same({ ["sip:a@127.0.0.1:1"] = { expires = 300, q = 0.2 },
      ["sip:b@127.0.0.1:2"] = { expires = 300 } }, listed(res))
    assert.same(before, loc:bindings(AOR))
  end)

  it("keeps the source, transport, User-Agent, +sip.instance and reg-id of each binding",
    function()
    serve()
    local phone = H.agent{ user_agent = "spec-phone/1.0" }
    local instance = "urn:uuid:00000000-0000-1000-8000-000a95a0e128"
    local res = assert(register({ Contact = '<sip:alice@192.0.2.1:5060>;+sip.instance="<'
      .. instance .. '>";reg-id=1' }, phone))
    assert.equal('"<' .. instance .. '>"', res.contact[1].params["+sip.instance"])
    assert.equal("1", res.contact[1].params["reg-id"])
    local t = loc:lookup(AOR)[1]
    assert.same({ address = "127.0.0.1", port = phone:transports()[1].port, transport = "udp" },
      t.source)
    assert.equal("spec-phone/1.0", t.user_agent)
    assert.equal(instance, t.instance)
    assert.equal(1, t.reg_id)
    -- over TCP the binding records the TCP flow
    assert(H.run(function()
      return phone:request{ method = "REGISTER", uri = uas:contact() .. ";transport=tcp",
        headers = { To = "<" .. AOR .. ">", From = "<" .. AOR .. ">",
          Contact = "<sip:alice@192.0.2.1:5060;transport=tcp>" } }
    end))
    local tcp
    for _, b in ipairs(loc:lookup(AOR)) do
      if b.uri:match("transport=tcp") then tcp = b end
    end
    assert.equal("tcp", tcp.source.transport)
    assert.equal("127.0.0.1", tcp.source.address)
  end)

  it("canonicalises the AOR from To and matches contacts by RFC 3261 URI equality", function()
    serve()
    local to = "<sip:%61lice@EXAMPLE.test;user=phone>"
    assert(register{ To = to, From = to,
      Contact = "<sip:alice@phone.example.test:5999;transport=udp>" })
    assert.same({ AOR }, loc:aors())
    assert.equal(1, #loc:lookup("sip:alice@Example.Test;user=phone"))
    assert.equal(1, #loc:lookup{ scheme = "sip", user = "alice", host = "example.test" })
    -- equal URIs refresh the binding; a port, maddr or user=phone makes another one
    assert(register{ Contact = "<sip:alice@PHONE.example.test:5999;transport=UDP;x=1>" })
    assert.equal(1, #loc:lookup(AOR))
    assert(register{ Contact = { "<sip:alice@phone.example.test:5998;transport=udp>",
      "<sip:alice@phone.example.test:5999;transport=udp;maddr=192.0.2.9>",
      "<sip:alice@phone.example.test:5999;transport=udp;user=phone>" } })
    assert.equal(4, #loc:lookup(AOR))
    -- ports are significant in an AOR too
    assert.same({}, loc:lookup("sip:alice@example.test:5060"))
  end)

  it("answers 404 outside the configured domains and 400 for a To that is not SIP", function()
    serve{ domains = { "Example.Test" } }
    local other = "<sip:alice@other.test>"
    local _, _, code = register{ To = other, From = other, Contact = "<sip:a@127.0.0.1:1>" }
    assert.equal(404, code)
    local tel = "<tel:+15551234567>"
    _, _, code = register{ To = tel, From = tel, Contact = "<sip:a@127.0.0.1:1>" }
    assert.equal(400, code)
    assert(register{ Contact = "<sip:a@127.0.0.1:1>" })
    assert.same({ AOR }, loc:aors())
  end)

  it("answers 400 to a Contact with a bad q", function()
    serve()
    local _, _, code = register{ Contact = "<sip:a@127.0.0.1:1>;q=1.5" }
    assert.equal(400, code)
    assert.same({}, loc:lookup(AOR))
  end)

  it("lets the authorize hook challenge, accept or refuse", function()
    local seen = {}
    serve{ authorize = function(req, aor)
      seen[#seen + 1] = aor
      if not req:header("Authorization") then
        req:reply(401, "Unauthorized", { headers = {
          ["WWW-Authenticate"] = 'Digest realm="example.test", nonce="n1"' } })
        return nil
      end
      return aor == AOR and "alice" or nil
    end }
    local _, _, code, res = register{ Contact = "<sip:a@127.0.0.1:1>" }
    assert.equal(401, code)
    assert.matches('realm="example.test"', res:header("WWW-Authenticate"))
    local creds = 'Digest username="alice", realm="example.test", nonce="n1", '
      .. 'uri="sip:127.0.0.1", response="0123456789abcdef0123456789abcdef"'
    assert(register{ Contact = "<sip:a@127.0.0.1:1>", Authorization = creds })
    assert.equal(1, #loc:lookup(AOR))
    local bob = "<sip:bob@example.test>"
    _, _, code = register{ To = bob, From = bob, Contact = "<sip:b@127.0.0.1:1>",
      Authorization = creds }
    assert.equal(403, code)
    assert.same({ AOR, AOR, "sip:bob@example.test" }, seen)
  end)

  it("checks its options", function()
    assert.has_error(function() sip.registrar{ min_expires = -1 } end,
      "luasip.registrar: min_expires must be a whole number of seconds >= 0")
    assert.has_error(function() sip.registrar{ min_expires = 100, max_expires = 10 } end,
      "luasip.registrar: min_expires is above max_expires")
    assert.has_error(function() sip.registrar{ authorize = true } end,
      "luasip.registrar: authorize must be a function")
    local reg, l = sip.registrar{ location = sip.location() }
    assert.is_function(reg)
    assert.is_function(l.lookup)
  end)
end)

describe("luasip.location", function()
  local t, store, loc
  before_each(function()
    t = 1000
    store = sip.store.memory{ clock = function() return t end }
    loc = sip.location{ store = store }
  end)

  local function binding(uri, expires, q)
    return { uri = uri, q = q, expires_at = t + expires, call_id = "c", cseq = 1,
      registered_at = t, updated_at = t }
  end

  it("looks up live bindings by q, purging the expired ones", function()
    assert(loc:update(AOR, function(list)
      assert.same({}, list)
      return { binding("sip:a@h", 10, 0.5), binding("sip:b@h", 20), binding("sip:c@h", 30, 0.9) }
    end))
    local targets = loc:lookup(AOR)
    assert.same({ "sip:b@h", "sip:c@h", "sip:a@h" },
      { targets[1].uri, targets[2].uri, targets[3].uri })
    assert.same({ 20, 30, 10 }, { targets[1].expires, targets[2].expires, targets[3].expires })
    t = t + 15
    targets = loc:lookup(AOR)
    assert.same({ "sip:b@h", "sip:c@h" }, { targets[1].uri, targets[2].uri })
    assert.equal(2, #store:get("location:" .. AOR).bindings)
    t = t + 30
    assert.same({}, loc:lookup(AOR))
    assert.same({}, store:keys(""))
  end)

  it("removes one contact, by URI equality, or every binding of an AOR", function()
    assert(loc:update(AOR, function()
      return { binding("sip:a@h;transport=udp", 60), binding("sip:b@h", 60),
        binding("sip:c@h", 60) }
    end))
    assert.equal(1, loc:remove(AOR, "sip:a@H;transport=UDP"))
    assert.equal(0, loc:remove(AOR, "sip:zz@h"))
    assert.equal(2, #loc:lookup(AOR))
    assert.equal(2, loc:remove(AOR))
    assert.same({}, loc:lookup(AOR))
    assert.same({}, loc:aors())
  end)

  it("leaves the bindings unchanged when an update refuses", function()
    assert(loc:update(AOR, function() return { binding("sip:a@h", 60) } end))
    assert.same({ nil, "no", 500 }, { loc:update(AOR, function() return nil, "no", 500 end) })
    assert.equal(1, #loc:lookup(AOR))
  end)

  it("shares bindings between locations on one store", function()
    local other = sip.location{ store = store }
    assert(loc:update(AOR, function() return { binding("sip:a@h", 60) } end))
    assert.equal("sip:a@h", other:lookup(AOR)[1].uri)
    assert.same({ AOR }, other:aors())
    local apart = sip.location{ store = store, prefix = "other:" }
    assert.same({}, apart:lookup(AOR))
  end)

  it("canonicalises AORs and raises on one that is not SIP", function()
    assert.equal("sip:alice@example.test", loc:aor("<SIP:%61lice@Example.TEST;user=phone?x=y>"))
    assert.equal("sips:a%20b@example.test:5061", loc:aor("sips:a%20b@example.test:5061"))
    assert.equal("sip:example.test", loc:aor("sip:example.test;lr"))
    assert.is_nil(loc:aor("tel:+1555"))
    assert.has_error(function() loc:lookup("tel:+1555") end)
  end)
end)

describe("luasip.store.memory", function()
  local t, store
  before_each(function()
    t = 0
    store = sip.store.memory{ clock = function() return t end }
  end)

  it("gets, sets, deletes and lists keys by prefix, handing out copies", function()
    local v = { a = { 1, 2 }, b = "x", c = true }
    assert.is_true(store:set("p:1", v))
    assert.is_true(store:set("p:2", 2))
    assert.is_true(store:set("q:1", "q"))
    v.a[1] = 99
    local got = store:get("p:1")
    assert.same({ a = { 1, 2 }, b = "x", c = true }, got)
    got.b = "changed"
    assert.equal("x", store:get("p:1").b)
    assert.same({ "p:1", "p:2" }, store:keys("p:"))
    assert.same({ "p:1", "p:2", "q:1" }, store:keys(""))
    assert.is_true(store:del("p:1"))
    assert.is_nil(store:get("p:1"))
    assert.same({ "p:2" }, store:keys("p:"))
    assert.is_true(store:close())
  end)

  it("expires keys after their ttl on its clock", function()
    store:set("k", "v", 5)
    store:set("forever", "v")
    t = 4.9
    assert.equal("v", store:get("k"))
    t = 5
    assert.is_nil(store:get("k"))
    assert.same({ "forever" }, store:keys(""))
    store:set("j", "v", 1)
    t = 10
    assert.equal(1, store:purge())
    assert.equal(10, store:now())
  end)

  it("updates atomically: fn sees the value and writes, deletes or keeps it", function()
    assert.is_true(store:update("n", function(old, now)
      assert.is_nil(old)
      assert.equal(0, now)
      return { count = 1 }, 10
    end))
    store:update("n", function(old) return { count = old.count + 1 } end)
    assert.same({ count = 2 }, store:get("n"))
    store:update("n", function() return false end)
    assert.same({ count = 2 }, store:get("n"))
    t = 100   -- the second write had no ttl
    assert.same({ count = 2 }, store:get("n"))
    store:update("n", function() return nil end)
    assert.is_nil(store:get("n"))
  end)

  it("refuses values that cannot be serialised", function()
    assert.has_error(function() store:set("k", { f = print }) end)
    assert.has_error(function() store:set("k", io.stdout) end)
    local cycle = {}
    cycle.self = cycle
    assert.has_error(function() store:set("k", cycle) end)
    assert.has_error(function() store:set(1, "v") end)
    assert.has_error(function() store:set("k", "v", 0) end)
    assert.is_nil(store:get("k"))
  end)
end)
