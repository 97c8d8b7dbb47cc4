local H = require "spec.helper"
local sip = H.sip

local have_redis = os.execute("command -v redis-server >/dev/null 2>&1")
have_redis = have_redis == true or have_redis == 0

-- The Redis store against a real redis-server on a Unix socket made by the spec.
describe("luasip.store.redis", function()
  local server, dir, sock
  setup(function()
    if not have_redis then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    sock = dir .. "/redis.sock"
    server = H.background({ "redis-server", "--port", "0", "--unixsocket", sock,
      "--save", "", "--appendonly", "no", "--dir", dir }, 120)
    H.run_until(function()
      local ok = os.execute("test -S " .. sock)
      return ok == true or ok == 0 or server.done()
    end, 10, "redis socket")
  end)
  teardown(function()
    if server then server.kill() end
    if dir then os.execute("rm -rf " .. dir) end
  end)
  after_each(function() H.close_agents() end)

  local it_ = have_redis and it or pending

  it_("gets, sets with a TTL, deletes, lists keys and updates atomically", function()
    H.run(function()
      local st = assert(sip.store.redis{ path = sock, prefix = "t1:" })
      assert.is_nil(st:get("a"))
      assert.is_true(st:set("a", { x = 1, list = { "p", "q" }, ok = true, f = 0.5 }))
      assert.same({ x = 1, list = { "p", "q" }, ok = true, f = 0.5 }, st:get("a"))
      assert.is_true(st:set("b:1", "one", 0.2))
      assert.same({ "a", "b:1" }, st:keys(""))
      assert.same({ "b:1" }, st:keys("b:"))
      sip.sleep(0.3)
      assert.is_nil(st:get("b:1"))
      assert.is_true(st:update("n", function(old) return (old or 0) + 1 end))
      assert.is_true(st:update("n", function(old) return old + 1 end))
      assert.equal(2, st:get("n"))
      assert.is_true(st:update("n", function() return false end))
      assert.equal(2, st:get("n"))
      assert.is_true(st:update("n", function() return nil end))
      assert.is_nil(st:get("n"))
      assert.is_true(st:del("a"))
      assert.same({}, st:keys(""))
      st:close()
    end)
  end)

  it_("keeps concurrent updates from two connections consistent", function()
    local a = assert(H.run(function() return sip.store.redis{ path = sock, prefix = "t2:" } end))
    local b = assert(H.run(function() return sip.store.redis{ path = sock, prefix = "t2:" } end))
    local done = 0
    for _, st in ipairs{ a, b, a, b } do
      sip.spawn(function()
        for _ = 1, 25 do
          local ok, err, code = st:update("count", function(old) return (old or 0) + 1 end)
          assert(ok, tostring(err) .. " " .. tostring(code))
        end
        done = done + 1
      end)
    end
    H.run_until(function() return done == 4 end, 10)
    assert.equal(100, H.run(function() return a:get("count") end))
    a:close(); b:close()
  end)

  it_("shares registrations between two agents", function()
    local pbx1, pbx2, phone = H.agent(), H.agent(), H.agent()
    local loc2, st1, st2
    H.run(function()
      st1 = assert(sip.store.redis{ path = sock, prefix = "t3:" })
      st2 = assert(sip.store.redis{ path = sock, prefix = "t3:" })
      pbx1:on("REGISTER", (sip.registrar{ store = st1 }))
      loc2 = sip.location{ store = st2 }
    end)
    finally(function() st1:close(); st2:close() end)
    local res = H.run(function()
      return phone:request{ method = "REGISTER", uri = pbx1:contact(), headers = {
        To = "<sip:alice@example.test>", From = "<sip:alice@example.test>",
        Contact = "<" .. phone:uri("alice") .. ">", Expires = "60" } }
    end)
    assert.equal(200, res.status)
    local targets = H.run(function() return loc2:lookup("sip:alice@example.test") end)
    assert.equal(1, #targets)
    assert.equal(phone:uri("alice"), targets[1].uri)
    assert(pbx2)
  end)

  it_("returns nil, err, 'unavailable' when the connection is gone", function()
    local st = assert(H.run(function() return sip.store.redis{ path = sock, prefix = "t4:" } end))
    finally(function() st:close() end)
    local r = assert(H.run(function() return sip.redis{ path = sock } end))
    assert.equal("OK", H.run(function()
      return r:call("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
    end) and "OK")
    local v, err, code = H.run(function() return st:get("x") end)
    assert.is_nil(v)
    assert.matches("redis unavailable", err)
    assert.equal("unavailable", code)
    local _, err2 = sip.store.redis{ path = dir .. "/nothing.sock" }
    assert.is_string(err2)
    -- it connects again by itself
    H.run_until(function() return st:status() == "up" end, 5, "reconnected")
    assert.is_true(H.run(function() return st:set("x", 1) end))
    assert.equal(1, H.run(function() return st:get("x") end))
  end)

  it_("raises on an unknown option", function()
    assert.has_error(function() sip.store.redis{ path = sock, prefx = "x" } end,
      "luasip.store.redis: unknown option 'prefx'")
  end)

  it("memory store: values are copied in and out, and what cannot be stored raises", function()
    local st = sip.store.memory()
    local v = { a = "x", n = 1, ok = true, list = { 1, 2, { deep = "y" } } }
    H.run(function()
      assert.is_true(st:set("k", v))
      v.list[3].deep = "changed"              -- the caller's table is not the stored one
      local got = st:get("k")
      assert.same({ a = "x", n = 1, ok = true, list = { 1, 2, { deep = "y" } } }, got)
      got.list[1] = 99                        -- nor is what get returned
      assert.equal(1, st:get("k").list[1])
      assert.is_true(st:update("k", function(old) old.n = old.n + 1; return old end))
      assert.equal(2, st:get("k").n)
    end)
    local cycle = {}
    cycle.self = cycle
    local ok, err = pcall(st.set, st, "k", cycle)
    assert.is_false(ok)
    assert.matches("^luasip%.store:set: value nested too deep", err)
    ok, err = pcall(st.set, st, "k", { f = print })
    assert.is_false(ok)
    assert.matches("luasip.store:set: values must be strings, numbers, booleans or tables, got function", err, 1, true)
    ok, err = pcall(function() st:set("k", { [true] = 1 }) end)   -- points at the caller
    assert.is_false(ok)
    assert.matches("redis_spec.lua:%d+: luasip.store:set: table keys must be strings or numbers, got boolean", err)
    ok, err = pcall(function() st:update("k", function() return { co = coroutine.create(function() end) } end) end)
    assert.is_false(ok)
    assert.matches("redis_spec.lua:%d+: luasip.store:update: values must be .* got thread", err)
    assert.equal(2, st:get("k").n)            -- a refused write leaves the old value
  end)

  -- the same semantics on both stores
  local n = 0
  for _, kind in ipairs{ "memory", "redis" } do
    local function open()
      n = n + 1
      if kind == "memory" then
        local st = sip.store.memory()
        return st, st
      end
      local prefix = "c" .. n .. ":"
      return H.run(function()
        return assert(sip.store.redis{ path = sock, prefix = prefix }),
          assert(sip.store.redis{ path = sock, prefix = prefix })
      end)
    end
    local it_k = (kind == "memory" or have_redis) and it or pending

    it_k(kind .. " store: advance takes a rising number once, from any connection", function()
      local a, b = open()
      finally(function() a:close(); b:close() end)
      H.run(function()
        assert.is_true(a:advance("nc:x", 1, 10))
        assert.is_false(b:advance("nc:x", 1, 10))
        assert.is_true(b:advance("nc:x", 3, 10))
        assert.is_false(a:advance("nc:x", 2, 10))
        assert.is_true(a:advance("nc:y", 2, 10))
        assert.equal(3, b:get("nc:x"))
      end)
      assert.has_error(function() a:advance("k", 1) end,
        "luasip.store:advance: ttl must be a number of seconds > 0")
    end)

    it_k(kind .. " store: publish reaches the subscribers of the channel on every connection",
      function()
      local a, b = open()
      finally(function() a:close(); b:close() end)
      local got = {}
      a:subscribe("ch", function(m) got[#got + 1] = "a " .. tostring(m) end)
      b:subscribe("ch", function(m) got[#got + 1] = "b " .. tostring(m) end)
      b:subscribe("other", function(m) got[#got + 1] = "other " .. tostring(m) end)
      assert.equal("up", a:status())
      if kind == "redis" then
        -- the subscriptions are made in the background: until Redis counts both
        local r = assert(H.run(function() return sip.redis{ path = sock } end))
        finally(function() r:close(); a:close(); b:close() end)
        H.run_until(function()
          local c = H.run(function() return r:call("PUBSUB", "NUMSUB", a._prefix .. "ch") end)
          return c[2] == 2
        end, 5, "two subscribers")
      end
      H.run(function() assert.is_true(a:publish("ch", "hello")) end)
      H.run_until(function() return #got >= 2 end, 5, "messages")
      H.settle(0.05)
      table.sort(got)
      assert.same({ "a hello", "b hello" }, got)
    end)
  end
end)
