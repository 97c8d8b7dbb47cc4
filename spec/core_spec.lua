local H = require "spec.helper"
local sip = H.sip

describe("luasip loop", function()
  after_each(function() H.close_agents() end)

  it("runs timers and reports the time to the next one", function()
    local fired = false
    local t = sip.timer(0.05, function() fired = true end)
    assert.is_true(t:pending())
    local next_ms = sip.step(0)
    assert.is_true(next_ms >= 0 and next_ms <= 60)
    H.run_until(function() return fired end, 2)
    assert.is_false(t:pending())
  end)

  it("cancels a timer before it fires", function()
    local fired = false
    local t = sip.timer(0.05, function() fired = true end)
    assert.is_true(t:cancel())
    assert.is_true(t:cancel())       -- idempotent
    H.settle(0.15)
    assert.is_false(fired)
  end)

  it("sleeps inside a luasip coroutine and refuses outside one", function()
    local t0 = sip.now()
    H.run(function() sip.sleep(0.05) end)
    assert.is_true(sip.now() - t0 >= 0.05)
    assert.has_error(function() sip.sleep(0.01) end,
      "not in a luasip coroutine: use sip.spawn (luasip.sleep)")
  end)

  it("stops run() from a timer", function()
    sip.timer(0.02, function() sip.stop() end)
    assert.is_true(sip.run())
  end)

  -- lua5.4's interpreter starts in generational mode, whose major collections stop the
  -- loop for hundreds of ms on a server's heap: run() switches to incremental
  ;(_VERSION == "Lua 5.4" and it or pending)("runs the loop with Lua 5.4's incremental "
    .. "collector unless told otherwise", function()
    local before = collectgarbage("generational")
    finally(function() collectgarbage(before) end)
    sip.timer(0.01, function() sip.stop() end)
    assert.is_true(sip.run())
    assert.equal("incremental", collectgarbage("generational"))   -- (returns the old mode)
    sip.timer(0.01, function() sip.stop() end)
    assert.is_true(sip.run{ gc = "generational" })
    assert.equal("generational", collectgarbage("generational"))
    sip.timer(0.01, function() sip.stop() end)
    assert.is_true(sip.run{ gc = false })
    assert.equal("generational", collectgarbage("incremental"))
  end)

  it("refuses an unknown collector mode in run()", function()
    assert.has_error(function() sip.run{ gc = "fast" } end,
      'luasip.run: gc must be "incremental", "generational" or false')
  end)

  it("refuses to step the loop from inside a handler", function()
    local err
    sip.timer(0, function()
      local ok, e = pcall(sip.step, 0)
      err = not ok and e
    end)
    H.run_until(function() return err ~= nil end)
    assert.matches("called from a handler", err)
  end)
end)

describe("luasip helpers", function()
  it("computes MD5 hex digests and random hex strings", function()
    assert.equal("900150983cd24fb0d6963f7d28e17f72", sip.md5("abc"))
    assert.equal("d41d8cd98f00b204e9800998ecf8427e", sip.md5(""))
    local a, b = sip.random_hex(16), sip.random_hex(16)
    assert.matches("^%x+$", a)
    assert.equal(32, #a)
    assert.not_equal(a, b)
    assert.has_error(function() sip.random_hex(0) end)
  end)

  it("names the process's allocator: glibc, or jemalloc when preloaded", function()
    local function allocator(preload)
      local p = assert(io.popen(table.concat({ "env",
        preload and ("LD_PRELOAD=" .. preload) or "-u LD_PRELOAD",
        "LUA_PATH='lua/?.lua;lua/?/init.lua;;'",
        "LUA_CPATH='build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;'",
        H.interpreter(), "-e", "'io.write(require(\"luasip\").allocator())'" }, " ")))
      local out = p:read("*a")
      p:close()
      return out
    end
    assert.equal("glibc", allocator(nil))
    local jemalloc = io.popen("sh scripts/jemalloc.sh"):read("*l")
    if not jemalloc then return pending("libjemalloc2 not installed") end
    assert.equal("jemalloc", allocator(jemalloc))
  end)
end)
