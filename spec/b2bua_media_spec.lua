local H = require "spec.helper"
local sip = H.sip
local core = require "luasip.core"
local T = require "luasip.testing"
local dispatcher = require "luasip.dispatcher"

-- sip.b2bua with media: caller agent A -> B2BUA agent -> callee agent C, luasip on
-- loopback with real RTP on the C engine.  media = "relay" anchors the audio (a stream
-- per leg, bridged); what each side hears is recorded and its tones found in it
-- (luasip.testing: listen, tone_ms).  Early media: A hears C's before the answer, also
-- when C's 183 comes while a reliable 180 waits for its PRACK, and from a later target
-- after a failover; A's 18x with SDP goes reliably when A supports 100rel.
local A_HZ, C_HZ, EARLY_HZ, LATER_HZ = 600, 900, 1300, 1700

local tmp = os.tmpname()
os.remove(tmp)
os.execute("mkdir -p " .. tmp)
local function tone(hz, ms) return T.tone_wav(("%s/%d-%d.wav"):format(tmp, hz, ms), hz, ms) end

describe("sip.b2bua media (C engine)", function()
  local a, bx, c, result, skipped0
  teardown(function() os.execute("rm -rf " .. H.shquote(tmp)) end)
  before_each(function()
    a, bx, c = H.agent(), H.agent(), H.agent()
    result = nil
    skipped0 = core.media_stats().skipped_ticks
  end)
  after_each(function()
    H.close_agents()
    H.run_until(function() return core.media_stats().streams == 0 end, 5, "every stream closed")
  end)

  -- heard_ms(got, want, what): a tone of want ms was heard: not longer, and most of it,
  -- less the 20 ms ticks a loaded machine made the engine skip
  local function heard_ms(got, want, what)
    local skipped = (core.media_stats().skipped_ticks - skipped0) * 20
    assert(got >= math.max(20, want * 0.6 - skipped) and got <= want + 60,
      ("%s: heard %d ms, %d ms played, %d ms skipped"):format(what, got, want, skipped))
  end

  local function b2bua(targets, opts)
    bx:on("INVITE", function(req) result = { sip.b2bua(req, targets, opts) } end)
  end

  -- A calls the B2BUA with media; its 18x are listed in prov ("183 sdp rseq"), and what A
  -- hears from the first 18x with SDP on is recorded: -> dialog, prov, early_heard()
  -- (stops that recording: what A heard before the answer)
  local function call(extra)
    local prov, early = {}, nil
    local o = { uri = bx:uri("carol"), media = true, on_provisional = function(r, tx)
      prov[#prov + 1] = r.status .. (r.body and " sdp" or "") .. (r:header("RSeq") and " rseq" or "")
      if r.body and not early then early = T.listen(tx:dialog()) end
    end }
    for k, v in pairs(extra or {}) do o[k] = v end
    local d = H.run(function() return assert(a:invite(o)) end)
    H.run_until(function() return result end, 5, "sip.b2bua returned")
    return d, prov, early
  end

  it("relays audio both ways through its two streams", function()
    local callee
    c:on("INVITE", function(req) callee = assert(req:answer{ media = true }) end)
    b2bua(c:uri("carol"), { media = "relay" })
    local d = call()
    assert.equal(4, core.media_stats().streams)
    local la, lb = result[1], result[2]
    assert.is_true(la:media_stats().bridged)
    assert.equal(la:media_stats().local_port, d:media_stats().remote_port)
    assert.equal(lb:media_stats().local_port, callee:media_stats().remote_port)
    local a_heard, c_heard = T.listen(d), T.listen(callee)
    local done = {}
    sip.spawn(function() done.a = d:play(tone(A_HZ, 400)) end)
    sip.spawn(function() done.c = callee:play(tone(C_HZ, 400)) end)
    H.run_until(function() return done.a and done.c end, 5, "both played")
    local ax, cx = a_heard(), c_heard()
    heard_ms(T.tone_ms(ax, C_HZ), 400, "A hears C")
    heard_ms(T.tone_ms(cx, A_HZ), 400, "C hears A")
    assert.equal(0, T.tone_ms(ax, A_HZ))            -- no echo of A's own tone
    assert.equal(0, T.tone_ms(cx, C_HZ))
    H.run(function() d:hangup() end)
  end)

  for _, rel in ipairs{ true, false } do
    it("gives A C's early media before the answer, its 183 "
      .. (rel and "reliable (A supports 100rel)" or "unreliable (A does not support 100rel)"),
      function()
        local early_done
        c:on("INVITE", function(req)
          local early = assert(req:progress{ media = true })
          early_done = early:play(tone(EARLY_HZ, 400))
          local callee = assert(req:answer())
          callee:play(tone(LATER_HZ, 200))
        end)
        b2bua(c:uri("carol"), { media = "relay" })
        local d, prov, early = call(not rel and { headers = { Supported = "timer" } } or nil)
        assert.equal("done", early_done)
        assert.same({ rel and "183 sdp rseq" or "183 sdp" }, prov)
        local x = early()
        heard_ms(T.tone_ms(x, EARLY_HZ), 400, "C's early media")
        assert.equal(0, T.tone_ms(x, LATER_HZ))     -- nothing of after the answer
        H.run(function() d:hangup() end)
      end)
  end

  for _, mode in ipairs{ "relay", "plain" } do
    it("keeps the SDP of a 183 that comes while a reliable 180 waits for its PRACK ("
      .. mode .. ")", function()
      local c_state = {}
      c:on("INVITE", function(req)
        sip.spawn(function() c_state.prack = req:reply(180, { reliable = true }) end)
        local early = assert(req:progress{ media = true })   -- right after, unreliable
        c_state.early = early:play(tone(EARLY_HZ, 400))
        assert(req:answer())
      end)
      b2bua(c:uri("carol"), mode == "relay" and { media = "relay" } or nil)
      local d, prov, early = call()
      assert.equal("done", c_state.early)
      assert.truthy(c_state.prack)
      assert.same({ "180 rseq", "183 sdp rseq" }, prov)
      local x = early()
      if mode == "relay" then
        heard_ms(T.tone_ms(x, EARLY_HZ), 400, "C's early media")
      else
        -- plain: A's stream faces C's directly; it heard C's early media all the same
        assert.is_true(T.tone_ms(x, EARLY_HZ) > 0, "C's early media heard")
      end
      H.run(function() d:hangup() end)
    end)
  end

  for _, rel in ipairs{ false, true } do
    it("follows a later fork's early media behind a forking proxy, and its answer ("
      .. (rel and "reliable" or "unreliable") .. " 183s)", function()
      -- two phones (one agent would take the second branch for a merged request: 482)
      local p, c2 = H.agent(), H.agent()
      p:on("INVITE", function(req) req:proxy({ c:uri("one"), c2:uri("two") }) end)
      local st = {}
      local function phone(req)
        local user = req.ruri.user
        if user == "two" and not st.one then                   -- one's early media first
          st.ready = dispatcher.new_slot("fork one's early media")
          dispatcher.wait(st.ready, 5)
        end
        local early, err = req:progress{ media = true, reliable = rel }
        st[user .. "_progress"] = err
        if not early then return end
        if user == "one" then
          st.one = early:play(tone(EARLY_HZ, 400))
          if st.ready then dispatcher.fill(st.ready, true) end
          st.one_end = { early:wait_end(10) }
          return
        end
        st.two = early:play(tone(LATER_HZ, 400))
        local callee = assert(req:answer())
        st.talk = callee:play(tone(C_HZ, 400))
      end
      c:on("INVITE", phone)
      c2:on("INVITE", phone)
      b2bua(p:uri("carol"), { media = "relay" })
      local d, _, early = call()
      assert.is_nil(st.one_progress)
      assert.is_nil(st.two_progress)
      assert.equal("done", st.one)
      assert.equal("done", st.two)
      local x = early()
      heard_ms(T.tone_ms(x, EARLY_HZ), 400, "fork one's early media")
      heard_ms(T.tone_ms(x, LATER_HZ), 400, "fork two's early media")
      local after = T.listen(d)
      H.run_until(function() return st.talk end, 5, "fork two talked")
      heard_ms(T.tone_ms(after(), C_HZ), 400, "fork two after the answer")
      H.run(function() d:hangup() end)
    end)
  end

  it("follows a later target's early media after a failover (re-bridged)", function()
    local first_done, second_done
    c:on("INVITE", function(req)
      local user = req.ruri.user
      local early = assert(req:progress{ media = true })
      if user == "first" then
        first_done = early:play(tone(EARLY_HZ, 400))
        return req:reply(486)
      end
      second_done = early:play(tone(LATER_HZ, 400))
      assert(req:answer())
    end)
    b2bua({ c:uri("first"), c:uri("second") }, { media = "relay" })
    local d, prov, early = call()
    assert.equal("done", first_done)
    assert.equal("done", second_done)
    assert.same({ "183 sdp rseq", "183 sdp rseq" }, prov)
    local x = early()
    heard_ms(T.tone_ms(x, EARLY_HZ), 400, "the first target's early media")
    heard_ms(T.tone_ms(x, LATER_HZ), 400, "the second target's early media")
    assert.is_true(result[1]:media_stats().bridged)
    H.run(function() d:hangup() end)
  end)
end)
