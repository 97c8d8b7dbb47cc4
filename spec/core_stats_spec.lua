local H = require "spec.helper"
local sip = H.sip
local core = require "luasip.core"

-- core.stats(): live C objects per class, one entry per class (leak checks rely on it)
describe("luasip.core.stats", function()
  after_each(function() H.close_agents() end)

  local CLASSES = { "luasip.agent", "luasip.request", "luasip.response", "luasip.client_tx",
    "luasip.dialog", "luasip.proxy", "luasip.timer", "luasip.stream" }

  it("counts every class in use in an entry of its own", function()
    local uas, proxy, uac = H.agent(), H.agent(), H.agent()
    uas:on("INVITE", function(req)
      local d = assert(req:answer())
      d:wait_end(5)
    end)
    uas:on("BYE", function(req) req:reply(200) end)
    local during
    uas:on("MESSAGE", function(req)
      during = sip.stats()
      req:reply(200)
    end)
    proxy:on("MESSAGE", function(req) req:proxy(uas:uri("x")) end)
    local timer = core.timer(60)
    local tcp
    for _, t in ipairs(uas:transports()) do
      if t.transport == "tcp" then tcp = t end
    end
    local stream = assert(core.stream_connect(tcp.host, tcp.port))
    local d, res = H.run(function() return uac:invite{ uri = uas:uri("bob") } end)
    assert.equal(200, res.status)
    local msg = H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:uri("x"), proxy = proxy:contact(),
        body = "hi", content_type = "text/plain" }
    end)
    assert.equal(200, msg.status)
    local names = 0
    for _ in pairs(during) do names = names + 1 end
    assert.is_true(names >= #CLASSES, "one entry per class")
    for _, name in ipairs(CLASSES) do
      assert.is_true((during[name] or 0) >= 1, name .. " counted while in use")
    end
    assert.is_true(during["luasip.agent"] >= 3)
    -- each count is its own: dropping the dialog, timer and stream lowers only theirs
    local before = sip.stats()
    H.run(function() assert.is_true(d:bye()) end)
    timer:cancel()
    stream:close()
    d, res, msg, timer, stream = nil, nil, nil, nil, nil   -- luacheck: ignore 311 (for GC)
    H.run_until(function()
      collectgarbage()
      collectgarbage()
      sip.step(0)
      local now = sip.stats()
      return now["luasip.timer"] < before["luasip.timer"]
        and now["luasip.stream"] < before["luasip.stream"]
        and now["luasip.dialog"] < before["luasip.dialog"]
    end, 5, "counts drop")
    assert.is_true(sip.stats()["luasip.agent"] >= 3)           -- ours are still open
  end)
end)
