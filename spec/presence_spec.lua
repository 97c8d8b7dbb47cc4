local H = require "spec.helper"
local sip = H.sip

local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"

-- starts an example on 127.0.0.1 and a free port with MIN_EXPIRES=1; -> process, port
local function start(path)
  local port = H.free_port()
  local p = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
    "LUA_CPATH=build/" .. FLAVOUR .. "/?.so;;", "MIN_EXPIRES=1", H.interpreter(), path,
    "127.0.0.1:" .. port }, 120)
  H.run_until(function() return p.log():find("listening on") or p.done() end, 10,
    path .. " listening")
  assert(not p.done(), path .. " exited:\n" .. p.log())
  return p, port
end

describe("luasip.pidf", function()
  local pidf = sip.pidf

  it("builds a document that parses back", function()
    local body = pidf.build{ entity = "sip:alice@example.com", status = "open",
      contact = "sip:alice@192.0.2.1", note = "Lunch & <back> soon" }
    assert.matches('^<%?xml version="1.0" encoding="UTF%-8"%?>', body)
    assert.matches('xmlns="urn:ietf:params:xml:ns:pidf"', body)
    local doc = assert(pidf.parse(body))
    assert.equal("sip:alice@example.com", doc.entity)
    assert.equal("open", doc.status)
    assert.equal(1, #doc.tuples)
    assert.same({ id = "t1", status = "open", contact = "sip:alice@192.0.2.1",
      note = "Lunch & <back> soon" }, doc.tuples[1])
  end)

  it("parses prefixed namespaces, single quotes, comments, CDATA and unknown elements", function()
    local body = [==[<?xml version='1.0'?>
      <!-- a comment -->
      <p:presence xmlns:p='urn:ietf:params:xml:ns:pidf' entity='pres:bob@example.com'
          xmlns:dm="urn:ietf:params:xml:ns:pidf:data-model">
        <p:tuple id='a1'>
          <p:status><p:basic> CLOSED </p:basic><x:extra xmlns:x="urn:x">1</x:extra></p:status>
          <p:contact priority="0.8">sip:bob@pc</p:contact>
        </p:tuple>
        <p:tuple id="a2"><p:status><p:basic>open</p:basic></p:status>
          <p:note xml:lang="en"><![CDATA[on the <phone>]]></p:note>
          <p:timestamp>2026-11-24T11:00:00Z</p:timestamp></p:tuple>
        <dm:person id="x"><dm:note>ignored</dm:note></dm:person>
        <p:note>top &amp; level &#233;</p:note>
      </p:presence>]==]
    local doc = assert(pidf.parse(body))
    assert.equal("pres:bob@example.com", doc.entity)
    assert.equal("open", doc.status)
    assert.equal("closed", doc.tuples[1].status)
    assert.equal(0.8, doc.tuples[1].priority)
    assert.equal("on the <phone>", doc.tuples[2].note)
    assert.equal("2026-11-24T11:00:00Z", doc.tuples[2].timestamp)
    assert.same({ "top & level \195\169" }, doc.notes)
  end)

  it("reports documents it cannot read", function()
    assert.same({ nil, "no <presence> element" }, { pidf.parse("<foo/>") })
    assert.is_nil((pidf.parse("<presence><tuple></presence>")))
    assert.is_nil((pidf.parse(nil)))
    local doc = assert(pidf.parse('<presence entity="sip:a@b"/>'))
    assert.is_nil(doc.status)
  end)

  it("merges the tuples of several documents, keeping ids unique", function()
    local a = pidf.build{ entity = "sip:a@x", id = "t", status = "closed" }
    local b = pidf.build{ entity = "sip:a@x", id = "t", status = "open", note = "pc" }
    local doc = assert(pidf.parse(pidf.merge("sip:a@x", { a, b, "not xml <" })))
    assert.equal(2, #doc.tuples)
    assert.equal("open", doc.status)
    assert.are_not.equal(doc.tuples[1].id, doc.tuples[2].id)
  end)

  it("raises on bad arguments", function()
    assert.has_error(function() pidf.build{} end, "luasip.pidf.build: entity must be a URI")
    assert.has_error(function() pidf.build{ entity = "sip:a@b", status = "away" } end,
      'luasip.pidf.build: status must be "open" or "closed"')
  end)
end)

describe("examples/presence.lua", function()
  local server, port
  setup(function() server, port = start("examples/presence.lua") end)
  teardown(function() if server then server.kill() end end)
  after_each(function() H.close_agents() end)

  local function proxy() return "sip:127.0.0.1:" .. port end
  local function aor(user) return "sip:" .. user .. "@127.0.0.1" end

  local function register(a, user, expires)
    return H.run(function()
      return assert(a:request{ method = "REGISTER", uri = proxy(), headers = {
        To = "<" .. aor(user) .. ">", From = "<" .. aor(user) .. ">",
        Contact = "<" .. a:uri(user) .. ">", Expires = tostring(expires) } })
    end)
  end

  -- watcher of user: notes gets { status =, note =, state = } per NOTIFY
  local function watch(user, notes)
    local w = H.agent()
    return H.run(function()
      return assert(w:subscribe{ uri = aor(user), proxy = proxy(), event = "presence",
        expires = 60, on_notify = function(req, sub)
          local doc = req.body and sip.pidf.parse(req.body)
          notes[#notes + 1] = { status = doc and doc.status, state = sub.state,
            note = doc and doc.tuples[1] and doc.tuples[1].note }
        end })
    end)
  end

  local function last(notes) return notes[#notes] or {} end

  it("shows a user online when they register and offline when the registration expires", function()
    local notes = {}
    local sub = watch("alice", notes)
    H.run_until(function() return #notes == 1 end)
    assert.equal("closed", notes[1].status)
    assert.equal("active", notes[1].state)
    local alice = H.agent()
    local t0 = sip.now()
    register(alice, "alice", 2)
    H.run_until(function() return last(notes).status == "open" end, 3, "alice online")
    H.run_until(function() return last(notes).status == "closed" end, 6, "alice offline")
    local took = sip.now() - t0
    assert.is_true(took >= 1.9 and took < 5, "offline after " .. took .. " s")
    H.run(function() assert.is_true(sub:unsubscribe()) end)
    assert.equal("terminated", sub.state)
  end)

  it("shows what a user publishes, and the registration's state once it is removed", function()
    local notes = {}
    local sub = watch("bob", notes)
    H.run_until(function() return #notes == 1 end)
    local bob = H.agent()
    register(bob, "bob", 60)
    H.run_until(function() return last(notes).status == "open" end)
    local pub = H.run(function()
      return assert(bob:publish{ uri = aor("bob"), proxy = proxy(), event = "presence",
        body = sip.pidf.build{ entity = aor("bob"), status = "closed", note = "in a meeting" } })
    end)
    H.run_until(function() return last(notes).note == "in a meeting" end)
    assert.equal("closed", last(notes).status)
    H.run(function() assert(pub:modify(sip.pidf.build{ entity = aor("bob"), status = "open",
      note = "back" })) end)
    H.run_until(function() return last(notes).note == "back" end)
    H.run(function() assert(pub:remove()) end)
    H.run_until(function() return last(notes).note == nil end)
    assert.equal("open", last(notes).status)          -- still registered
    register(bob, "bob", 0)
    H.run_until(function() return last(notes).status == "closed" end)
    H.run(function() sub:unsubscribe() end)
  end)

  it("shows a user online who publishes without registering, until it expires", function()
    local notes = {}
    local sub = watch("carol", notes)
    H.run_until(function() return #notes == 1 end)
    local carol = H.agent()
    H.run(function()
      return assert(carol:publish{ uri = aor("carol"), proxy = proxy(), event = "presence",
        body = sip.pidf.build{ entity = aor("carol"), status = "open" }, expires = 1,
        refresh = false })
    end)
    H.run_until(function() return last(notes).status == "open" end)
    H.run_until(function() return last(notes).status == "closed" end, 4, "publication expiry")
    H.run(function() sub:unsubscribe() end)
  end)

  it("answers 489 to other event packages", function()
    local w = H.agent()
    local sub, _, code, res = H.run(function()
      return w:subscribe{ uri = aor("alice"), proxy = proxy(), event = "dialog" }
    end)
    assert.is_nil(sub)
    assert.equal(489, code)
    assert.equal("presence", res:header("Allow-Events"))
  end)
end)

describe("examples/chat.lua", function()
  local server, port
  setup(function() server, port = start("examples/chat.lua") end)
  teardown(function() if server then server.kill() end end)
  after_each(function() H.close_agents() end)

  local function proxy() return "sip:127.0.0.1:" .. port end
  local function aor(user) return "sip:" .. user .. "@127.0.0.1" end

  local function register(a, user, expires)
    return H.run(function()
      return assert(a:request{ method = "REGISTER", uri = proxy(), headers = {
        To = "<" .. aor(user) .. ">", From = "<" .. aor(user) .. ">",
        Contact = "<" .. a:uri(user) .. ">", Expires = tostring(expires or 60) } })
    end)
  end

  -- a phone of user whose MESSAGEs land in inbox
  local function phone(inbox)
    local a = H.agent()
    a:on("MESSAGE", function(req)
      inbox[#inbox + 1] = { from = req.from.uri, body = req.body, type = req.content_type,
        date = req:header("Date"), to = req.to.uri }
      req:reply(200)
    end)
    return a
  end

  local function send(from_agent, from_user, to_user, body, ctype)
    return H.run(function()
      return from_agent:request{ method = "MESSAGE", uri = aor(to_user), proxy = proxy(),
        from = "<" .. aor(from_user) .. ">", body = body, content_type = ctype }
    end)
  end

  it("delivers a MESSAGE to every registered contact, any body type, both ways", function()
    local got_bob, got_alice = {}, {}
    local bob1, bob2, alice = phone(got_bob), phone(got_bob), phone(got_alice)
    register(bob1, "bob"); register(bob2, "bob"); register(alice, "alice")
    local json = '{"text":"hi bob","n":1}'
    local res = assert(send(alice, "alice", "bob", json, "application/json"))
    assert.equal(200, res.status)
    assert.equal(2, #got_bob)
    for _, m in ipairs(got_bob) do
      assert.equal(json, m.body)
      assert.equal("application/json", m.type)
      assert.equal(aor("alice"), m.from)
      assert.equal(aor("bob"), m.to)
    end
    res = assert(send(bob1, "bob", "alice", "hello alice", "text/plain"))
    assert.equal(200, res.status)
    assert.equal("hello alice", got_alice[1].body)
    assert.equal(aor("bob"), got_alice[1].from)
    for _, a in ipairs{ bob1, bob2 } do register(a, "bob", 0) end
    register(alice, "alice", 0)
  end)

  it("keeps messages for an offline user (202) and delivers them when they register", function()
    local sender = H.agent()
    local cpim = "From: <sip:dave@127.0.0.1>\r\nTo: <sip:carol@127.0.0.1>\r\n"
      .. "Content-Type: text/plain\r\n\r\nare you there?"
    local res = assert(send(sender, "dave", "carol", "first", "text/plain"))
    assert.equal(202, res.status)
    res = assert(send(sender, "dave", "carol", cpim, "message/cpim"))
    assert.equal(202, res.status)
    local inbox = {}
    local carol = phone(inbox)
    register(carol, "carol")
    H.run_until(function() return #inbox == 2 end, 5, "offline delivery")
    assert.equal("first", inbox[1].body)
    assert.equal("text/plain", inbox[1].type)
    assert.equal(cpim, inbox[2].body)
    assert.equal("message/cpim", inbox[2].type)
    assert.equal(aor("dave"), inbox[2].from)
    assert.matches("GMT$", inbox[1].date)
    -- delivered once: a second registration brings nothing more
    register(carol, "carol")
    H.settle(0.3)
    assert.equal(2, #inbox)
    -- online now: a new one is answered 200
    res = assert(send(sender, "dave", "carol", "now", "text/plain"))
    assert.equal(200, res.status)
    assert.equal(3, #inbox)
    register(carol, "carol", 0)
  end)

  it("keeps a message when the only contact does not answer it", function()
    local erin = H.agent()
    erin:on("MESSAGE", function(req) req:reply(480) end)
    register(erin, "erin")
    local res = assert(send(H.agent(), "dave", "erin", "x", "text/plain"))
    assert.equal(202, res.status)
    register(erin, "erin", 0)
  end)
end)
