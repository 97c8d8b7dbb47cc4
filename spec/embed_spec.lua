local H = require "spec.helper"
local sip = H.sip
local defer = H.defer_with(function(f) finally(f) end)

-- luasip driven by another event loop (README "Embedding"): the host polls sip.pollfd()
-- (or the cqueues pollable sip.pollable()) and calls sip.step(0) when it is readable.
-- Real SIP between two luasip agents, next to the host loop's own timers and sockets.

local has_cqueues, cqueues = pcall(require, "cqueues")
local has_luv, uv = pcall(require, "luv")
local with_cqueues = has_cqueues and it or function(name, fn)
  pending(name .. " (lua-cqueues is not installed for this Lua)", fn)
end
local with_luv = has_luv and it or function(name, fn)
  pending(name .. " (lua-luv is not installed for this Lua)", fn)
end

local SDP = table.concat({ "v=0", "o=luasip 1 1 IN IP4 127.0.0.1", "s=-",
  "c=IN IP4 127.0.0.1", "t=0 0", "m=audio 40000 RTP/AVP 0", "a=rtpmap:0 PCMU/8000", "" },
  "\r\n")

-- The callee: OPTIONS and INVITE handlers that wait on sofia timers (sip.sleep) before
-- answering, so the call only completes if luasip's timers fire under the host loop.
local function callee(uas, seen)
  uas:on("OPTIONS", function(req)
    sip.sleep(0.05)
    req:reply(200)
  end)
  uas:on("INVITE", function(req)
    req:reply(180)
    sip.sleep(0.2)
    local d = assert(req:answer{ body = SDP })
    d:on_end(function(_, why) seen.uas_end = why end)
  end)
  uas:on("ACK", function() seen.ack = true end)
end

-- The caller, in a luasip coroutine started from host code: OPTIONS, then a call that
-- lasts `hold` seconds (a sofia timer) and is hung up with BYE.
local function caller(uac, uas, seen, hold)
  sip.spawn(function()
    local res, err = uac:request{ method = "OPTIONS", uri = uas:uri("x"), timeout = 5 }
    seen.options = res and res.status or err
    local d, r = uac:invite{ uri = uas:uri("bob"), body = SDP, timeout = 5 }
    seen.invite = r and r.status or tostring(r)
    if d then
      sip.sleep(hold)
      seen.bye = d:bye()
    end
    seen.done = true
  end)
end

local function assert_call(seen)
  assert.equal(200, seen.options)
  assert.equal(200, seen.invite)
  assert.is_true(seen.bye)
  assert.is_true(seen.ack)
  assert.equal("remote bye", seen.uas_end)
end

describe("luasip embedded in a host loop", function()
  after_each(function() H.close_agents() end)

  it("has one pollable descriptor, the same on every call", function()
    local fd = assert(sip.pollfd())
    assert.is_number(fd)
    assert.equal(fd, sip.pollfd())
    local p = assert(sip.pollable())
    assert.equal(fd, p:pollfd())
    assert.equal("r", p:events())
    assert.has_error(function() sip.pollfd(1) end, "luasip.pollfd: no arguments expected")
  end)

  it("answers nil, err, \"unsupported\" where sofia's loop is not epoll-based", function()
    -- SU_PORT=poll makes sofia use poll(2): no epoll instance to hand out
    local cmd = "SU_PORT=poll timeout 20 " .. H.shquote(H.interpreter()) .. " -e " .. H.shquote(
      'local sip = require "luasip"; print(sip.pollfd()); print(select("#", sip.pollable()))')
    local f = assert(io.popen(cmd))
    local out = f:read("*a")
    f:close()
    assert.matches("^nil\tluasip%.pollfd: sofia's loop is not epoll%-based[^\n]*\tunsupported\n3\n$", out)
  end)

  it("reports the seconds until the next sofia timer (never early), nil for none", function()
    H.agent()
    local t = sip.timer(0.3, function() end)
    local left = sip.timeout()
    assert.is_number(left)
    assert.is_true(left > 0 and left <= 0.302, tostring(left))
    t:cancel()
  end)

  it("raises when step is called from a handler, also through the pollable", function()
    local uas, uac = H.agent(), H.agent()
    local p = assert(sip.pollable())
    local e1, e2
    uas:on("OPTIONS", function(req)
      e1 = select(2, pcall(sip.step, 0))
      e2 = select(2, pcall(p.step, p))
      req:reply(200)
    end)
    local status = H.run(function()
      local res = uac:request{ method = "OPTIONS", uri = uas:uri("x"), timeout = 3 }
      return res and res.status
    end)
    assert.equal(200, status)
    assert.matches("luasip.step: called from a handler", e1, 1, true)
    assert.matches("luasip.step: called from a handler", e2, 1, true)
  end)

  describe("under cqueues", function()
    -- drives cq until done() or `limit` seconds; returns the seconds it took
    local function cq_run(cq, done, limit)
      local t0 = cqueues.monotime()
      while not done() do
        assert(cqueues.monotime() - t0 < limit, "cqueues loop: not done within " .. limit .. " s")
        assert(cq:step(0.1))
      end
      return cqueues.monotime() - t0
    end

    -- the luasip driver: polls the pollable, steps; counts its wakeups.  stop(state)
    -- ends it through a condition variable (a poll timeout of its own would re-read the
    -- pollable's timeout and hide a stale one).
    local function drive(cq)
      local state = { wakeups = 0, cv = require("cqueues.condition").new() }
      local p = assert(sip.pollable())
      cq:wrap(function()
        while not state.stop do
          local a, b = cqueues.poll(p, state.cv)
          if a == p or b == p then      -- readable, or the pollable's timeout passed
            state.wakeups = state.wakeups + 1
            p:step()
          end
        end
      end)
      return state
    end

    local function stop(cq, state)
      state.stop = true
      state.cv:signal()
      cq_run(cq, function() return cq:empty() end, 2)
    end

    with_cqueues("carries an OPTIONS and a call while cqueues' own timer and socket run", function()
      local socket = require "cqueues.socket"
      local uas, uac = H.agent(), H.agent()
      local seen = {}
      callee(uas, seen)
      local cq = cqueues.new()
      local state = drive(cq)
      local ticks, echoes = 0, 0
      cq:wrap(function()                -- the host's own timer
        while not state.stop do
          cqueues.sleep(0.02)
          ticks = ticks + 1
        end
      end)
      local srv = assert(socket.listen{ host = "127.0.0.1", port = 0 })
      assert(srv:listen())
      local _, _, port = srv:localname()
      cq:wrap(function()                -- the host's own socket: an echo server
        local con = srv:accept()
        -- a while loop, not `for line in con:lines()`: plain Lua 5.1 cannot yield from
        -- inside a for iterator (cqueues' read yields)
        local line = con:read("*l")
        while line do
          con:write(line, "\n")
          con:flush()
          line = con:read("*l")
        end
        con:close()
      end)
      cq:wrap(function()                -- and its client
        local c = assert(socket.connect("127.0.0.1", port))
        while not state.stop do
          c:write("ping\n")
          c:flush()
          if c:read("*l") == "ping" then echoes = echoes + 1 end
          cqueues.sleep(0.05)
        end
        c:close()
      end)
      cq:wrap(function() caller(uac, uas, seen, 0.3) end)
      local took = cq_run(cq, function() return seen.done and seen.uas_end end, 10)
      stop(cq, state)
      srv:close()
      assert_call(seen)
      -- the host's timer and socket kept going while the call ran (>= 0.5 s of sleeps)
      assert.is_true(ticks >= took / 0.02 / 3, ("%d ticks in %.2f s"):format(ticks, took))
      assert.is_true(echoes >= took / 0.05 / 3, ("%d echoes in %.2f s"):format(echoes, took))
      assert.is_true(state.wakeups > 5, "luasip driver woke " .. state.wakeups .. " times")
    end)

    with_cqueues("fires a luasip timer started from host code on time", function()
      H.agent()
      H.settle(0.1)                     -- the next luasip timer is the agent's, ~2 s away
      local cq = cqueues.new()
      local state = drive(cq)
      local started, fired
      cq:wrap(function()
        cqueues.sleep(0.05)
        -- outside any luasip handler: the driver is already waiting in cqueues.poll
        -- with the deadline it read before this timer existed
        started = sip.now()
        sip.timer(0.1, function() fired = sip.now() end)
      end)
      cq_run(cq, function() return fired end, 5)
      stop(cq, state)
      assert.is_true(fired - started >= 0.099 and fired - started < 0.3,
        ("fired after %.3f s"):format(fired - started))
    end)

    with_cqueues("is not readable when luasip has nothing to do (no busy loop)", function()
      H.agent()
      H.settle(0.1)                     -- let the agent's start-up work drain
      local cq = cqueues.new()
      local state = drive(cq)
      local ticks = 0
      cq:wrap(function()
        for _ = 1, 50 do cqueues.sleep(0.02); ticks = ticks + 1 end
      end)
      cq_run(cq, function() return ticks == 50 end, 5)
      stop(cq, state)
      -- one second idle: at most the agent's own periodic timer (2 s) and a spare
      assert.is_true(state.wakeups <= 3, "idle luasip woke " .. state.wakeups .. " times")
    end)
  end)

  describe("under luv", function()
    -- a luv handle closed when the test ends, pass or fail (a poll handle left open would
    -- keep the descriptor in luv's epoll: the next uv.new_poll on it would fail)
    local function handle(h)
      defer(function()
        if not h:is_closing() then h:close() end
        uv.run("nowait")
      end)
      return h
    end

    -- runs the default loop until done() or `limit` seconds
    local function uv_run(done, limit)
      local expired = false
      local guard = handle(uv.new_timer())
      guard:start(limit * 1000, 0, function() expired = true; uv.stop() end)
      local check = handle(uv.new_timer())
      check:start(10, 10, function() if done() then uv.stop() end end)
      uv.run("default")
      guard:stop()
      check:stop()
      assert(not expired, "luv loop: not done within " .. limit .. " s")
    end

    -- the luasip driver: uv.new_poll on the descriptor (timers included: no uv timer)
    local function drive()
      local state = { wakeups = 0 }
      local poll = handle(uv.new_poll(assert(sip.pollfd())))
      poll:start("r", function()
        state.wakeups = state.wakeups + 1
        sip.step(0)
      end)
      return state
    end

    with_luv("carries an OPTIONS and a call while luv's own timer and socket run", function()
      local uas, uac = H.agent(), H.agent()
      local seen = {}
      callee(uas, seen)
      local state = drive()
      local ticks, echoes = 0, 0
      local server = handle(uv.new_tcp())
      assert(server:bind("127.0.0.1", 0))
      assert(server:listen(4, function()
        local con = handle(uv.new_tcp())
        server:accept(con)
        con:read_start(function(_, data) if data then con:write(data) end end)
      end))
      local client = handle(uv.new_tcp())
      client:connect("127.0.0.1", server:getsockname().port, function(err)
        assert(not err, err)
        client:read_start(function(_, data) if data then echoes = echoes + 1 end end)
      end)
      local tick = handle(uv.new_timer())      -- the host's own timer
      tick:start(20, 20, function()
        ticks = ticks + 1
        if ticks % 3 == 0 and client:is_readable() then client:write("ping") end
      end)
      local t0 = uv.hrtime()
      local start = handle(uv.new_timer())     -- the call starts from a host callback
      start:start(0, 0, function() caller(uac, uas, seen, 0.3) end)
      uv_run(function() return seen.done and seen.uas_end end, 10)
      local took = (uv.hrtime() - t0) / 1e9
      assert_call(seen)
      assert.is_true(ticks >= took / 0.02 / 3, ("%d ticks in %.2f s"):format(ticks, took))
      assert.is_true(echoes >= took / 0.06 / 3, ("%d echoes in %.2f s"):format(echoes, took))
      assert.is_true(state.wakeups > 5, "luasip poll fired " .. state.wakeups .. " times")
    end)

    with_luv("fires a luasip timer started from a host callback on time", function()
      H.agent()
      H.settle(0.1)                     -- the next luasip timer is the agent's, ~2 s away
      drive()
      local started, fired
      local host = handle(uv.new_timer())
      host:start(50, 0, function()
        started = sip.now()
        sip.timer(0.1, function() fired = sip.now() end)
      end)
      uv_run(function() return fired end, 5)
      assert.is_true(fired - started >= 0.099 and fired - started < 0.3,
        ("fired after %.3f s"):format(fired - started))
    end)

    with_luv("is not readable when luasip has nothing to do (no busy loop)", function()
      H.agent()
      H.settle(0.1)
      local state = drive()
      local ticks = 0
      local tick = handle(uv.new_timer())
      tick:start(20, 20, function() ticks = ticks + 1 end)
      uv_run(function() return ticks >= 50 end, 5)
      -- one second idle: at most the agent's own periodic timer (2 s) and a spare
      assert.is_true(state.wakeups <= 3, "idle luasip woke " .. state.wakeups .. " times")
    end)

    with_luv("does not spin when the host calls luasip after every step", function()
      local a = H.agent()
      H.settle(0.1)
      local state = { wakeups = 0 }
      local poll = handle(uv.new_poll(assert(sip.pollfd())))
      poll:start("r", function()
        state.wakeups = state.wakeups + 1
        sip.step(0)
        assert(a:uri("x"))              -- luasip used from outside the loop: a kick
      end)
      local ticks = 0
      local tick = handle(uv.new_timer())
      tick:start(20, 20, function() ticks = ticks + 1 end)
      assert(a:uri("x"))                -- the first kick
      uv_run(function() return ticks >= 50 end, 5)
      -- kicks that found nothing to do back off (1, 2, 4 ... 64 ms): ~25 in a second
      assert.is_true(state.wakeups <= 40, "idle luasip woke " .. state.wakeups .. " times")
    end)
  end)
end)
