local H = require "spec.helper"
local sip = H.sip
local testing = require "luasip.testing"
local rtpengine = require "luasip.rtpengine"

local have = os.execute("command -v rtpengine >/dev/null 2>&1")
have = have == true or have == 0

-- rtpengine (Debian's rtpengine-daemon) in userspace on loopback: no kernel table, ng on
-- a free port, RTP on a range of its own; ready when it answers a ping
local function start_rtpengine(port)
  port = port or H.free_port()
  local base = 20000 + 1000 * math.random(0, 11)
  local proc = H.background({ "rtpengine", "--config-file=none", "--foreground",
    "--log-stderr", "--table=-1", "--interface=127.0.0.1", "--listen-ng=127.0.0.1:" .. port,
    "--port-min=" .. base, "--port-max=" .. (base + 999), "--log-level=6",
    "--delete-delay=0", "--num-threads=2" }, 120)
  local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port }, timeout = 0.2, retries = 0,
    down_for = 0 }
  local ok = false
  local _, restore = H.capture_logs()          -- (refused until it listens)
  H.run_until(function()
    if proc.done() then return true end
    H.run(function() ok = rtp:ping() end)
    return ok
  end, 10, "rtpengine pong")
  restore()
  assert(ok, "rtpengine did not start:\n" .. proc.log())
  return proc, port, base
end

local OFFER = table.concat({ "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
  "t=0 0", "m=audio 40000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
  "a=rtpmap:101 telephone-event/8000", "a=sendrecv", "" }, "\r\n")
local ANSWER = OFFER:gsub("40000", "40100"):gsub("o=%- 1 1", "o=- 2 1")

-- a stand-in message for the SDP commands: what a request or response gives
local function msg(t)
  t.content_type = t.content_type or "application/sdp"
  return t
end

-- the port of the first m= line and the c= address of an SDP
local function media_of(sdp)
  local t = assert(sip.sdp.parse(sdp))
  local c = t.media[1].connection or t.connection
  return c.address, t.media[1].port
end

describe("luasip.rtpengine bencode", function()
  it("encodes dictionaries with sorted keys, lists, strings and integers", function()
    assert.equal("d7:command4:ping5:flagsl1:a2:bbe1:ni-3ee",
      rtpengine.encode{ command = "ping", flags = { "a", "bb" }, n = -3 })
    assert.equal("le", rtpengine.encode{})
  end)

  it("decodes what it encodes and refuses malformed replies without raising", function()
    local v = assert(rtpengine.decode("d6:result4:pong3:sdp5:v=0\r\n4:listli1ei2eee"))
    assert.same({ result = "pong", sdp = "v=0\r\n", list = { 1, 2 } }, v)
    for _, bad in ipairs{ "", "d", "d3:foo", "5:abc", "i12", "ixe", "d1:ai1ee junk",
      "di1ei2ee", "d1:a", "99999999999:x", ("l"):rep(100) .. ("e"):rep(100), "x" } do
      local r, err = rtpengine.decode(bad)
      assert.is_nil(r, bad)
      assert.is_string(err)
    end
  end)

  it("turns Kamailio-style flag words and tables into ng keys", function()
    assert.same({ ICE = "remove", replace = { "origin", "session-connection" },
      ["transport-protocol"] = "RTP/AVP", flags = { "trust-address", "symmetric" },
      direction = { "internal", "external" }, ["rtcp-mux"] = { "demux" } },
      rtpengine.flags("ICE=remove replace-origin replace-session-connection RTP/AVP "
        .. "trust-address direction=internal direction=external rtcp-mux-demux symmetric"))
    assert.same({ ["transport-protocol"] = "UDP/TLS/RTP/SAVPF", DTLS = "passive" },
      rtpengine.flags{ "UDP/TLS/RTP/SAVPF", "DTLS=passive" })
    assert.same({ flags = { "trust-address", "record-call" }, replace = { "origin" },
      label = "x" },
      rtpengine.flags{ "trust-address", flags = "record-call", replace = { "origin" }, label = "x" })
    assert.has_error(function() rtpengine.flags(5) end)
  end)

  it("checks its options and raises outside a luasip coroutine", function()
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:9" } }
    assert.has_error(function() sip.rtpengine{ servers = { "nowhere" } } end,
      "luasip.rtpengine: bad server address 'nowhere' (an IP address and port expected)")
    assert.has_error(function() sip.rtpengine{ servers = { "127.0.0.1:9" }, bogus = 1 } end)
    assert.has_error(function() rtp:ping() end,
      "not in a luasip coroutine: use sip.spawn (luasip.rtpengine:command)")
  end)
end)

describe("luasip.rtpengine replies", function()
  local defer = H.defer_with(function(f) finally(f) end)

  it("ignores malformed and foreign replies and takes the good one after them", function()
    local peer = H.background({ "python3", "spec/peers/ng_garbage.py", "20" }, 30)
    defer(peer.kill)
    H.run_until(function() return peer.log():match("^%d+\n") or peer.done() end, 5, "peer port")
    local port = assert(tonumber(peer.log():match("^(%d+)")), peer.log())
    local logs, restore = H.capture_logs()
    defer(restore)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port }, timeout = 1, retries = 0 }
    H.run(function()
      for _ = 1, 3 do assert.is_true(rtp:ping()) end
    end)
    local malformed = 0
    for _, l in ipairs(logs) do if l.msg:find("malformed reply to ping", 1, true) then malformed = malformed + 1 end end
    assert.is_true(malformed >= 3, "logged " .. malformed)
  end)
end)

describe("luasip.rtpengine with rtpengine-daemon", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)
  local it_ = have and it or pending

  it_("pings, offers, answers, queries and deletes a call", function()
    local proc, port, base = start_rtpengine()
    defer(proc.kill)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port } }
    H.run(function()
      local ok, server = rtp:ping()
      assert.is_true(ok)
      assert.equal("127.0.0.1:" .. port, server)
      local call = { call_id = "c1-" .. sip.random_hex(4), from_tag = "ft1", to_tag = "tt1" }
      local offer = msg{ call_id = call.call_id, from_tag = "ft1", body = OFFER }
      local sdp, err = rtp:offer(offer, "ICE=remove replace-origin RTP/AVP")
      assert.is_string(sdp, err)
      local addr, p = media_of(sdp)
      assert.equal("127.0.0.1", addr)
      assert.is_true(p >= base and p < base + 1000, "port " .. p .. " not rtpengine's")
      local answer = msg{ call_id = call.call_id, from_tag = "ft1", to_tag = "tt1", body = ANSWER }
      local asdp = assert(rtp:answer(answer, { "replace-origin" }))
      local aaddr, ap = media_of(asdp)
      assert.equal("127.0.0.1", aaddr)
      assert.is_true(ap >= base and ap < base + 1000 and ap ~= p)
      local q = assert(rtp:query(call))
      assert.equal("ok", q.result)
      assert.is_table(q.tags)
      assert.is_truthy(q.tags.ft1 and q.tags.tt1)
      local d = assert(rtp:delete(call))
      assert.equal("ok", d.result)
      local q2, qerr, qcode = rtp:query(call)
      assert.is_nil(q2)
      assert.equal("rtpengine", qcode)
      assert.matches("rtpengine: ", qerr)
    end)
  end)

  it_("takes a burst of 150 calls at once without losing a command", function()
    local proc, port = start_rtpengine()
    defer(proc.kill)
    -- no retransmission: a datagram dropped by a full socket buffer would fail its call
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port }, timeout = 5, retries = 0 }
    local ok, failed = 0, {}
    for i = 1, 150 do
      sip.spawn(function()
        local m = msg{ call_id = "burst-" .. i .. "-" .. sip.random_hex(3), from_tag = "f",
          to_tag = "t", body = OFFER }
        local r, err = rtp:offer(m)
        m.body = ANSWER
        if r then r, err = rtp:answer(m) end
        if r then r, err = rtp:delete(m) end
        if r then ok = ok + 1 else failed[#failed + 1] = tostring(err) end
      end)
    end
    H.run_until(function() return ok + #failed == 150 end, 30, "150 calls")
    assert.same({}, failed)
  end)

  it_("keeps a call on the server that took its offer", function()
    local a_port = H.free_port()                    -- A: down for now
    local proc_b, b_port = start_rtpengine()
    defer(proc_b.kill)
    local _, restore = H.capture_logs()
    defer(restore)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. a_port, "127.0.0.1:" .. b_port },
      down_for = 0 }
    local call = msg{ call_id = "sticky-" .. sip.random_hex(4), from_tag = "f", to_tag = "t",
      body = OFFER }
    assert.is_string(H.run(function() return rtp:offer(call) end))   -- taken by B
    local proc_a = start_rtpengine(a_port)          -- A is up, and first in the list
    defer(proc_a.kill)
    call.body = ANSWER
    H.run(function()
      assert.is_string(rtp:answer(call))            -- A would not know the call
      local _, server = rtp:command{ command = "query", ["call-id"] = call.call_id }
      assert.equal("127.0.0.1:" .. b_port, server)
      local other = msg{ call_id = "new-" .. sip.random_hex(4), from_tag = "f", body = OFFER }
      assert.is_string(rtp:offer(other))
      local _, s2 = rtp:command{ command = "query", ["call-id"] = other.call_id }
      assert.equal("127.0.0.1:" .. a_port, s2)      -- a new call goes to the first one up
    end)
  end)

  it("closes: waiting commands fail, later ones too", function()
    local silent = H.agent()                       -- takes datagrams, never answers
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. silent:transports()[1].port } }
    local got
    sip.spawn(function() got = { rtp:ping() } end)
    H.settle(0.05)
    assert.is_true(rtp:close())
    assert.is_true(rtp:close())
    H.run_until(function() return got ~= nil end, 2, "the ping's end")
    assert.same({ nil, "rtpengine client closed", "closed" }, got)
    assert.same({ nil, "rtpengine client closed", "closed" }, { H.run(function() return rtp:ping() end) })
  end)

  it_("fails over to the next server and skips one that is down", function()
    local proc, port = start_rtpengine()
    defer(proc.kill)
    local dead = H.free_port()                 -- nobody listens: ICMP refuses at once
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. dead, "127.0.0.1:" .. port },
      down_for = 30 }
    local logs, restore = H.capture_logs()
    defer(restore)
    H.run(function()
      local t0 = sip.now()
      local ok, server = rtp:ping()
      assert.is_true(ok)
      assert.equal("127.0.0.1:" .. port, server)
      assert.is_true(sip.now() - t0 < 0.5, "a refused server held the command")
      -- the dead one is now skipped: no second warning
      assert.is_true(rtp:ping())
    end)
    local warned = 0
    for _, l in ipairs(logs) do if l.msg:find(":" .. dead, 1, true) then warned = warned + 1 end end
    assert.equal(1, warned)
  end)

  it_("retransmits to a silent server, then says clearly that none answered", function()
    -- a socket that takes datagrams and never answers: a luasip agent's UDP port
    local silent = H.agent()
    local sport = silent:transports()[1].port
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. sport }, timeout = 0.1, retries = 2 }
    local logs, restore = H.capture_logs()
    defer(restore)
    H.run(function()
      local t0 = sip.now()
      local ok, err, code = rtp:ping()
      local took = sip.now() - t0
      assert.is_nil(ok)
      assert.equal("timeout", code)
      assert.equal("rtpengine unreachable (127.0.0.1:" .. sport .. ": no reply)", err)
      assert.is_true(took >= 0.29 and took < 1, "took " .. took)
    end)
    assert.is_truthy(logs[1] and logs[1].msg:find("ping failed: no reply", 1, true))
  end)
end)

-- A record-routing proxy on rtpengine, in this process: what examples/nat_proxy.lua does
local function proxy_app(rtp)
  return function(agent)
    local registrar, location = sip.registrar{}
    agent:on("REGISTER", registrar)
    agent:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)
    agent:on("BYE", function(req)
      if not req:loose_route() then return req:reply(403) end
      rtp:delete(req)
      req:proxy(req.uri)
    end)
    agent:on("INVITE", function(req)
      if req.to_tag then return rtp:proxy(req, req.uri) end
      local targets = location:lookup(req.uri)
      if #targets == 0 then return req:reply(404) end
      rtp:proxy(req, targets, { record_route = true })
    end)
  end
end

local function in_range(port, base) return port >= base and port < base + 1000 end

-- alice calls bob through the proxy at t, both with luasip media; returns both calls
local function media_call(t)
  local alice, bob = t:phone("alice"), t:phone("bob")
  bob:register():expect(200)
  local a = alice:invite("bob", { media = true })
  local b = bob:expect_call()
  local offer = b.req.body
  b:answer{ media = true }
  a:expect(200)
  return a, b, offer, a.responses[#a.responses].body
end

-- the tone one side sends reaches the other through rtpengine
local function assert_hears(from, to, hz)
  from:send_tone({ freqs = { hz }, ms = 3000 })
  local heard = to:hear(0.6)
  from:stop_output()
  assert.is_false(heard.silence, "silence instead of " .. hz .. " Hz")
  assert.is_true(math.abs(heard.frequency - hz) < 15, "heard " .. tostring(heard.frequency))
end

describe("luasip.rtpengine in a proxy", function()
  local defer = H.defer_with(function(f) finally(f) end)
  local t
  after_each(function()
    if t then t:close() end
    t = nil
    H.close_agents()
  end)
  local it_ = have and it or pending

  it_("relays a call's audio both ways through rtpengine, and deletes it on BYE", function()
    local proc, port, base = start_rtpengine()
    defer(proc.kill)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port },
      offer = "ICE=remove replace-origin", answer = "ICE=remove replace-origin" }
    t = testing.start{ app = proxy_app(rtp), agent = { in_dialog = "handler" } }
    local a, b, offer, answer = media_call(t)
    -- each phone was given rtpengine's address and ports, not the other phone's
    local oaddr, oport = media_of(offer)
    local aaddr, aport = media_of(answer)
    assert.equal("127.0.0.1", oaddr)
    assert.equal("127.0.0.1", aaddr)
    assert.is_true(in_range(oport, base), "offer port " .. oport)
    assert.is_true(in_range(aport, base), "answer port " .. aport)
    assert.equal(oport, b:stats().remote_port)
    assert.equal(aport, a:stats().remote_port)
    assert.is_true(oport ~= a:stats().local_port and aport ~= b:stats().local_port)
    assert_hears(a, b, 440)
    assert_hears(b, a, 1000)
    -- a re-INVITE from the callee goes through offer and answer too; audio goes on
    local tx = b:request("INVITE", { body = sip.sdp.bump(b.dialog.local_sdp),
      content_type = "application/sdp" })
    local re_answer = tx:expect(200).body
    local re_offer = a.dialog.remote_sdp         -- (its stream answered the re-INVITE)
    local _, rport = media_of(re_offer)
    local _, raport = media_of(re_answer)
    assert.is_true(in_range(rport, base) and in_range(raport, base))
    assert.equal(rport, a:stats().remote_port)
    assert.equal(raport, b:stats().remote_port)
    assert_hears(a, b, 600)
    local call_id = b.req.call_id
    local q = H.run(function() return rtp:query{ call_id = call_id } end)
    assert.equal("ok", q.result)
    a:bye()
    b:expect_bye()
    local gone, _, code = H.run(function() return rtp:query{ call_id = call_id } end)
    assert.is_nil(gone)
    assert.equal("rtpengine", code)
  end)

  it_("answers 503 when rtpengine is down, or passes the SDP unchanged when told to", function()
    local dead = H.free_port()
    local logs, restore = H.capture_logs()
    defer(restore)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. dead }, timeout = 0.2 }
    t = testing.start{ app = proxy_app(rtp), agent = { in_dialog = "handler" } }
    local alice, bob = t:phone("alice"), t:phone("bob")
    bob:register():expect(200)
    local a = alice:invite("bob")
    a:expect(503)
    assert.equal("Media Relay Unavailable", a.responses[#a.responses].reason)
    local said = false
    for _, l in ipairs(logs) do
      if l.level == "error" and l.msg:find("rtpengine offer failed: rtpengine unreachable", 1, true)
      then said = true end
    end
    assert.is_true(said)
    t:close()

    local pass = sip.rtpengine{ servers = { "127.0.0.1:" .. dead }, timeout = 0.2,
      on_failure = "pass" }
    t = testing.start{ app = proxy_app(pass), agent = { in_dialog = "handler" } }
    alice, bob = t:phone("alice"), t:phone("bob")
    bob:register():expect(200)
    a = alice:invite("bob")
    local b = bob:expect_call()
    local _, port = media_of(b.req.body)
    assert.equal(alice.rtp_port, port)             -- the caller's own SDP
    b:answer()
    a:expect(200)
    a:ack()
    a:bye()
    b:expect_bye()
  end)

  it_("runs examples/nat_proxy.lua: a call's SDP points at rtpengine and audio passes", function()
    local proc, port, base = start_rtpengine()
    defer(proc.kill)
    t = testing.start{ script = "examples/nat_proxy.lua",
      args = { "{address}", "127.0.0.1:" .. port } }
    local a, b, offer, answer = media_call(t)
    local _, oport = media_of(offer)
    local _, aport = media_of(answer)
    assert.is_true(in_range(oport, base) and in_range(aport, base))
    assert.is_nil(offer:find("a=ice", 1, true))
    assert_hears(a, b, 700)
    a:bye()
    b:expect_bye()
  end)
end)

-- what rtp:proxy stands on: req:proxy's body and rewrite options (no rtpengine needed)
describe("luasip.request:proxy body and rewrite", function()
  local t
  after_each(function()
    if t then t:close() end
    t = nil
    H.close_agents()
  end)

  local SDP_B = OFFER:gsub("40000", "40200")

  it("sends the branches its body and rewrites responses with a body, in order", function()
    local seen = {}
    t = testing.start{ agent = { in_dialog = "handler" }, app = function(agent)
      local registrar, location = sip.registrar{}
      agent:on("REGISTER", registrar)
      agent:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)
      agent:on("BYE", function(req) req:proxy(req.uri) end)
      agent:on("INVITE", function(req)
        req:proxy(location:lookup(req.uri), { record_route = true,
          body = req.body:gsub("40000", "41000"),
          rewrite = function(res)
            seen[#seen + 1] = res.status
            if res.status == 183 then
              sip.sleep(0.3)                        -- the 180 and 200 behind it wait
              return res.body:gsub("40200", "42183")
            end
            if res.status == 200 then return res.body:gsub("40200", "42200") end
          end })
      end)
    end }
    local alice, bob = t:phone("alice"), t:phone("bob")
    bob:register():expect(200)
    local a = alice:invite("bob", { sdp = OFFER })
    local b = bob:expect_call()
    assert.matches("m=audio 41000 ", b.req.body)
    b:reply(183, nil, { body = SDP_B, content_type = "application/sdp" })
    b:reply(180)
    b:answer{ sdp = SDP_B }
    a:expect(183)
    a:expect(180)
    a:expect(200)
    local statuses, bodies = {}, {}
    for _, r in ipairs(a.responses) do
      statuses[#statuses + 1] = r.status
      bodies[r.status] = r.body
    end
    assert.same({ 183, 180, 200 }, statuses)
    assert.matches("m=audio 42183 ", bodies[183])
    assert.matches("m=audio 42200 ", bodies[200])
    assert.same({ 183, 200 }, seen)                 -- only responses with a body
    a:ack()
    a:bye()
    b:expect_bye()
  end)

  it("passes a response on unchanged when the rewrite fails", function()
    local logs, restore = H.capture_logs()
    t = testing.start{ agent = { in_dialog = "handler" }, app = function(agent)
      local registrar, location = sip.registrar{}
      agent:on("REGISTER", registrar)
      agent:on("ACK", function(ack) if ack:loose_route() then ack:forward() end end)
      agent:on("BYE", function(req) req:proxy(req.uri) end)
      agent:on("INVITE", function(req)
        req:proxy(location:lookup(req.uri), { record_route = true,
          rewrite = function() error("boom") end })
      end)
    end }
    local alice, bob = t:phone("alice"), t:phone("bob")
    bob:register():expect(200)
    local a = alice:invite("bob")
    local b = bob:expect_call()
    b:answer{ sdp = SDP_B }
    local res = a:expect(200)
    restore()
    assert.equal(SDP_B, res.body)
    local logged = false
    for _, l in ipairs(logs) do if l.msg:find("proxy rewrite failed: .*boom") then logged = true end end
    assert.is_true(logged)
    a:ack()
    a:bye()
    b:expect_bye()
  end)

  it("lets go of a held response when the agent closes under it", function()
    local released
    t = testing.start{ agent = { in_dialog = "handler" }, app = function(agent)
      local registrar, location = sip.registrar{}
      agent:on("REGISTER", registrar)
      agent:on("INVITE", function(req)
        req:proxy(location:lookup(req.uri), { record_route = true,
          rewrite = function(res)
            sip.sleep(0.3)
            released = res.status
            return "v=0\r\n"
          end })
      end)
    end }
    local alice, bob = t:phone("alice"), t:phone("bob")
    bob:register():expect(200)
    alice:invite("bob")
    local b = bob:expect_call()
    b:reply(183, nil, { body = SDP_B, content_type = "application/sdp" })
    H.settle(0.1)
    t.agent:close()                                 -- the 183 is still held
    H.run_until(function() return released ~= nil end, 3, "the rewrite's end")
    H.settle(0.1)
    assert.equal(183, released)
    collectgarbage()
    collectgarbage()
    sip.step(0)
    assert.equal(0, sip.stats()["luasip.proxy"] or 0)
  end)

  it("checks its options", function()
    t = testing.start{ app = function(agent)
      agent:on("OPTIONS", function(req)
        local ok1, e1 = pcall(req.proxy, req, "sip:x@127.0.0.1:9", { rewrite = 1 })
        local ok2, e2 = pcall(req.proxy, req, "sip:x@127.0.0.1:9", { body = 1 })
        req:reply(200, (not ok1 and e1:match("rewrite must be a function") and
          not ok2 and e2:match("body must be a string")) and "checked" or "not checked")
      end)
    end }
    assert.equal("checked", t:options(t:contact()):expect(200).reason)
  end)
end)
