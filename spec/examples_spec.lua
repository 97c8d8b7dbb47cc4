local H = require "spec.helper"

-- Smoke runs of examples/: each script runs as a subprocess of the interpreter running the
-- suite, against the module built for it, on 127.0.0.1 and an OS-chosen free port.
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"

local function script(path, ...)
  return { "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
    "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", H.interpreter(), path, ... }
end

-- busted keeps one finally() per test: each test calls track() first, and every
-- process it starts is killed by that one finally
local procs = {}
local function spawn_script(path, ...)
  local p = H.background(script(path, ...), 60)
  procs[#procs + 1] = p
  return p
end
local function track()
  procs = {}
  finally(function() for _, p in ipairs(procs) do p.kill() end end)
end

-- starts examples/uas.lua; returns the process and its host:port once it listens
local function start_uas(env)
  local hostport = "127.0.0.1:" .. H.free_port()
  local argv = script("examples/uas.lua", hostport)
  table.insert(argv, 2, env or "UAS_TRANSFERS=0")     -- env NAME=value ... lua uas.lua
  local uas = H.background(argv, 60)
  procs[#procs + 1] = uas
  H.run_until(function() return uas.log():find("listening on") or uas.done() end, 10,
    "examples/uas.lua listening")
  assert(not uas.done(), "examples/uas.lua exited:\n" .. uas.log())
  return uas, hostport
end

-- runs examples/uac.lua to its end (bounded); returns its exit code and output
local function run_uac(...)
  local uac = spawn_script("examples/uac.lua", ...)
  H.run_until(function() return uac.done() end, 65, "examples/uac.lua end")
  return uac.done(), uac.log()
end

describe("examples/uac.lua against examples/uas.lua", function()
  it("gets a final response to every method and hangs up the call it made", function()
    track()
    local uas, hostport = start_uas()
    local rc, out = run_uac("sip:bob@" .. hostport)
    local context = out .. "\n--- uas.lua:\n" .. uas.log()
    assert.equal(0, rc, context)
    for _, line in ipairs{ "OPTIONS 200", "MESSAGE 200", "INVITE 18%d", "INVITE 200",
      "BYE %(in dialog%) 200", "REGISTER 200", "SUBSCRIBE 200", "NOTIFY 200", "PUBLISH 200",
      "REFER 202", "INFO 200", "UPDATE 200", "PRACK 200",
      "BYE [4-6]%d%d" } do              -- the BYE outside any dialog is refused
      assert.matches("\n" .. line .. " ", out, 1, false, context)
    end
    assert.matches("every request got a final response", out)
    -- the uas saw the MESSAGE body and the ACK of its 200 (the call was set up)
    H.run_until(function() return uas.log():find("call established") end, 5, "uas log")
    assert.matches("MESSAGE from sip:uac@127%.0%.0%.1:%d+ %(text/plain%): Hello from luasip",
      uas.log())
  end)

  it("sends only the methods named on its command line", function()
    track()
    local _, hostport = start_uas()
    local rc, out = run_uac(hostport, "options", "Refer")
    assert.equal(0, rc, out)
    assert.matches("\nOPTIONS 200 OK\n", out)
    assert.matches("\nREFER 202 Accepted\n", out)
    assert.is_nil(out:find("\nINVITE "), out)
  end)

  it("exits non-zero when nothing answers", function()
    track()
    -- TCP to a port nobody listens on: the stack's own 503 is not an answer
    local rc, out = run_uac("sip:127.0.0.1:" .. H.free_port() .. ";transport=tcp", "OPTIONS")
    assert.equal(1, rc, out)
    assert.matches("OPTIONS failed: 503 Service Unavailable %(local%)", out)
    assert.matches("1 request%(s%) without a final response", out)
  end)

  it("carries out a REFER in a call to examples/uas.lua and keeps that call until the transferor hangs up", function()
    track()
    local uas, hostport = start_uas("UAS_TRANSFERS=1")
    local caller, target = H.agent(), H.agent()
    local target_got, target_call
    target:on("INVITE", function(req)
      target_got = req:header("Referred-By") or true
      target_call = req:answer()
    end)
    local d, status, line = H.run(function()
      local call = assert(caller:invite{ uri = "sip:bob@" .. hostport })
      return call, call:refer(target:uri("carol"), { timeout = 10 })
    end, 15)
    assert.equal(200, status)
    assert.matches("^SIP/2.0 200", line)
    assert.truthy(target_got)
    assert.truthy(target_call)
    -- RFC 5589 section 6: the transferee does not hang up the original call itself
    H.settle(0.5)
    assert.equal("confirmed", d:state(), uas.log())
    H.run_until(function() return uas.log():find("transferred call established") end, 5,
      "transfer logged")
    -- the transferor hangs up (after the NOTIFY with the 2xx); the new call stays up
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return uas.log():find("call ended: remote bye") end, 5,
      "the original call ended by the transferor's BYE")
    assert.equal("confirmed", target_call:state())
    H.run(function() assert.is_true(target_call:bye()) end)
    H.run_until(function() return uas.log():find("transferred call ended: remote bye") end, 5,
      "the transferred call ended by the target's BYE")
    H.close_agents()
  end)
end)

describe("examples/ivr.lua", function()
  local has_engine = require("luasip.core").rtp_open ~= nil
  local f = io.open("build/prompts/menu.wav")
  local has_prompts = f ~= nil
  if f then f:close() end
  local it_ivr = (has_engine and has_prompts) and it or function(name)
    pending(name .. " -- needs the media engine and `make prompts`")
  end

  it_ivr("answers with media, welcomes, and hangs up after 9", function()
    track()
    local hostport = "127.0.0.1:" .. H.free_port()
    local ivr = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", "IVR_PROMPTS=build/prompts",
      H.interpreter(), "examples/ivr.lua", hostport }, 60)
    procs[#procs + 1] = ivr
    H.run_until(function() return ivr.log():find("listening on") or ivr.done() end, 10,
      "examples/ivr.lua listening")
    assert(not ivr.done(), "examples/ivr.lua exited:\n" .. ivr.log())
    local caller = H.agent()
    local d = H.run(function()
      return assert(caller:invite{ uri = "sip:ivr@" .. hostport, media = true })
    end)
    H.run_until(function() return ivr.log():find("menu: welcome") end, 5, "the welcome")
    assert.equal("done", H.run(function() return d:send_dtmf("9") end))
    assert.equal("remote bye", H.run(function() return d:wait_end(20) end, 25), ivr.log())
    H.run_until(function() return ivr.log():find("call ended: bye") end, 5, "the log")
    assert.matches(d.call_id:gsub("%p", "%%%0") .. " menu: digit 9\n", ivr.log())
    H.close_agents()
  end)
end)
