local H = require "spec.helper"
local sip = H.sip
local cluster = require "luasip.cluster"

local have_redis = os.execute("command -v redis-server >/dev/null 2>&1")
have_redis = have_redis == true or have_redis == 0

-- rings(agent) -> fn() -> the INVITE agent rings for (180, then 10 s with no answer)
local function rings(agent)
  local ringing
  agent:on("INVITE", function(req)
    ringing = req
    req:reply(180)
    sip.sleep(10)
  end)
  return function() return ringing end
end

-- examples/workers.lua as 2 workers behind luasip's stateless front (sip.cluster), with
-- registrations, subscriptions and publications in a redis-server the spec starts on a
-- Unix socket; luasip agents are the phones.
describe("luasip.cluster (examples/workers.lua, 2 workers)", function()
  local defer = H.defer_with(function(f) finally(f) end)
  local redis, dir, sock
  local c                          -- the running cluster (see start)

  -- start([script [, env]]) -> { proc, port, workers = { [i] = { port =, pid = } }, pid }
  local function start(script, extra)
    local port = H.free_port()
    local argv = { "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      "WORKERS=2", "REDIS=" .. sock }
    for _, e in ipairs(extra or {}) do argv[#argv + 1] = e end
    argv[#argv + 1] = H.interpreter()
    argv[#argv + 1] = script or "examples/workers.lua"
    argv[#argv + 1] = "127.0.0.1:" .. port
    local t = { proc = H.background(argv, 120), port = port, workers = {} }
    local n = 2
    for _, e in ipairs(extra or {}) do n = tonumber(e:match("^WORKERS=(%d+)$")) or n end
    local function ready() return select(2, t.proc.log():gsub("worker %d ready", "")) end
    H.run_until(function() return ready() >= n or t.proc.done() end, 15, "workers ready")
    assert.is_nil(t.proc.done(), t.proc.log())
    for i, pid, p in t.proc.log():gmatch("worker (%d) started, pid (%d+) on sip:127%.0%.0%.1:(%d+)") do
      t.workers[tonumber(i)] = { pid = tonumber(pid), port = tonumber(p) }
    end
    t.pid = tonumber(t.proc.log():match("front on .- pid (%d+)"))
    return t
  end

  local function alive(pid)
    local ok = os.execute("kill -0 " .. pid .. " 2>/dev/null")
    return ok == true or ok == 0
  end

  setup(function()
    if not have_redis then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    sock = dir .. "/redis.sock"
    redis = H.background({ "redis-server", "--port", "0", "--unixsocket", sock,
      "--save", "", "--appendonly", "no", "--dir", dir }, 300)
    H.run_until(function()
      local ok = os.execute("test -S " .. sock)
      return ok == true or ok == 0 or redis.done()
    end, 10, "redis socket")
    c = start()
  end)
  teardown(function()
    if c then c.proc.kill() end
    if redis then redis.kill() end
    if dir then os.execute("rm -rf " .. dir) end
  end)
  after_each(function() H.close_agents() end)

  local it_ = have_redis and it or pending
  local function front() return "sip:127.0.0.1:" .. c.port end
  local function aor(user) return "sip:" .. user .. "@127.0.0.1" end

  -- a Call-ID the front sends to worker i (its hash slot)
  local serial = 0
  local function cid(i)
    repeat serial = serial + 1 until cluster.hash("cl-" .. serial) % 2 + 1 == i
    return "cl-" .. serial
  end

  local function register(p, user, worker, expires)
    return p:request{ method = "REGISTER", uri = front(), headers = { ["Call-ID"] = cid(worker),
      From = "<" .. aor(user) .. ">", To = "<" .. aor(user) .. ">",
      Contact = "<" .. p:uri(user) .. ">", Expires = tostring(expires or 60) } }
  end

  it_("reaches a user registered through one worker with a call and a MESSAGE handled by the other", function()
    local alice, bob = H.agent(), H.agent()
    local res = H.run(function() return assert(register(bob, "bob", 1)) end)
    assert.equal(200, res.status)
    assert.equal("luasip-worker-1", res:header("Server"))
    local call = {}
    bob:on("INVITE", function(req)
      call.rr = req:header("Record-Route")
      local d = assert(req:answer{ body = "v=0\r\n", content_type = "application/sdp" })
      call.ended = d:wait_end(10)
    end)
    local message
    bob:on("MESSAGE", function(req) message = req.body; req:reply(200) end)
    local d, r = H.run(function()
      return alice:invite{ uri = aor("bob"), proxy = front(), body = "v=0\r\n",
        headers = { ["Call-ID"] = cid(2) } }
    end)
    assert(d, r)
    assert.equal(200, r.status)
    -- worker 2 record-routed the call: ACK and BYE go to its port, not through the front
    assert.equal("<sip:127.0.0.1:" .. c.workers[2].port .. ";lr>", call.rr)
    -- a BYE that comes to the front anyway, with the Route to worker 2, reaches it (the
    -- Call-ID's hash) and worker 2 passes it on to bob (a CSeq above alice's: RFC 3261
    -- 12.2.2 answers a lower one 500)
    local line = H.send_raw(c.port, table.concat({
      "BYE " .. d:target() .. " SIP/2.0",
      "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-bye-via-front",
      "Route: " .. call.rr,
      "From: <" .. aor("alice") .. ">;tag=" .. d.local_tag,
      "To: <" .. aor("bob") .. ">;tag=" .. d.remote_tag,
      "Call-ID: " .. d.call_id, "CSeq: 2147483000 BYE", "Max-Forwards: 70", "Content-Length: 0", "", "" },
      "\r\n"))
    assert.equal("SIP/2.0 200 OK", line, c.proc.log())
    H.run_until(function() return call.ended end)
    assert.equal("remote bye", call.ended)
    local mres = H.run(function()
      return alice:request{ method = "MESSAGE", uri = aor("bob"), proxy = front(), body = "hi",
        content_type = "text/plain", headers = { ["Call-ID"] = cid(2) } }
    end)
    assert.equal(200, mres.status)
    assert.equal("hi", message)
    H.run(function() assert(register(bob, "bob", 1, 0)) end)
  end)

  it_("sends the CANCEL and the ACK of a failure that come to the front to the worker of the INVITE", function()
    local alice, bob = H.agent(), H.agent()
    H.run(function() assert(register(bob, "bob", 2)) end)
    local ringing = rings(bob)
    local tx
    local res, err, code = H.run(function()
      tx = assert(alice:send{ method = "INVITE", uri = aor("bob"), proxy = front(),
        body = "v=0\r\n", content_type = "application/sdp", headers = { ["Call-ID"] = cid(1) } })
      tx:on_provisional(function(p) if p.status == 180 then tx:cancel() end end)
      return tx:wait(10)
    end)
    assert.is_nil(res, err)
    assert.equal(487, code)
    H.run_until(function() return ringing() and ringing():cancelled() end, 5, "bob's INVITE cancelled")
    H.run(function() assert(register(bob, "bob", 2, 0)) end)
  end)

  it_("keeps a subscription on its worker: NOTIFYs from its port, refreshes straight to it", function()
    local watcher = H.agent()
    local notes = {}
    local sub = H.run(function()
      return assert(watcher:subscribe{ uri = aor("carol"), event = "presence", proxy = front(),
        expires = 120, headers = { ["Call-ID"] = cid(1) },
        on_notify = function(req) notes[#notes + 1] = req.source.port end })
    end)
    H.run_until(function() return #notes >= 1 end, 5, "first NOTIFY")
    assert.equal(c.workers[1].port, notes[1])
    H.run(function() assert(sub:refresh()) end)
    H.run_until(function() return #notes >= 2 end, 5, "NOTIFY of the refresh")
    assert.equal(c.workers[1].port, notes[2])
    H.run(function() sub:unsubscribe() end)
  end)

  it_("restarts a killed worker and sends its share to the other one meanwhile", function()
    local alice, bob = H.agent(), H.agent()
    H.run(function() assert(register(bob, "bob", 1, 120)) end)
    local old = c.workers[1].pid
    assert(os.execute("kill -KILL " .. old))
    H.run_until(function() return c.proc.log():find("pid " .. old .. " ended") end, 5, "front sees it")
    local res = H.run(function() return assert(register(alice, "alice", 1)) end)
    assert.equal("luasip-worker-2", res:header("Server"))
    H.run_until(function() return select(2, c.proc.log():gsub("worker 1 ready", "")) >= 2 end,
      15, "worker 1 restarted")
    assert.is_false(alive(old))
    res = H.run(function() return assert(register(alice, "alice", 1)) end)
    assert.equal("luasip-worker-1", res:header("Server"))
    -- bob's registration (in Redis) outlived the worker that took it
    local got
    bob:on("MESSAGE", function(req) got = true; req:reply(200) end)
    local mres = H.run(function()
      return alice:request{ method = "MESSAGE", uri = aor("bob"), proxy = front(), body = "x",
        content_type = "text/plain", headers = { ["Call-ID"] = cid(1) } }
    end)
    assert.equal(200, mres.status)
    assert.is_true(got)
    H.run(function() register(bob, "bob", 1, 0); register(alice, "alice", 1, 0) end)
  end)

  it_("drains on SIGTERM: 503 for new calls, the current call ends normally, then all stop", function()
    local t = start()
    defer(t.proc.kill)
    local alice, bob = H.agent(), H.agent()
    local function fr() return "sip:127.0.0.1:" .. t.port end
    H.run(function()
      assert(bob:request{ method = "REGISTER", uri = fr(), headers = { From = "<" .. aor("dave") .. ">",
        To = "<" .. aor("dave") .. ">", Contact = "<" .. bob:uri("dave") .. ">", Expires = "60" } })
    end)
    local ended
    bob:on("INVITE", function(req)
      local d = assert(req:answer{ body = "v=0\r\n", content_type = "application/sdp" })
      ended = d:wait_end(20)
    end)
    local d = H.run(function()
      return assert(alice:invite{ uri = aor("dave"), proxy = fr(), body = "v=0\r\n" })
    end)
    assert(os.execute("kill -TERM " .. t.pid))
    H.run_until(function() return t.proc.log():find("draining") end, 5, "drain begins")
    local _, err, code, r = H.run(function()
      return alice:invite{ uri = aor("dave"), proxy = fr(), body = "v=0\r\n" }
    end)
    assert.equal(503, code, err)
    assert.equal("5", r:header("Retry-After"))
    assert.is_nil(t.proc.done())                        -- the call holds the drain
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return ended end, 5, "BYE through the draining worker")
    assert.equal("remote bye", ended)
    H.run_until(function() return t.proc.done() end, 10, "cluster stopped")
    for _, w in ipairs(t.workers) do assert.is_false(alive(w.pid)) end
  end)

  it_("answers 503 with Retry-After while no worker is up", function()
    local t = start("examples/workers.lua", { "WORKERS=1" })
    defer(t.proc.kill)
    assert.is_nil(t.workers[2])
    local pid = t.workers[1].pid
    assert(os.execute("kill -KILL " .. pid))
    H.run_until(function() return t.proc.log():find("pid " .. pid .. " ended") end, 5, "front sees it")
    local _, err, code, r = H.run(function()
      return H.agent():request{ method = "OPTIONS", uri = "sip:127.0.0.1:" .. t.port, timeout = 2 }
    end)
    assert.equal(503, code, err)
    assert.equal("5", r:header("Retry-After"))
  end)

  it_("leaves no worker behind when the launcher is killed", function()
    local t = start()
    defer(t.proc.kill)
    assert(os.execute("kill -KILL " .. t.pid))
    H.run_until(function()
      return not alive(t.workers[1].pid) and not alive(t.workers[2].pid)
    end, 5, "workers gone")
  end)

  it_("runs examples/pbx.lua as 2 workers on Redis: registered via one, called via the other", function()
    local recordings = os.tmpname()
    os.remove(recordings)
    local t = start("examples/pbx.lua", { "PBX_WORKERS=2", "PBX_REDIS=" .. sock,
      "PBX_REDIS_PREFIX=pbx-spec:", "IVR_RECORDINGS=" .. recordings })
    defer(function()
      t.proc.kill()
      os.execute("rm -rf " .. H.shquote(recordings))
    end)
    local fr = "sip:127.0.0.1:" .. t.port
    local function phone(user, worker)
      local a = H.agent()
      a.data.auth = { username = user, password = user .. "-secret" }
      local res = H.run(function()
        return a:request{ method = "REGISTER", uri = fr, auth = a.data.auth, headers = {
          ["Call-ID"] = cid(worker), From = "<" .. aor(user) .. ">", To = "<" .. aor(user) .. ">",
          Contact = "<" .. a:uri(user) .. ">", Expires = "60" } }
      end)
      assert.equal(200, res.status)
      return a
    end
    local alice, bob = phone("alice", 2), phone("bob", 1)
    local call = {}
    bob:on("INVITE", function(req)
      call.rr = req:header("Record-Route")
      local d = assert(req:answer{ body = "v=0\r\n", content_type = "application/sdp" })
      call.ended = d:wait_end(10)
    end)
    local d, r = H.run(function()
      return alice:invite{ uri = aor("bob"), proxy = fr, auth = alice.data.auth,
        from = "<" .. aor("alice") .. ">", body = "v=0\r\n", headers = { ["Call-ID"] = cid(2) } }
    end)
    assert(d, r)
    assert.equal(200, r.status)
    assert.equal("<sip:127.0.0.1:" .. t.workers[2].port .. ";lr>", call.rr)
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return call.ended end)
    assert.equal("remote bye", call.ended)
  end)
end)

-- the core pieces of the front and the launcher, in this process (under valgrind too)
describe("a stateless agent forwarding with req:forward{ next_hop }", function()
  after_each(function() H.close_agents() end)

  it("passes an INVITE, its CANCEL and the ACK of the 487 to the next hop, Request-URI kept", function()
    local front = H.agent{ stateless = true, in_dialog = "handler" }
    local uas, uac = H.agent(), H.agent()
    local hop = "sip:127.0.0.1:" .. uas:transports()[1].port
    local seen = {}
    local function pass(req)
      seen[#seen + 1] = req.method
      assert(req:forward(nil, { next_hop = hop }))
    end
    for _, m in ipairs{ "INVITE", "CANCEL", "ACK" } do front:on(m, pass) end
    local ringing = rings(uas)
    local provisional = {}
    local _, _, code = H.run(function()
      local tx = assert(uac:send{ method = "INVITE", uri = "sip:bob@127.0.0.1", body = "v=0\r\n",
        content_type = "application/sdp",
        proxy = "sip:127.0.0.1:" .. front:transports()[1].port })
      tx:on_provisional(function(p)
        provisional[#provisional + 1] = p.status
        if p.status == 180 then tx:cancel() end
      end)
      return tx:wait(10)
    end)
    assert.equal(487, code)
    assert.equal("sip:bob@127.0.0.1", ringing().uri)
    H.run_until(function() return ringing():cancelled() and #seen >= 3 end, 5, "CANCEL and ACK")
    assert.same({ "INVITE", "CANCEL", "ACK" }, seen)
    assert.same({ 180 }, provisional)              -- no 100 Trying of the front's own
  end)

  it("takes a CANCEL handler only when stateless; without one a stray CANCEL gets 481", function()
    local plain = H.agent()
    assert.has_error(function() plain:on("CANCEL", function() end) end,
      "luasip.agent:on: CANCEL is handled by the core (use req:on_cancel)")
    local front = H.agent{ stateless = true }
    local port = front:transports()[1].port
    local line = H.send_raw(port, table.concat({
      "CANCEL sip:x@127.0.0.1:" .. port .. " SIP/2.0",
      "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-stray-cancel",
      "From: <sip:a@127.0.0.1>;tag=1", "To: <sip:x@127.0.0.1>", "Call-ID: stray-cancel",
      "CSeq: 1 CANCEL", "Max-Forwards: 70", "Content-Length: 0", "", "" }, "\r\n"))
    assert.equal("SIP/2.0 481 Call/Transaction Does Not Exist", line)
  end)
end)

describe("agent:spread, the front in C", function()
  after_each(function() H.close_agents() end)

  -- a front spreading over two UASs that answer MESSAGE 200 and note each Call-ID
  local function setup_front()
    local front = H.agent{ stateless = true, in_dialog = "handler" }
    local got, uas = { {}, {} }, {}
    for i = 1, 2 do
      uas[i] = H.agent()
      uas[i]:on("MESSAGE", function(req) got[i][#got[i] + 1] = req.call_id; req:reply(200) end)
    end
    local lua_ran = false
    for _, m in ipairs{ "MESSAGE", "INVITE", "OPTIONS" } do
      front:on(m, function(req) lua_ran = true; req:reply(599) end)
    end
    local hops = {}
    for i = 1, 2 do hops[i] = "sip:127.0.0.1:" .. uas[i]:transports()[1].port end
    return front, hops, got, function() return lua_ran end
  end
  local function message(uac, front, call_id, extra)
    local headers = { ["Call-ID"] = call_id }
    for k, v in pairs(extra or {}) do headers[k] = v end
    return uac:request{ method = "MESSAGE", uri = "sip:bob@127.0.0.1", body = "hi",
      content_type = "text/plain", headers = headers, timeout = 5,
      proxy = "sip:127.0.0.1:" .. front:transports()[1].port }
  end

  it("sends each request to its Call-ID's hash slot, as luasip.cluster hashes, without Lua", function()
    -- djb2 over the bytes, modulo 2^31 - 1: ((5381 * 33 + 97) * 33 + 98) * 33 + 99
    assert.equal(193485963, cluster.hash("abc"))
    local front, hops, got, lua_ran = setup_front()
    assert.is_true(front:spread(hops))
    local uac = H.agent()
    local want = { {}, {} }
    H.run(function()
      for k = 1, 12 do
        local id = "spread-" .. k .. "@test"
        local res = assert(message(uac, front, id))
        assert.equal(200, res.status)
        local slot = cluster.hash(id) % 2 + 1
        want[slot][#want[slot] + 1] = id
      end
    end)
    assert.same(want, got)
    assert.is_true(#want[1] > 0 and #want[2] > 0)
    assert.is_false(lua_ran())
    local st = front:spread()
    assert.equal(2, st.slots)
    assert.equal(12, st.forwarded)
  end)

  it("passes an INVITE, its CANCEL and the ACK of the 487 to the slot's worker", function()
    local front = H.agent{ stateless = true, in_dialog = "handler" }
    local uas, uac = H.agent(), H.agent()
    local hop = "sip:127.0.0.1:" .. uas:transports()[1].port
    front:spread({ hop, hop })
    local ringing = rings(uas)
    local _, _, code = H.run(function()
      local tx = assert(uac:send{ method = "INVITE", uri = "sip:bob@127.0.0.1", body = "v=0\r\n",
        content_type = "application/sdp",
        proxy = "sip:127.0.0.1:" .. front:transports()[1].port })
      tx:on_provisional(function(p) if p.status == 180 then tx:cancel() end end)
      return tx:wait(10)
    end)
    assert.equal(487, code)
    H.run_until(function() return ringing() and ringing():cancelled() end, 5, "CANCEL")
    -- INVITE, CANCEL, ACK of the 487
    H.run_until(function() return front:spread().forwarded >= 3 end, 5, "the ACK")
    assert.equal(3, front:spread().forwarded)
  end)

  it("answers 503 + Retry-After for a slot with no worker, and while draining for new requests only", function()
    local front, hops, got = setup_front()
    local id1, id2 = "slot-a", "slot-b"          -- one Call-ID for each slot
    for k = 1, 100 do
      local id = "slot-" .. k
      if cluster.hash(id) % 2 == 0 then id1 = id else id2 = id end
    end
    assert.are_not.equal(cluster.hash(id1) % 2, cluster.hash(id2) % 2)
    front:spread({ false, hops[2] })
    local uac = H.agent()
    H.run(function()
      local res, _, code, r = message(uac, front, id1)
      assert.is_nil(res)
      assert.equal(503, code)
      assert.equal("5", r:header("Retry-After"))
      assert.equal(200, assert(message(uac, front, id2)).status)
      front:spread(hops, { draining = true })
      local _, _, code2 = message(uac, front, id2)
      assert.equal(503, code2)
    end)
    assert.same({ id2 }, got[2])
    assert.is_true(front:spread().draining)
    assert.equal(2, front:spread().refused)
    -- in a dialog (a To tag): still forwarded while draining (the worker's answer: it
    -- knows no such dialog)
    local forwarded = front:spread().forwarded
    local port = front:transports()[1].port
    local line = H.send_raw(port, table.concat({
      "MESSAGE sip:bob@127.0.0.1 SIP/2.0",
      "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-spread-indialog",
      "From: <sip:a@127.0.0.1>;tag=1", "To: <sip:bob@127.0.0.1>;tag=2", "Call-ID: " .. id2,
      "CSeq: 2 MESSAGE", "Max-Forwards: 70", "Content-Length: 0", "", "" }, "\r\n"))
    assert.equal("SIP/2.0 481 Call/Transaction Does Not Exist", line)
    assert.equal(forwarded + 1, front:spread().forwarded)
    -- Max-Forwards 0: 483
    line = H.send_raw(port, table.concat({
      "OPTIONS sip:bob@127.0.0.1 SIP/2.0",
      "Via: SIP/2.0/UDP 127.0.0.1:9;rport;branch=z9hG4bK-spread-mf0",
      "From: <sip:a@127.0.0.1>;tag=1", "To: <sip:bob@127.0.0.1>;tag=3", "Call-ID: " .. id2,
      "CSeq: 1 OPTIONS", "Max-Forwards: 0", "Content-Length: 0", "", "" }, "\r\n"))
    assert.equal("SIP/2.0 483 Too Many Hops", line)
  end)

  it("goes back to the handlers with spread(false), and refuses bad arguments by name", function()
    local front, hops = setup_front()
    front:spread(hops)
    assert.is_true(front:spread(false))
    assert.is_nil(front:spread())
    local uac = H.agent()
    local _, _, code = H.run(function() return message(uac, front, "back-to-lua") end)
    assert.equal(599, code)
    assert.has_error(function() front:spread({}) end, "luasip.agent:spread: 1-64 slots expected")
    assert.has_error(function() front:spread("x") end)
    local ok, err = pcall(front.spread, front, { "not a uri" })
    assert.is_false(ok)
    assert.matches("luasip.agent:spread", err)
  end)
end)

describe("luasip.core spawn, wait, kill", function()
  local core = require "luasip.core"
  it("starts a child with extra environment, signals it and reaps it", function()
    local pid = assert(core.spawn({ "sh", "-c", 'test "$LUASIP_X" = y && exec sleep 30' }, { "LUASIP_X=y" }))
    assert.is_false(core.wait(pid))
    assert.is_true(core.kill(pid, "0"))
    assert.is_true(core.kill(pid, "TERM"))
    local how, code
    H.run_until(function() how, code = core.wait(pid); return how end, 5, "child ended")
    assert.same({ "signal", 15 }, { how, code })
    pid = assert(core.spawn({ "sh", "-c", "exit 3" }))
    H.run_until(function() how, code = core.wait(pid); return how end, 5, "child exited")
    assert.same({ "exit", 3 }, { how, code })
    pid = assert(core.spawn({ "no-such-command-luasip" }))
    H.run_until(function() how, code = core.wait(pid); return how end, 5, "exec failed")
    assert.same({ "exit", 127 }, { how, code })
  end)
end)

-- Over TCP and TLS the 487 that follows a CANCEL matches no transaction in sofia 1.12's nta (it
-- comes to the agent as a stray response): the core finds the INVITE by its Via branch,
-- ACKs the 487 over the same connection and delivers it.  The callee is a raw TCP phone
-- (spec/peers/tcp_callee.py) that checks the ACK.
describe("a CANCEL over TCP", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)

  -- callee() -> its port, its process (LISTENING once it accepts)
  local function callee()
    local port = H.free_port()
    local p = H.background({ "python3", "spec/peers/tcp_callee.py", tostring(port), "15" }, 20)
    defer(p.kill)
    H.run_until(function() return p.log():find("LISTENING") end, 10, "tcp_callee.py")
    return port, p
  end

  -- an INVITE over TCP to uri (through proxy), cancelled at its 180 -> its final status
  local function cancelled_invite(uac, uri, proxy)
    local _, _, code = H.run(function()
      local tx = assert(uac:send{ method = "INVITE", uri = uri, proxy = proxy,
        body = "v=0\r\n", content_type = "application/sdp" })
      tx:on_provisional(function(p) if p.status == 180 then tx:cancel() end end)
      return tx:wait(10)
    end, 15)
    return code
  end

  it("gives a UAC the 487 and the callee its ACK", function()
    local port, phone = callee()
    local uac = H.agent()
    assert.equal(487, cancelled_invite(uac, "sip:callee@127.0.0.1:" .. port .. ";transport=tcp"))
    H.run_until(function() return phone.log():find("ACK") end, 10, "the ACK")
    assert.equal("LISTENING\nINVITE\nCANCEL\nACK ok\n", phone.log())
  end)

  ;(H.have("openssl") and it or pending)("gives a UAC the 487 over TLS too", function()
    local dir = H.test_certs()
    defer(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    local function agent()
      return H.agent{ listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" }, tls = {
        cert = dir .. "/server.pem", key = dir .. "/server.key", ca = dir .. "/ca.pem" } }
    end
    local uas, uac = agent(), agent()
    local ringing = rings(uas)
    local port
    for _, t in ipairs(uas:transports()) do if t.transport == "tls" then port = t.port end end
    assert.equal(487, cancelled_invite(uac, "sips:callee@127.0.0.1:" .. port))
    assert.is_true(ringing():cancelled())
  end)

  it("gives the caller the 487 through a luasip proxy, and the callee its ACK", function()
    local port, phone = callee()
    local proxy, uac = H.agent(), H.agent()
    local final
    proxy:on("INVITE", function(req)
      final = { req:proxy("sip:callee@127.0.0.1:" .. port .. ";transport=tcp") }
    end)
    assert.equal(487, cancelled_invite(uac, "sip:callee@127.0.0.1",
      "sip:127.0.0.1:" .. proxy:transports()[1].port .. ";transport=tcp"))
    H.run_until(function() return phone.log():find("ACK") and final end, 10, "the ACK")
    assert.equal("LISTENING\nINVITE\nCANCEL\nACK ok\n", phone.log())
    assert.same({ nil, "cancelled", "cancelled" }, final)    -- req:proxy's word for it
  end)
end)
