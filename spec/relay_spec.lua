-- No open relay, by test (issue 11, item 6): every shipped example is asked to relay
-- requests to a "victim" -- luasip agents on 127.0.0.1 that record every request reaching
-- them -- with foreign Request-URIs and Route sets, forged Record-Route, To-tagged
-- requests of no dialog, REGISTER for another user's AOR, third-party REFER, MESSAGE to a
-- foreign domain and Max-Forwards games.  Each attempt asserts the answer of the example
-- (stepped until it arrives) and, after a short bounded settle, that no victim saw
-- anything.  Requests with forged ACK/CANCEL go out raw (spec/peers/rawsip.py).
local H = require "spec.helper"
local testing = require "luasip.testing"
local sip = H.sip

local SETTLE = 0.2          -- seconds the loop turns after each answer, watching the victims
local PW = { alice = "alice-secret", bob = "bob-secret", carol = "carol-secret" }

-- a victim: an agent that records and answers every request (to-tagged ones too)
local function new_victim(name)
  local v = { agent = H.agent{ in_dialog = "handler" }, got = {}, name = name }
  for _, m in ipairs(sip.methods) do
    if m ~= "CANCEL" then               -- the core answers CANCELs; a relayed one comes
      v.agent:on(m, function(req)       -- after its INVITE, which is recorded
        v.got[#v.got + 1] = req.method .. " " .. req.uri
        if m ~= "ACK" then req:reply(m == "INVITE" and 486 or 200) end
      end)
    end
  end
  v.host = "127.0.0.1:" .. v.agent:transports()[1].port
  v.uri = "sip:" .. name .. "@" .. v.host
  v.route = "<sip:" .. v.host .. ";lr>"
  return v
end

local victims = {}

-- untouched(what): the loop turns SETTLE seconds; no victim may have seen a request
local function untouched(what)
  H.settle(SETTLE)
  for _, v in ipairs(victims) do
    assert.same({}, v.got, what .. ": reached the victim " .. v.name)
  end
end

-- attempt(what, tx, status): the example answers tx with status, and nothing relayed
local function attempt(what, tx, status)
  local res = tx:expect(status)
  untouched(what)
  return res
end

-- raw(port, msg [, timeout]): the status line of the answer to msg sent over UDP, or
-- "NONE" when none came within timeout seconds (ACK: none is due)
local function raw(port, msg, timeout) return H.send_raw(port, msg, "udp", timeout) end

local n = 0
-- a raw request: method to uri, To with a tag, the extra header lines given
local function forged(method, uri, extra)
  n = n + 1
  local id = ("relay%d%d"):format(os.time(), n)
  return table.concat{
    method, " ", uri, " SIP/2.0\r\n",
    "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK", id, "\r\n",
    "From: <sip:mallory@127.0.0.1>;tag=m", id, "\r\n",
    "To: <sip:bob@127.0.0.1>;tag=forged", id, "\r\n",
    "Call-ID: ", id, "@forged\r\nCSeq: 1 ", method, "\r\n",
    "Max-Forwards: 70\r\n", extra or "", "Content-Length: 0\r\n\r\n" }
end

-- the raw attempts every example refuses: ACK, BYE and CANCEL of no dialog or
-- transaction, along a Route through the example (port) onward to the victim v
local function forged_dialog(t, v, bye_status)
  local port = t.port
  local through = "Route: <sip:" .. t.address .. ";lr>, " .. v.route .. "\r\n"
  assert.equal("NONE", raw(port, forged("ACK", v.uri, through), 0.5))
  untouched("forged ACK")
  assert.equal("SIP/2.0 " .. bye_status,
    raw(port, forged("BYE", v.uri, through)):match("^SIP/2.0 %d+"))
  untouched("forged BYE")
  assert.matches("^SIP/2.0 481", raw(port, forged("CANCEL", v.uri, through)))
  untouched("forged CANCEL")
end

describe("no open relay", function()
  local defer = H.defer_with(function(f) finally(f) end)
  local t
  local v1, v2
  before_each(function()
    v1, v2 = new_victim("victim"), new_victim("bob")
    victims = { v1, v2 }
  end)
  after_each(function()
    if t then t:close() end
    t = nil
    H.close_agents()
  end)

  -- p's REGISTER of user's AOR with contact as its Contact
  local function register(p, user, contact)
    return p:request("REGISTER", t:contact(), { headers = { To = "<sip:" .. user .. "@127.0.0.1>",
      Contact = "<" .. contact .. ">", Expires = "60" } })
  end

  -- headers of a request that claims to be in a dialog of the example
  local function in_dialog(route, extra)
    local h = { To = "<sip:bob@127.0.0.1>;tag=forged" .. n, ["Call-ID"] = "forged" .. n .. "@x",
      Route = route }
    n = n + 1
    for k, val in pairs(extra or {}) do h[k] = val end
    return h
  end

  describe("examples/pbx.lua", function()
    local recordings
    local function start()
      recordings = os.tmpname()
      os.remove(recordings)
      t = testing.start{ script = "examples/pbx.lua", env = { IVR_RECORDINGS = recordings } }
      defer(function() os.execute("rm -rf " .. H.shquote(recordings)) end)
    end

    it("refuses foreign Request-URIs, with and without credentials", function()
      start()
      local mallory = t:phone("mallory")
      local alice = t:phone("alice", { password = PW.alice })
      attempt("INVITE to a victim, no credentials", mallory:request("INVITE", v1.uri), 407)
      attempt("MESSAGE to a victim, no credentials", mallory:message(v1.uri, "hi"), 407)
      attempt("INVITE to another domain", alice:request("INVITE", "sip:bob@example.org"), 403)
      attempt("MESSAGE to another domain", alice:message("sip:bob@example.org", "hi"), 403)
      attempt("MESSAGE to a victim's host:port", alice:message(v1.uri, "hi"), 404)
      attempt("MESSAGE to a user at a victim's host:port", alice:message(
        "sip:carol@" .. v1.host, "hi"), 480)
      attempt("OPTIONS to another domain", alice:request("OPTIONS", "sip:bob@example.org"), 403)
      attempt("INVITE Max-Forwards 0 to another domain", alice:request("INVITE",
        "sip:bob@example.org", { headers = { ["Max-Forwards"] = "0" } }), 403)
      attempt("INVITE with a Route to a victim", alice:request("INVITE", "sip:bob@example.org",
        { headers = { Route = v1.route } }), 403)
    end)

    it("refuses to-tagged requests whose Route is foreign or forged through it", function()
      start()
      local alice = t:phone("alice", { password = PW.alice })
      local through = { "<sip:" .. t.address .. ";lr>", v1.route }
      for _, m in ipairs{ "INVITE", "BYE", "MESSAGE", "NOTIFY", "REFER" } do
        local extra = m == "REFER" and { ["Refer-To"] = "<" .. v2.uri .. ">" } or
          m == "SUBSCRIBE" and { Event = "presence" } or
          m == "NOTIFY" and { Event = "presence", ["Subscription-State"] = "active" } or nil
        attempt(m .. " with a To tag, Route to a victim", alice:request(m, v1.uri,
          { proxy = t:contact(), headers = in_dialog(v1.route, extra) }), 403)
        attempt(m .. " with a To tag, forged Route through the PBX", alice:request(m, v1.uri,
          { proxy = t:contact(), headers = in_dialog(through, extra) }), 403)
        attempt(m .. " with a To tag, Route of the PBX, R-URI a victim", alice:request(m,
          v1.uri, { proxy = t:contact(), headers = in_dialog("<sip:" .. t.address .. ";lr>",
            extra) }), 403)
      end
      attempt("BYE with a To tag, Max-Forwards 1, forged Route", alice:request("BYE", v1.uri,
        { proxy = t:contact(), headers = in_dialog(through, { ["Max-Forwards"] = "1" }) }), 403)
      forged_dialog(t, v1, 403)
      assert.matches("^SIP/2.0 481", raw(t.port, (forged("BYE", t:uri("bob")):gsub(
        "To: ([^\r]*);tag=forged[^\r]*", "To: %1"))))
      untouched("BYE of no dialog, no To tag")
    end)

    it("refuses REGISTER of another user's AOR, third-party REFER and SUBSCRIBE", function()
      start()
      local alice = t:phone("alice", { password = PW.alice })
      attempt("REGISTER carol as alice, Contact a victim", register(alice, "carol", v1.uri), 403)
      attempt("MESSAGE to carol after it", alice:message("sip:carol@127.0.0.1", "hi"), 480)
      attempt("REFER asking the PBX to call a victim", alice:request("REFER", t:contact(),
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 404)
      attempt("REFER to bob asking to call a victim", alice:request("REFER", "bob",
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 404)
      attempt("SUBSCRIBE to bob's presence", alice:request("SUBSCRIBE", "bob",
        { headers = { Event = "presence", Contact = "<" .. v1.uri .. ">" } }), 404)
    end)

    it("relays in a real call only along its own route (then refuses a forged target)",
      function()
        start()
        local alice = t:phone("alice", { password = PW.alice })
        local bob = t:phone("bob", { password = PW.bob })
        alice:register():expect(200)
        bob:register():expect(200)
        local call = alice:invite("bob")
        local inc = bob:expect_call()
        inc:answer()
        call:expect(200)
        call:ack()
        -- inside the real dialog: alice's BYE to a victim along the PBX's own route
        local d = call.dialog
        attempt("in-dialog MESSAGE with the dialog's Call-ID, R-URI a victim",
          alice:request("MESSAGE", v1.uri, { proxy = t:contact(), headers = {
            To = "<sip:bob@127.0.0.1>;tag=" .. d.remote_tag, ["Call-ID"] = d.call_id,
            Route = "<sip:" .. t.address .. ";lr>" } }), 403)
        call:bye()
      end)
  end)

  -- what every plain UA example answers to methods it has no handler for, and to
  -- requests of no dialog (the core: 481; ACK: nothing)
  local function no_handler(p, status, methods)
    for _, m in ipairs(methods) do
      local h = { Route = v1.route }
      if m == "REFER" then h["Refer-To"] = "<" .. v1.uri .. ">" end
      if m == "SUBSCRIBE" then h.Event = "presence" end
      if m == "REGISTER" then h.To, h.Contact = "<sip:bob@127.0.0.1>", "<" .. v1.uri .. ">" end
      attempt(m .. " (a Route to a victim)", p:request(m, m == "REGISTER" and t:contact()
        or v2.uri, { headers = h }), status)
    end
    attempt("INVITE with a To tag, Route to a victim", p:request("INVITE", v1.uri,
      { headers = in_dialog(v1.route) }), 481)
    attempt("BYE with a To tag, forged Route through it", p:request("BYE", v1.uri,
      { headers = in_dialog({ "<sip:" .. t.address .. ";lr>", v1.route }) }), 481)
    forged_dialog(t, v1, 481)
  end

  describe("examples/b2bua.lua", function()
    it("calls only its downstream, whatever the Request-URI and Route say", function()
      local down = H.agent{ in_dialog = "handler" }
      local calls = {}
      down:on("INVITE", function(req)
        calls[#calls + 1] = req.uri
        if req.ruri.user ~= "ok" then return req:reply(486) end
        req:answer()
      end)
      local host = "127.0.0.1:" .. down:transports()[1].port
      t = testing.start{ script = "examples/b2bua.lua", args = { "{address}", host } }
      local mallory = t:phone("mallory")
      attempt("INVITE to a victim", mallory:request("INVITE", v1.uri), 486)
      attempt("INVITE with a Route to a victim", mallory:request("INVITE", t:uri("x"),
        { headers = { Route = v1.route } }), 486)
      attempt("INVITE with a victim smuggled in the user part", mallory:request("INVITE",
        "sip:victim%40" .. v1.host:gsub(":", "%%3a") .. "@" .. t.address), 486)
      attempt("INVITE with Max-Forwards 0", mallory:request("INVITE", v1.uri,
        { headers = { ["Max-Forwards"] = "0" } }), 483)
      for _, uri in ipairs(calls) do
        assert.matches("@" .. host:gsub("%p", "%%%0") .. "$", uri)
      end
      no_handler(mallory, 405, { "MESSAGE", "REFER", "REGISTER", "SUBSCRIBE", "PUBLISH" })
      -- in a call it bridged: a REFER asking it to call a victim
      local call = mallory:invite(t:uri("ok"))
      call:expect(200)
      call:ack()
      attempt("REFER in a bridged call to a victim", call:request("REFER",
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 405)
      call:bye()
      untouched("the bridged call's end")
    end)
  end)

  describe("examples/chat.lua", function()
    it("binds only the sender's own address and delivers only in its domain", function()
      t = testing.start{ script = "examples/chat.lua" }
      local mallory = t:phone("mallory")
      attempt("REGISTER with a victim as Contact", register(mallory, "mallory", v1.uri), 403)
      attempt("REGISTER bob with a victim as Contact", register(mallory, "bob", v2.uri), 403)
      attempt("MESSAGE to mallory after it", mallory:message("mallory", "hi"), 202)
      attempt("MESSAGE to bob after it", mallory:message("bob", "hi"), 202)
      attempt("MESSAGE to another domain", mallory:message("sip:bob@example.org", "hi"), 403)
      attempt("MESSAGE to a victim's host:port (a local user)", mallory:message(v1.uri, "hi"),
        202)
      attempt("MESSAGE with a Route to a victim", mallory:message("carol", "hi",
        { headers = { Route = v1.route } }), 202)
      no_handler(mallory, 405, { "INVITE", "REFER", "SUBSCRIBE" })
    end)
  end)

  describe("examples/presence.lua", function()
    it("binds and notifies only the sender's own address", function()
      t = testing.start{ script = "examples/presence.lua" }
      local mallory = t:phone("mallory")
      attempt("REGISTER bob with a victim as Contact", register(mallory, "bob", v1.uri), 403)
      attempt("REGISTER mallory with a victim as Contact (presence sends nothing there)",
        register(mallory, "mallory", v1.uri), 200)
      attempt("SUBSCRIBE to bob with a victim as Contact", mallory:request("SUBSCRIBE", "bob",
        { headers = { Event = "presence", Contact = "<" .. v1.uri .. ">", Expires = "60" } }),
        403)
      attempt("SUBSCRIBE to a victim", mallory:request("SUBSCRIBE", v1.uri,
        { headers = { Event = "presence", Contact = "<" .. v2.uri .. ">", Expires = "60" } }),
        403)
      no_handler(mallory, 405, { "INVITE", "MESSAGE", "REFER" })
    end)
  end)

  describe("examples/uas.lua", function()
    it("answers for itself and carries out no transfer to a victim", function()
      t = testing.start{ script = "examples/uas.lua" }
      local mallory = t:phone("mallory")
      attempt("MESSAGE to a victim", mallory:message(v1.uri, "hi",
        { headers = { Route = v1.route } }), 200)
      attempt("REGISTER bob with a victim as Contact", register(mallory, "bob", v1.uri),
        200)
      attempt("REFER out of a call to a victim", mallory:request("REFER", t:contact(),
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 202)
      local call = mallory:invite(v1.uri, { headers = { Route = v1.route } })
      call:expect(183)
      call:expect(200)
      call:ack()
      attempt("REFER in a call to a victim", call:request("REFER",
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 405)
      call:bye()
      untouched("the call's end")
      attempt("INVITE with a To tag, Route to a victim", mallory:request("INVITE", v1.uri,
        { headers = in_dialog(v1.route) }), 481)
      forged_dialog(t, v1, 481)
    end)
  end)

  describe("examples/ivr.lua", function()
    -- the menu's first prompts, 3 s of silence each, so the call lasts a while
    local function prompts()
      local dir = os.tmpname()
      os.remove(dir)
      assert(os.execute("mkdir -p " .. H.shquote(dir)))
      defer(function() os.execute("rm -rf " .. H.shquote(dir)) end)
      local function le(x, bytes)
        local s = ""
        for _ = 1, bytes do s, x = s .. string.char(x % 256), math.floor(x / 256) end
        return s
      end
      local size = 3 * 8000 * 2
      for _, name in ipairs{ "welcome", "menu" } do
        local f = assert(io.open(dir .. "/" .. name .. ".wav", "wb"))
        f:write("RIFF", le(36 + size, 4), "WAVEfmt ", le(16, 4), le(1, 2), le(1, 2),
          le(8000, 4), le(16000, 4), le(2, 2), le(16, 2), "data", le(size, 4),
          string.rep("\0", size))
        f:close()
      end
      return dir
    end
    local has_engine = require("luasip.core").rtp_open ~= nil

    ;(has_engine and it or pending)("answers for itself and carries out no transfer to a victim", function()
      t = testing.start{ script = "examples/ivr.lua", env = { IVR_PROMPTS = prompts() } }
      local mallory = t:phone("mallory")
      local call = mallory:invite(v1.uri, { headers = { Route = v1.route } })
      call:expect(200)
      call:ack()
      attempt("REFER in a call to a victim", call:request("REFER",
        { headers = { ["Refer-To"] = "<" .. v1.uri .. ">" } }), 405)
      no_handler(mallory, 405, { "MESSAGE", "REFER", "REGISTER", "SUBSCRIBE" })
    end)
  end)

  describe("examples/click_to_call.lua", function()
    it("takes no orders from the network while it calls", function()
      local a = H.agent()
      local d, done                -- A keeps click_to_call's REFER unanswered meanwhile
      a:on("INVITE", function(req)
        d = req:answer()
        if d then
          d:on("REFER", function(r)
            while not done do sip.sleep(0.05) end
            r:reply(603)
          end)
        end
      end)
      defer(function() done = true end)
      t = testing.start{ script = "examples/click_to_call.lua",
        args = { "{address}", a:uri("a"), "sip:b@127.0.0.1:9" }, ready = "calling A" }
      H.run_until(function() return d ~= nil end, 5, "the call to A")
      local mallory = t:phone("mallory")
      no_handler(mallory, 405, { "INVITE", "MESSAGE", "REFER", "REGISTER", "SUBSCRIBE" })
    end)
  end)
end)
