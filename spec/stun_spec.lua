local H = require "spec.helper"

-- STUN Binding on the SIP UDP port (RFC 5389; the keep-alives of RFC 5626 4.4.2), answered
-- by csrc/stun.c in place of sofia's built-in server (which logged every request to
-- stderr and leaked memory on malformed ones); the requests come from spec/peers/stun.py.
describe("luasip.agent STUN keep-alives", function()
  after_each(function() H.close_agents() end)

  local function bytes(hex)
    return (hex:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
  end
  local function get16(s, i) return s:byte(i) * 256 + s:byte(i + 1) end
  local function bxor(a, b)                   -- (Lua 5.1 and LuaJIT have no ~ operator)
    local r, bit = 0, 1
    while a > 0 or b > 0 do
      if a % 2 ~= b % 2 then r = r + bit end
      a, b, bit = math.floor(a / 2), math.floor(b / 2), bit * 2
    end
    return r
  end

  -- the answer of agent a to a message of kind (spec/peers/stun.py): { from = the port
  -- it was sent from, type = the answer's type, attrs = { [type] = value }, order =
  -- { types }, fingerprint = "OK" | "BAD" | nil } or { from, none = true }
  local function stun(a, kind, host)
    local t = a:transports()[1]
    local p = H.background({ "python3", "spec/peers/stun.py", host or "127.0.0.1",
      tostring(t.port), kind }, 10)
    H.run_until(function() return p.done() end, 10, "stun.py")
    local from, hex, fp = p.log():match("^(%d+)\n(%S+)\n?(%S*)")
    p.kill()
    assert(from, "stun.py: " .. p.log())
    if hex == "NONE" then return { from = tonumber(from), none = true } end
    local m = bytes(hex)
    local r = { from = tonumber(from), type = get16(m, 1), attrs = {}, order = {},
      fingerprint = fp:match("FINGERPRINT%-(%u+)") }
    assert.equal(#m - 20, get16(m, 3))
    local off = 21
    while off <= #m do
      local ty, len = get16(m, off), get16(m, off + 2)
      r.attrs[ty] = m:sub(off + 4, off + 3 + len)
      r.order[#r.order + 1] = ty
      off = off + 4 + math.ceil(len / 4) * 4
    end
    return r
  end

  -- the address in a (XOR-)MAPPED-ADDRESS value: "ip", port
  local function address(v, xor)
    local port = get16(v, 3)
    if xor then port = bxor(port, 0x2112) end
    local mask = { 0x21, 0x12, 0xA4, 0x42 }
    local parts = {}
    for i = 5, #v do
      local b = v:byte(i)
      if xor and v:byte(2) == 1 then b = bxor(b, mask[i - 4]) end
      parts[#parts + 1] = b
    end
    return table.concat(parts, "."), port
  end

  -- a Binding request of kind answered with the sender's address in attribute attr alone
  local function answers_with_address(kind, attr)
    local r = stun(H.agent(), kind)
    assert.equal(0x0101, r.type)
    assert.same({ attr }, r.order)
    local ip, port = address(r.attrs[attr], attr == 0x0020)
    assert.equal("127.0.0.1", ip)
    assert.equal(r.from, port)
    return r
  end

  it("answers an RFC 5389 Binding request with the sender's XOR-MAPPED-ADDRESS", function()
    assert.is_nil(answers_with_address("binding", 0x0020).fingerprint)
  end)

  it("answers an RFC 3489 Binding request (no magic cookie) with MAPPED-ADDRESS", function()
    answers_with_address("rfc3489", 0x0001)
  end)

  it("answers with a FINGERPRINT when the request has a right one, not at all when wrong", function()
    local a = H.agent()
    local r = stun(a, "fingerprint")
    assert.equal(0x0101, r.type)
    assert.same({ 0x0020, 0x8028 }, r.order)
    assert.equal("OK", r.fingerprint)
    assert.is_true(stun(a, "badfp").none)
  end)

  it("answers 420 with UNKNOWN-ATTRIBUTES to a comprehension-required attribute it does not know", function()
    local a = H.agent()
    local r = stun(a, "unknown")
    assert.equal(0x0111, r.type)
    local code = r.attrs[0x0009]
    assert.equal(4, code:byte(3))
    assert.equal(20, code:byte(4))
    assert.equal("\127\1", r.attrs[0x000A])
    -- a comprehension-optional one is ignored
    assert.equal(0x0101, stun(a, "optional").type)
  end)

  it("drops malformed messages and indications, and goes on serving SIP", function()
    local a = H.agent()
    a:on("OPTIONS", function(req) req:reply(200) end)
    for _, kind in ipairs{ "overrun", "badlength", "indication" } do
      assert.is_true(stun(a, kind).none, kind)
    end
    assert.equal("SIP/2.0 200 OK",
      H.send_raw(a:transports()[1].port, H.raw_request("OPTIONS", "sip:x@127.0.0.1")))
    assert.equal(0x0101, stun(a, "binding").type)
  end)

  it("answers over IPv6 with the sender's IPv6 address", function()
    local a = H.agent{ listen = { "sip:[::1]:0" } }
    local r = stun(a, "binding", "::1")
    assert.equal(0x0101, r.type)
    local v = r.attrs[0x0020]
    assert.equal(2, v:byte(2))                 -- family IPv6
    assert.equal(r.from, bxor(get16(v, 3), 0x2112))
    assert.equal(20, #v)
  end)
end)
