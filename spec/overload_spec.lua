local H = require "spec.helper"
local sip = require "luasip"
local core = require "luasip.core"

describe("luasip.agent overload shedding", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() H.close_agents() end)

  it("is on by default, with INVITEs shed before other requests", function()
    -- made directly: H.agent turns shedding off under valgrind
    local a = assert(sip.agent{ listen = { "sip:127.0.0.1:0" } })
    local o = a:overload()
    a:close()
    assert.is_true(o.enabled)
    assert.equal(0.15, o.delay)
    assert.equal(0.3, o.delay_other)
    assert.equal(5, o.retry_after)
    assert.equal(0.3, o.interval)
    assert.is_false(o.shedding)
    assert.equal(0, o.rejected_invite)
  end)

  it("answers a new INVITE 503 with Retry-After while an in-dialog BYE gets through", function()
    local server, invites = nil, 0
    uas:on("INVITE", function(req)
      invites = invites + 1
      server = assert(req:answer())
      server:wait_end(10)
    end)
    local d = H.run(function() return assert(uac:invite{ uri = uas:uri("bob") }) end)
    H.run_until(function() return server and server:state() == "confirmed" end)
    -- every new initial request now counts as overloaded: its delay is >= 0
    uas:overload{ delay = 0, interval = 0, delay_other = 0, retry_after = 7 }
    local d2, err, code, res = H.run(function() return uac:invite{ uri = uas:uri("carol") } end)
    assert.is_nil(d2)
    assert.equal(503, code, err)
    assert.equal("7", res:header("Retry-After"))
    assert.equal(1, invites)
    -- in-dialog: not shed
    assert.is_true(H.run(function() return d:bye() end))
    H.run_until(function() return server:state() == "terminated" end)
    local o = uas:overload()
    assert.equal(1, o.rejected_invite)
    assert.equal(0, o.rejected_other)
    -- the ACK for the 503 is recognised by its To tag and dropped before Lua
    H.run_until(function() return uas:overload().acks_dropped == 1 end)
  end)

  it("sheds other initial requests only above their own threshold", function()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    uas:on("INVITE", function(req) req:reply(486) end)
    uas:overload{ delay = 0, interval = 0, delay_other = 3600 }
    local res = H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri("x") } end)
    assert.equal(200, res.status)
    local _, _, code = H.run(function() return uac:invite{ uri = uas:uri("x") } end)
    assert.equal(503, code)
    uas:overload{ delay = 0, interval = 0, delay_other = 0, retry_after = 0 }
    local r2, _, code2, res2 = H.run(function()
      return uac:request{ method = "OPTIONS", uri = uas:uri("x") }
    end)
    assert.is_nil(r2)
    assert.equal(503, code2)
    assert.is_nil(res2:header("Retry-After"))
    local o = uas:overload()
    assert.equal(1, o.rejected_invite)
    assert.equal(1, o.rejected_other)
    assert.is_true(o.shedding)
    assert.is_true(o.measured >= 3)
    assert.is_true(o.max_delay >= 0 and o.max_delay < 5)
  end)

  it("sheds nothing until the delay has stood above target for the interval", function()
    uas:on("INVITE", function(req) req:reply(486) end)
    uas:overload{ delay = 0, interval = 3600 }
    for _ = 1, 3 do
      local _, _, code = H.run(function() return uac:invite{ uri = uas:uri("x") } end)
      assert.equal(486, code)
    end
    local o = uas:overload()
    assert.equal(0, o.rejected_invite)
    assert.is_false(o.shedding)
    assert.equal(3, o.measured)
  end)

  it("can be switched off, at creation or later", function()
    local a = assert(core.agent{ listen = { "sip:127.0.0.1:0" }, overload = false })
    assert.is_false(a:overload().enabled)
    a:close()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    uas:overload{ delay = 0, delay_other = 0, enabled = false }
    local res = H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri("x") } end)
    assert.equal(200, res.status)
    assert.equal(0, uas:overload().measured)
  end)

  it("raises on unknown or bad overload options", function()
    assert.has_error(function()
      core.agent{ listen = { "sip:127.0.0.1:0" }, overload = { dealy = 1 } }
    end, "luasip.agent: overload.dealy: unknown option")
    assert.has_error(function() uas:overload{ delay = -1 } end,
      "luasip.agent:overload: overload.delay: bad value")
    assert.has_error(function() uas:overload("x") end,
      "luasip.agent:overload: overload must be a table or a boolean")
  end)
end)
