local H = require "spec.helper"

-- After every call into Lua the proxy engine re-reads its state (STYLE rule 8): an
-- on_response callback that closes the proxy's agent leaves nothing dangling.
describe("luasip.proxy lifetime", function()
  after_each(function() H.close_agents() end)

  it("survives an on_response that closes the proxy's agent on a final response", function()
    local uac, px, uas = H.agent(), H.agent(), H.agent()
    local seen
    uas:on("MESSAGE", function(req) req:reply(486, "Busy Here") end)
    px:on("MESSAGE", function(req)
      req:proxy({ uas:uri("x") }, { on_response = function(res)
        seen = res.status
        px:close()
      end })
    end)
    local code
    H.run(function()
      local _, _, c = uac:request{ method = "MESSAGE", uri = px:uri("x"), body = "x",
        content_type = "text/plain", timeout = 2 }
      code = c
    end, 5)
    assert.equal(486, seen)
    assert.is_true(px:closed())
    -- the closing agent's transaction ends with nta's 500 (or the caller's timeout)
    assert.is_true(code == 500 or code == "timeout", tostring(code))
    -- the process lives on: the other agents still talk
    uas:on("OPTIONS", function(req) req:reply(200) end)
    assert.equal(200, H.run(function()
      return uac:request{ method = "OPTIONS", uri = uas:uri("y") }
    end).status)
  end)
end)
