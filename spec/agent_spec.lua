local H = require "spec.helper"
local sip = H.sip

describe("luasip.agent", function()
  after_each(function() H.close_agents() end)

  it("listens on an OS-chosen port, the same for UDP and TCP, and reports it", function()
    local a = H.agent()
    local t = a:transports()
    assert.equal(2, #t)
    assert.equal("udp", t[1].transport)
    assert.equal("tcp", t[2].transport)
    assert.is_true(t[1].port > 0)
    assert.equal(t[1].port, t[2].port)
    assert.equal("sip:127.0.0.1:" .. t[1].port, a:contact())
    assert.equal("sip:bob@127.0.0.1:" .. t[1].port, a:uri("bob"))
  end)

  it("closes idempotently and refuses use after close", function()
    local a = H.agent()
    assert.is_true(a:close())
    assert.is_true(a:close())
    assert.is_true(a:closed())
    assert.has_error(function() a:on("OPTIONS", print) end,
      "attempt to use a closed luasip.agent (luasip.agent:on)")
  end)

  it("returns nil, err, code when it cannot listen", function()
    local a = H.agent()
    local b, err, code = sip.agent{ listen = { "sip:127.0.0.1:" .. a:transports()[1].port ..
      ";transport=udp" } }
    assert.is_nil(b)
    assert.matches("cannot listen", err)
    assert.matches("Address already in use$", err)     -- says why (the system's reason)
    assert.equal("listen", code)
  end)

  it("rejects bad options with a message naming the function", function()
    assert.has_error(function() sip.agent() end, "luasip.agent: options table expected")
    assert.has_error(function() sip.agent{ listen = { "http://x" } } end,
      "luasip.agent: listen[1] must be a sip: URI")
    assert.has_error(function() sip.agent{ t1 = -1 } end,
      "luasip.agent: t1 must be a number of seconds in (0, 60]")
    -- the Server / User-Agent header of every message: no header injection through it
    assert.has_error(function() sip.agent{ user_agent = "x\r\nX-Injected: 1" } end,
      "luasip.agent: user_agent must be a string without CR or LF")
  end)

  it("returns the previous handler from on()", function()
    local a = H.agent()
    local f1, f2 = function() end, function() end
    assert.is_nil(a:on("options", f1))
    assert.equal(f1, a:on("OPTIONS", f2))
    assert.equal(f2, a:on("OPTIONS", nil))
    assert.same({}, a:handlers())
  end)

  local function ping(from, to_uri)
    return H.run(function() return from:request{ method = "OPTIONS", uri = to_uri } end)
  end

  it("serves UDP and TCP over IPv6", function()
    local a = H.agent{ listen = { "sip:[::1]:0" } }
    local b = H.agent{ listen = { "sip:[::1]:0" } }
    local seen = {}
    a:on("OPTIONS", function(req)
      seen[#seen + 1] = req.transport .. " " .. req.source.address
      req:reply(200)
    end)
    assert.equal(200, ping(b, a:contact()).status)
    assert.equal(200, ping(b, a:contact() .. ";transport=tcp").status)
    assert.same({ "udp ::1", "tcp ::1" }, seen)
  end)

  it("talks IPv4 and IPv6 from one agent, with a Contact of the family used", function()
    local a4 = H.agent()
    local a6 = H.agent{ listen = { "sip:[::1]:0" } }
    local dual = H.agent{ listen = { "sip:127.0.0.1:0", "sip:[::1]:0" } }
    local seen = {}
    local function h(req)
      seen[#seen + 1] = { req.source.address, req.contact[1].uri:match("^sip:(.*):%d+$") }
      req:reply(486)
    end
    a4:on("INVITE", h)
    a6:on("INVITE", h)
    H.run(function()
      assert.equal(486, select(3, dual:request{ method = "INVITE", uri = a6:contact() }))
      assert.equal(486, select(3, dual:request{ method = "INVITE", uri = a4:contact() }))
    end)
    assert.same({ { "::1", "[::1]" }, { "127.0.0.1", "127.0.0.1" } }, seen)
  end)

  it("sends its own Contact on a TCP INVITE with transport=tcp", function()
    local a, b = H.agent(), H.agent()
    local contact
    a:on("INVITE", function(req) contact = req.contact[1].uri; req:reply(486) end)
    local _, _, code = H.run(function()
      return b:request{ method = "INVITE", uri = a:contact() .. ";transport=tcp" }
    end)
    assert.equal(486, code)
    assert.equal(b:contact() .. ";transport=tcp", contact)
  end)
end)
