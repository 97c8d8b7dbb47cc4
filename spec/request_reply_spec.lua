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

-- Issue 15 item 2: a final response the transport refuses (sendmsg EMSGSIZE: larger than
-- a UDP datagram) ends the transaction consistently: the caller gets nta's 500, the
-- handler learns it from req:reply, and no ACK is awaited, no dialog kept, no BYE sent.
describe("luasip.request:reply with a final too large for UDP", function()
  local sip = require "luasip"
  local uas, uac
  before_each(function()
    uas = H.agent{ listen = "sip:127.0.0.1:0;transport=udp", t1 = 0.02 }
    uac = H.agent{ listen = "sip:127.0.0.1:0;transport=udp", t1 = 0.02, in_dialog = "handler" }
  end)
  after_each(function() H.close_agents() end)

  local big = { body = ("a"):rep(70000), content_type = "text/plain" }

  it("returns nil, err, 'send' for a MESSAGE and the caller gets 500", function()
    local got, answered
    uas:on("MESSAGE", function(req)
      got = { req:reply(200, nil, big) }
      answered = req:answered()
    end)
    local res, err, code = H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:uri("x"), body = "hi",
        content_type = "text/plain" }
    end)
    assert.is_nil(res)
    assert.equal(500, code, err)
    assert.is_nil(got[1])
    assert.matches("could not be sent", got[2], 1, true)
    assert.equal("send", got[3])
    assert.equal(500, answered)
  end)

  it("ends an INVITE with the 500: no dialog, no ACK awaited, no BYE", function()
    local got, req_seen, byes = nil, nil, 0
    local function dialogs()
      collectgarbage("collect")
      collectgarbage("collect")
      return sip.stats()["luasip.dialog"] or 0
    end
    local before = dialogs()
    uas:on("INVITE", function(req)
      req_seen = req
      got = { req:reply(200, nil, big) }
    end)
    uac:on("BYE", function(req) byes = byes + 1; req:reply(200) end)
    local res, err, code = H.run(function() return uac:invite{ uri = uas:uri("x") } end)
    assert.is_nil(res)
    assert.equal(500, code, err)
    assert.equal("send", got[3])
    assert.equal(500, req_seen:answered())
    -- past 64*T1 (1.28 s), when a 2xx never ACKed would get its BYE
    local t0 = sip.now()
    H.run_until(function() return sip.now() - t0 > 1.6 end, 5, "64*T1")
    assert.equal(0, byes)
    req_seen = nil -- luacheck: ignore 311
    -- freed (objects collected are destroyed at the next loop step)
    H.run_until(function() return dialogs() <= before end, 5, "the dialog freed")
  end)
end)
