local H = require "spec.helper"
local sip = H.sip

-- The front door's per-source policy (csrc/flood.c, agent option flood): before any Lua
-- runs, a source faster than `rate` is blocked for `block` seconds (its requests dropped,
-- or answered `status`), scanners are dropped, header bombs get 400.
describe("sip.agent{ flood = }", function()
  after_each(function() H.close_agents() end)

  -- n OPTIONS sent at once from agent a to uri; returns the transactions
  local function burst(a, uri, n, headers)
    local txs = {}
    for i = 1, n do
      txs[i] = assert(a:send{ method = "OPTIONS", uri = uri, headers = headers })
    end
    return txs
  end

  local function answered(txs)
    local n = 0
    for _, tx in ipairs(txs) do if tx:status() >= 200 then n = n + 1 end end
    return n
  end

  local function options(a, uri, headers)
    return H.run(function()
      return a:request{ method = "OPTIONS", uri = uri, headers = headers, timeout = 1 }
    end)
  end

  it("blocks a source past its rate, serves the others, and releases it once quiet", function()
    local handled = 0
    local uas = H.agent{ listen = { "sip:127.0.0.1:0", "sip:[::1]:0" },
      flood = { rate = 20, burst = 10, block = 0.5 } }
    uas:on("OPTIONS", function(req) handled = handled + 1; req:reply(200) end)
    local port4, port6
    for _, t in ipairs(uas:transports()) do
      if t.host:find(":", 1, true) then port6 = t.port else port4 = t.port end
    end
    local attacker = H.agent()
    local friend = H.agent{ listen = { "sip:[::1]:0" } }
    local logs, restore = H.capture_logs()
    local txs = burst(attacker, "sip:127.0.0.1:" .. port4, 60)
    H.run_until(function() return answered(txs) >= 10 and uas:flood().blocks >= 1 end)
    H.settle(0.2)
    restore()
    -- the burst (and what the bucket refilled while they were sent), then nothing
    local n = answered(txs)
    assert.is_true(n >= 10 and n <= 13, n .. " answered")
    assert.equal(n, handled)                        -- no Lua ran for the rest
    local f = uas:flood()
    assert.equal(60 - n, f.dropped)
    assert.equal(1, f.blocked_sources)
    local warned = false
    for _, l in ipairs(logs) do warned = warned or l.msg:find("flood: 127.0.0.1 sends more") ~= nil end
    assert.is_true(warned)
    -- another source is served meanwhile
    assert.equal(200, options(friend, "sip:[::1]:" .. port6).status)
    -- still blocked while it sends; released after block seconds of quiet
    local _, _, code = options(attacker, "sip:127.0.0.1:" .. port4)
    assert.equal("timeout", code)
    H.run_until(function() return uas:flood().blocked_sources == 0 end, 3)
    assert.equal(200, options(attacker, "sip:127.0.0.1:" .. port4).status)
    for _, tx in ipairs(txs) do tx:close() end
  end)

  it("answers a blocked source with the status asked for, and never limits exempt ones", function()
    local uas = H.agent{ flood = { rate = 10, burst = 5, block = 5, status = 503 } }
    uas:on("OPTIONS", function(req) req:reply(200) end)
    local a = H.agent()
    local logs, restore = H.capture_logs()
    local txs = burst(a, uas:contact(), 8)
    H.run_until(function() return answered(txs) == 8 end)
    restore()
    assert.equal(1, #logs)
    local c503 = 0
    for _, tx in ipairs(txs) do if tx:status() == 503 then c503 = c503 + 1 end end
    assert.equal(3, c503)
    local _, _, code, res = options(a, uas:contact())
    assert.equal(503, code)
    assert.equal("5", res:header("Retry-After"))
    local open = H.agent{ flood = { rate = 10, burst = 5, exempt = { "127.0.0.0/8", "::1" } } }
    open:on("OPTIONS", function(req) req:reply(200) end)
    local txs2 = burst(a, open:contact(), 30)
    H.run_until(function() return answered(txs2) == 30 end)
    assert.equal(0, open:flood().blocks)
  end)

  it("drops scanners and answers header bombs 400 before any Lua runs", function()
    local handled = 0
    local uas = H.agent{ flood = { limit = false } }
    uas:on("OPTIONS", function(req) handled = handled + 1; req:reply(200) end)
    local a = H.agent()
    local _, _, code = options(a, uas:contact(), { ["User-Agent"] = "friendly-scanner" })
    assert.equal("timeout", code)
    assert.equal(200, options(a, uas:contact(), { ["User-Agent"] = "Linphone/5.2" }).status)
    local bomb = {}
    for i = 1, 300 do bomb[i] = "X-H" .. i .. ": x" end
    local _, err, code2 = options(a, uas:contact(), bomb)
    assert.equal(400, code2, err)
    assert.matches("Too Many Headers", err)
    assert.equal(1, handled)
    local f = uas:flood()
    assert.is_true(f.scanners >= 1)                  -- (and its retransmissions)
    assert.equal(1, f.header_bombs)
    assert.equal(0, f.blocks)
  end)

  it("is off by default and checks its options", function()
    assert.is_nil(H.agent():flood())
    assert.has_error(function() sip.agent{ flood = { rate = 0 } } end,
      "luasip.agent: flood.rate must be a number 0.1-1e+06")
    assert.has_error(function() sip.agent{ flood = { exempt = { "nonsense" } } } end,
      "luasip.agent: flood.exempt[1] must be an address or a CIDR prefix")
    assert.has_error(function() sip.agent{ flood = { bogus = 1 } } end,
      "luasip.agent: flood: unknown option 'bogus'")
    assert.has_error(function() sip.agent{ flood = { status = 200 } } end,
      "luasip.agent: flood.status must be a status 400-699 or false")
  end)
end)
