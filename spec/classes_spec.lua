local H = require "spec.helper"
local sip = require "luasip"

local OFFER = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
  .. "m=audio 4000 RTP/AVP 0\r\n"
local ANSWER = OFFER:gsub("o=a", "o=b"):gsub("4000", "4002")

-- runs a Lua chunk in a child interpreter of the suite's flavour; -> exit code, output
local function child(code)
  local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
  local path = os.tmpname()
  local f = assert(io.open(path, "w"))
  f:write(code)
  f:close()
  local p = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
    "LUA_CPATH=build/" .. flavour .. "/?.so;;", H.interpreter(), path }, 30)
  H.run_until(function() return p.done() end, 30, "child interpreter end")
  os.remove(path)
  return p.done(), p.log()
end

describe("luasip classes", function()
  after_each(function() H.close_agents() end)

  it("keeps the SDP answer of a PRACK as the dialog's remote session (offer in a reliable 183)",
    function()
      local uas, uac = H.agent(), H.agent()
      local d
      uas:on("INVITE", function(req)
        assert(req:reply(183, { reliable = true, body = OFFER, content_type = "application/sdp" }))
        d = assert(req:answer())
      end)
      local tx = uac:send{ method = "INVITE", uri = uas:uri("x"), dialog = true }
      tx:on_provisional(function(r, t) if r.body then t:prack_body(ANSWER) end end)
      local res = H.run(function() return tx:wait(5) end)
      assert.equal(200, res.status)
      H.run_until(function() return d end)
      assert.equal(ANSWER, d.remote_sdp)
      assert.equal(OFFER, d.local_sdp)
      H.run(function() d:bye() end)
    end)

  it("answers a digest challenge for agent:request whatever order the modules load in",
    function()
      local code, out = child([[
        local auth = require "luasip.auth"      -- before luasip: the order that lost auth
        local sip = require "luasip"
        assert(auth == sip.auth)
        local uas = assert(sip.agent{ listen = "sip:127.0.0.1:0" })
        local uac = assert(sip.agent{ listen = "sip:127.0.0.1:0" })
        uas:on("MESSAGE", function(req)
          if sip.auth.check(req, { realm = "r", password = function() return "pw" end }) then
            req:reply(200)
          end
        end)
        local status
        sip.spawn(function()
          local res, _, c = uac:request{ method = "MESSAGE", uri = uas:uri("bob"), body = "hi",
            content_type = "text/plain", auth = { username = "alice", password = "pw" } }
          status = res and res.status or c
          sip.stop()
        end)
        sip.timer(10, function() sip.stop() end)
        sip.run()
        print("status " .. tostring(status))
      ]])
      assert.equal(0, code, out)
      assert.matches("status 200", out)
    end)

  it("refuses writes to an object's fields and keeps the application's values in obj.data",
    function()
      local uas, uac = H.agent(), H.agent()
      local err, kept
      uas:on("OPTIONS", function(req)
        err = select(2, pcall(function() req.method = "BYE" end))
        req.data.seen = true
        kept = req.data.seen and req.method
        req:reply(200)
      end)
      H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri() } end)
      assert.truthy(err:find("luasip.request: field 'method' is read-only", 1, true))
      assert.equal("OPTIONS", kept)
      assert.has_error(function() uac.handlers_x = {} end)
    end)

  it("gives a class a new method with class.extend and refuses to re-wrap a taken name",
    function()
      local ok = pcall(sip.class.extend, "luasip.request", "reply", function() end)
      assert.is_false(ok)
      sip.class.extend("luasip.request", "spec_echo", function(req) return req.method end)
      local uas, uac = H.agent(), H.agent()
      local seen
      uas:on("OPTIONS", function(req) seen = req:spec_echo(); req:reply(200) end)
      H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri() } end)
      assert.equal("OPTIONS", seen)
    end)

  it("calls the request's replied hook after each reply", function()
    local uas, uac = H.agent(), H.agent()
    local seen = {}
    local fn = sip.class.hook("luasip.request", "replied", function(req, status)
      seen[#seen + 1] = req.method .. " " .. status
    end)
    finally(function() sip.class.unhook("luasip.request", "replied", fn) end)
    uas:on("MESSAGE", function(req) req:reply(202) end)
    H.run(function() return uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x",
      content_type = "text/plain" } end)
    assert.same({ "MESSAGE 202" }, seen)
  end)

  it("answers a handler's error{status =, reason =} with a reason unsafe on the wire as a plain status",
    function()
      local uas, uac = H.agent(), H.agent()
      uas:on("MESSAGE", function() error{ status = 486, reason = "Busy\r\nX-Injected: 1" } end)
      local logs, restore = H.capture_logs()
      finally(restore)
      local _, _, code, res = H.run(function()
        return uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x",
          content_type = "text/plain", timeout = 5 }
      end)
      assert.equal(486, code)
      assert.is_nil(res:header("X-Injected"))
      assert.is_true(#logs > 0)
    end)

  it("answers 500 when a handler keeps its request past the handler deadline", function()
    local uas = assert(sip.agent{ listen = "sip:127.0.0.1:0",
      handler_timeout = { other = 0.3 } })
    local uac = H.agent()
    local woke
    uas:on("MESSAGE", function()
      woke = { sip.sleep(30) }
    end)
    local _, restore = H.capture_logs()
    finally(function() restore(); uas:close() end)
    local _, _, code, res = H.run(function()
      return uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x",
        content_type = "text/plain", timeout = 5 }
    end)
    assert.equal(500, code)
    assert.equal("Handler Timeout", res.reason)
    H.run_until(function() return woke end)
    assert.same({ nil, "timeout", "timeout" }, woke)
  end)

  it("leaves a proxied request to the proxy engine's timers, not the handler deadline",
  function()
    local proxy = assert(sip.agent{ listen = "sip:127.0.0.1:0",
      handler_timeout = { other = 0.3 } })
    local target, uac = H.agent(), H.agent()
    target:on("MESSAGE", function(req) sip.sleep(0.6); req:reply(200) end)
    local proxied
    proxy:on("MESSAGE", function(req) proxied = { req:proxy(target:contact()) } end)
    finally(function() proxy:close() end)
    local res, err = H.run(function()
      return uac:request{ method = "MESSAGE", uri = proxy:uri(), body = "x",
        content_type = "text/plain", timeout = 5 }
    end)
    assert.equal(200, res and res.status, tostring(err))
    H.run_until(function() return proxied end)
    assert.equal(200, proxied[1].status)
  end)

  it("raises on unknown agent options and ports out of range, naming sip.agent", function()
    assert.has_error(function() sip.agent{ lisen = "sip:127.0.0.1:0" } end,
      "luasip.agent: unknown option 'lisen'")
    assert.has_error(function() sip.agent{ listen = "sip:127.0.0.1:70000" } end,
      "luasip.agent: listen[1] port must be 1-65535 (0: any free port)")
  end)

  it("tells whether the top Route is this agent's (loose_route)", function()
    local uas, uac = H.agent(), H.agent()
    local seen = {}
    uas:on("MESSAGE", function(req) seen[#seen + 1] = req:loose_route(); req:reply(200) end)
    local me = uas:contact():match("^sip:(.*)$")
    H.run(function()
      uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x", content_type = "text/plain" }
      uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x", content_type = "text/plain",
        headers = { Route = "<sip:" .. me .. ";lr>" } }
      uac:request{ method = "MESSAGE", uri = uas:uri(), body = "x", content_type = "text/plain",
        proxy = uas:uri(), headers = { Route = "<sip:127.0.0.2:5999;lr>" } }
    end)
    assert.same({ false, true, false }, seen)
  end)

  it("hands an in-dialog request to dialog:wait_request when no handler takes it", function()
    local uas, uac = H.agent(), H.agent()
    local got
    uas:on("INVITE", function(req)
      local d = assert(req:answer())
      local info = d:wait_request("INFO", 5)
      got = info.body
      info:reply(200)
    end)
    local res = H.run(function()
      local d = assert(uac:invite{ uri = uas:uri("x") })
      local r = d:request("INFO", { body = "1", content_type = "application/dtmf" })
      d:bye()
      return r
    end)
    assert.equal(200, res.status)
    assert.equal("1", got)
  end)

  it("refuses req:answer on a request that is not an INVITE", function()
    local uas, uac = H.agent(), H.agent()
    local err
    uas:on("OPTIONS", function(req)
      err = select(2, pcall(req.answer, req))
      req:reply(200)
    end)
    H.run(function() return uac:request{ method = "OPTIONS", uri = uas:uri(),
      headers = { ["Session-Expires"] = "1800" } } end)
    assert.matches("luasip.request:answer: only an INVITE", err)
  end)

  it("stops run() with on_error = \"raise\" when a spawned coroutine fails", function()
    sip.spawn(function() sip.sleep(0.01); error("spawned failure") end)
    local ok, err = pcall(sip.run, { on_error = "raise" })
    assert.is_false(ok)
    assert.matches("spawned failure", err)
  end)

  it("names the public function and the caller's line in argument errors", function()
    local uas, uac = H.agent(), H.agent()
    local this = debug.getinfo(1, "S").short_src
    local errs = {}
    uas:on("OPTIONS", function(req)
      errs.reply = select(2, pcall(function() req:reply("x") end))
      req:reply(200)
    end)
    H.run(function()
      errs.request = select(2, pcall(function() uac:request{ method = "OPTIONS", uri = "x" } end))
      errs.invite = select(2, pcall(function() uac:invite{ uri = "x" } end))
      errs.auth = select(2, pcall(function()
        uac:request{ method = "MESSAGE", uri = "x", auth = { username = "a", password = "b" } }
      end))
      uac:request{ method = "OPTIONS", uri = uas:uri() }
    end)
    for what, fname in pairs{ reply = "luasip.request:reply", request = "luasip.agent:request",
      invite = "luasip.agent:invite", auth = "luasip.agent:request" } do
      local err = errs[what]
      assert.truthy(err:find(this, 1, true), what .. ": " .. err)
      assert.truthy(err:find(fname .. ": ", 1, true), what .. ": " .. err)
      assert.falsy(err:find("lua/luasip", 1, true), what .. ": " .. err)
    end
  end)

  it("answers a 401 to an in-dialog request with dialog:request{ auth = }", function()
    local uas, uac = H.agent(), H.agent()
    local user
    uas:on("INVITE", function(req)
      local d = assert(req:answer())
      d:on("INFO", function(r)
        user = sip.auth.check(r, { realm = "r", password = function() return "pw" end })
        if user then r:reply(200) end
      end)
    end)
    local first, second = H.run(function()
      local d = assert(uac:invite{ uri = uas:uri("x") })
      local _, _, code = d:request("INFO", { body = "1", content_type = "text/plain" })
      local res = d:request("INFO", { body = "2", content_type = "text/plain",
        auth = { username = "alice", password = "pw" } })
      d:bye()
      return code, res and res.status
    end)
    assert.equal(401, first)
    assert.equal(200, second)
    assert.equal("alice", user)
  end)
end)
