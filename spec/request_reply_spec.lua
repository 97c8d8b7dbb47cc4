local H = require "spec.helper"

-- req:reply checks its arguments in C: argument errors name the public function and
-- point at the caller's line (this file), never at a library line.
describe("luasip.request:reply arguments", function()
  local uas, uac
  before_each(function() uas, uac = H.agent(), H.agent() end)
  after_each(function() assert.equal(2, H.close_agents()) end)

  -- runs check(req) inside an OPTIONS handler, then answers 200; returns what check gave
  local function in_handler(check)
    local out
    uas:on("OPTIONS", function(req)
      out = { check(req) }
      req:reply(200)
    end)
    local res = H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri("x") } end)
    assert.equal(200, res.status)
    return (table.unpack or unpack)(out)
  end

  local function errors_of(req, ...)
    local args = { n = select("#", ...), ... }
    -- called from a line of this file (through pcall directly, the caller would be C)
    local ok, err = pcall(function() req:reply((table.unpack or unpack)(args, 1, args.n)) end)
    assert.is_false(ok)
    return err
  end

  it("raises for a bad header name or a body that is not a string, and can answer after", function()
    local here = "spec/request_reply_spec.lua:%d+: "
    local e1, e2, e3 = in_handler(function(req)
      return errors_of(req, 200, { headers = { ["Bad Name"] = "x" } }),
        errors_of(req, 200, "OK", { headers = { ["X-A"] = "1", ["X B"] = "2" } }),
        errors_of(req, 200, { body = 42 })
    end)
    assert.matches("^" .. here .. "luasip%.request:reply: bad header name 'Bad Name'", e1)
    assert.matches("^" .. here .. "luasip%.request:reply: bad header name 'X B'", e2)
    assert.matches("^" .. here .. "luasip%.request:reply: ", e3)
  end)

  it("raises for a reason with CR, LF or another control character", function()
    local here = "spec/request_reply_spec.lua:%d+: "
    local e1, e2, e3, e4 = in_handler(function(req)
      return errors_of(req, 486, "Busy\r\nX-Evil: 1"), errors_of(req, 486, "Busy\nHere"),
        errors_of(req, 486, "Busy\0Here"), errors_of(req, 486, "Busy\1")
    end)
    for _, e in ipairs{ e1, e2, e3, e4 } do
      assert.matches("^" .. here .. "luasip%.request:reply: reason must not contain CR or LF", e)
    end
  end)

  it("accepts a reason with a tab and UTF-8 text", function()
    local seen
    uas:on("MESSAGE", function(req) req:reply(480, "Temporarily\tUnavailable — später") end)
    H.run(function()
      local _, _, code, res = uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = "x",
        content_type = "text/plain" }
      seen = { code = code, reason = res and res.reason }
    end)
    assert.equal(480, seen.code)
    assert.equal("Temporarily\tUnavailable — später", seen.reason)
  end)

  it("raises for a status outside 100-699 or not an integer", function()
    local here = "^spec/request_reply_spec.lua:%d+: luasip%.request:reply: status must be 100%-699"
    local errs = { in_handler(function(req)
      return errors_of(req, 99), errors_of(req, 700), errors_of(req, 200.5),
        errors_of(req, "200"), errors_of(req)
    end) }
    assert.equal(5, #errs)
    for _, e in ipairs(errs) do assert.matches(here, e) end
  end)

  it("points at the caller through the Lua layer's own wrappers (a direct call)", function()
    local line, err = in_handler(function(req)
      local l = debug.getinfo(1, "l").currentline; local ok, e = pcall(function()
        req:reply(1000) end)
      assert.is_false(ok)
      return l + 1, e
    end)
    assert.matches("^spec/request_reply_spec.lua:" .. line .. ": luasip%.request:reply:", err)
  end)
end)
