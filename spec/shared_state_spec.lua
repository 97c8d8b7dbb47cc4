local H = require "spec.helper"
local sip = H.sip

local have_redis = os.execute("command -v redis-server >/dev/null 2>&1")
have_redis = have_redis == true or have_redis == 0

local REALM = "example.test"
local PASSWORDS = { alice = "alice-pw", bob = "bob-pw" }
local ALICE = { username = "alice", password = PASSWORDS.alice }
local function password(user) return PASSWORDS[user] end

-- a worker in a process of its own: lua worker.lua sip_port redis_port prefix
local WORKER = [[
local sip = require "luasip"
local port, redis_port, prefix = arg[1], tonumber(arg[2]), arg[3]
local app = assert(sip.agent{ listen = { "sip:127.0.0.1:" .. port } })
sip.spawn(function()
  local st = assert(sip.store.redis{ host = "127.0.0.1", port = redis_port, prefix = prefix })
  local pw = { alice = "alice-pw" }
  app:on("REGISTER", (sip.registrar{ store = st, authorize = sip.auth.authorizer{
    realm = "example.test", password = function(u) return pw[u] end, store = st } }))
  local on_subscribe, notifier = sip.events{ package = "presence", store = st }
  app:on("SUBSCRIBE", on_subscribe)
  app:on("PUBLISH", (sip.publications{ package = "presence", store = st, notifier = notifier }))
  print("worker ready")
  io.stdout:flush()
end)
sip.run()
]]

-- Two "workers" -- each an agent with its own connection to one real redis-server (as two
-- processes would have) -- share registrations, digest nonces and their counts,
-- subscriptions and publications; a Redis restart answers 503 and heals by itself.
describe("shared state in Redis", function()
  local defer = H.defer_with(function(f) finally(f) end)
  local server, dir, port, stores, n = nil, nil, nil, {}, 0

  local function start_redis()
    server = H.redis_server(port, dir, { "--appendonly", "yes", "--appendfsync", "always" })
  end

  setup(function()
    if not have_redis then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. H.shquote(dir)))
    port = H.free_port()
    start_redis()
  end)
  teardown(function()
    if server then server.kill() end
    if dir then os.execute("rm -rf " .. H.shquote(dir)) end
  end)
  after_each(function()
    for _, st in ipairs(stores) do st:close() end
    stores = {}
    H.close_agents()
  end)

  -- a worker: an agent, its own Redis store (a prefix per test), a registrar with digest
  -- authentication, a presence notifier (SUBSCRIBE) and publications (PUBLISH)
  local function worker(prefix)
    local st = assert(H.run(function()
      return sip.store.redis{ host = "127.0.0.1", port = port, prefix = prefix }
    end))
    stores[#stores + 1] = st
    local a = H.agent()
    local reg, loc = sip.registrar{ store = st,
      authorize = sip.auth.authorizer{ realm = REALM, password = password, store = st } }
    local on_subscribe, notifier = sip.events{ package = "presence", store = st }
    local on_publish = sip.publications{ package = "presence", store = st,
      notifier = notifier }
    a:on("REGISTER", reg)
    a:on("SUBSCRIBE", on_subscribe)
    a:on("PUBLISH", on_publish)
    return { agent = a, store = st, location = loc, notifier = notifier }
  end

  -- returns once two notifiers on the keys of prefix listen for changes
  local function both_listening(prefix)
    local r = assert(H.run(function() return sip.redis{ host = "127.0.0.1", port = port } end))
    H.run_until(function()
      local c = H.run(function()
        return r:call("PUBSUB", "NUMSUB", prefix .. "events:presence:notify")
      end)
      return c[2] == 2
    end, 5, "both notifiers subscribed")
    r:close()
  end

  -- two workers on the same keys; returns once both notifiers listen for changes
  local function two_workers()
    n = n + 1
    local prefix = "s" .. n .. ":"
    local a, b = worker(prefix), worker(prefix)
    both_listening(prefix)
    return a, b
  end

  -- REGISTER for alice sent to a worker (Request-URI sip:example.test), its answer
  local function register(phone, via, opts)
    opts = opts or {}
    return H.run(function()
      return phone:request{ method = "REGISTER", uri = "sip:" .. REALM,
        proxy = via.agent:contact(), auth = opts.auth, headers = opts.headers or {
          To = "<sip:alice@" .. REALM .. ">", From = "<sip:alice@" .. REALM .. ">",
          Contact = "<" .. phone:uri("alice") .. ">", Expires = "600",
          Authorization = opts.authorization } }
    end)
  end

  local it_ = have_redis and it or pending

  it_("finds via worker B a phone registered via worker A", function()
    local a, b = two_workers()
    local phone = H.agent()
    local res = assert(register(phone, a, { auth = ALICE }))
    assert.equal(200, res.status)
    local targets = H.run(function() return b.location:lookup("sip:alice@" .. REALM) end)
    assert.equal(1, #targets)
    assert.equal(phone:uri("alice"), targets[1].uri)
    -- a fetch through B (challenged by B) lists the binding made through A
    local fetch = assert(H.run(function()
      return phone:request{ method = "REGISTER", uri = "sip:" .. REALM,
        proxy = b.agent:contact(), auth = ALICE, headers = {
          To = "<sip:alice@" .. REALM .. ">", From = "<sip:alice@" .. REALM .. ">" } }
    end))
    assert.equal(200, fetch.status)
    assert.matches(phone:uri("alice"), fetch:header("Contact"), 1, true)
  end)

  it_("accepts at B a nonce challenged by A, once: its count replayed at A is refused",
    function()
    local a, b = two_workers()
    local phone = H.agent()
    local _, _, code, res = register(phone, a)
    assert.equal(401, code)
    local ch = res:header("WWW-Authenticate")
    local function creds(nc)
      return assert(sip.auth.credentials(ch, ALICE, "REGISTER", "sip:" .. REALM,
        { nc = nc, cnonce = "c0ffee" }))
    end
    local ok = assert(register(phone, b, { authorization = creds(1) }))
    assert.equal(200, ok.status)
    -- the same count at the other worker: a replay (stale challenge, fresh nonce)
    local _, _, code2, res2 = register(phone, a, { authorization = creds(1) })
    assert.equal(401, code2)
    assert.equal("true", select(2, sip.auth.parse(res2:header("WWW-Authenticate"))).stale)
    -- the next count is fine at A, and then a replay at B
    assert.equal(200, assert(register(phone, a, { authorization = creds(2) })).status)
    local _, _, code3 = register(phone, b, { authorization = creds(2) })
    assert.equal(401, code3)
  end)

  it_("sends a NOTIFY from the worker holding a SUBSCRIBE when a PUBLISH reaches another",
    function()
    local a, b = two_workers()
    local watcher, presentity = H.agent(), H.agent()
    local bodies = {}
    local sub = assert(H.run(function()
      return watcher:subscribe{ uri = "sip:alice@" .. REALM, proxy = a.agent:contact(),
        event = "presence", on_notify = function(req) bodies[#bodies + 1] = req.body end }
    end))
    H.run_until(function() return #bodies >= 1 end, 5, "first NOTIFY")
    assert.matches("closed", bodies[1])
    local pidf = sip.pidf.build{ entity = "sip:alice@" .. REALM, status = "open",
      note = "at the desk" }
    local pub = assert(H.run(function()
      return presentity:publish{ uri = "sip:alice@" .. REALM, proxy = b.agent:contact(),
        event = "presence", body = pidf }
    end))
    assert.is_string(pub.etag)
    H.run_until(function() return #bodies >= 2 end, 5, "NOTIFY after the PUBLISH via B")
    assert.matches("at the desk", bodies[#bodies], 1, true)
    assert.equal(0, #b.notifier:subscriptions())        -- B holds no subscription itself
    -- B's entity tag is known at A: a refresh through A works
    local refreshed = H.run(function()
      return presentity:request{ method = "PUBLISH", uri = "sip:alice@" .. REALM,
        proxy = a.agent:contact(), headers = { Event = "presence", Expires = "60",
          ["SIP-If-Match"] = pub.etag } }
    end)
    assert.equal(200, refreshed.status)
    H.run(function() sub:unsubscribe(1) end)
  end)

  it_("shares registrations, nonces and presence with a worker in another process", function()
    n = n + 1
    local prefix = "p" .. n .. ":"
    local script = os.tmpname()
    defer(function() os.remove(script) end)
    local f = assert(io.open(script, "w"))
    f:write(WORKER)
    f:close()
    local wport = H.free_port()
    local proc = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      H.interpreter(), script, tostring(wport), tostring(port), prefix }, 60)
    defer(proc.kill)
    H.run_until(function() return proc.log():find("worker ready") or proc.done() end, 10,
      "worker process ready")
    assert.is_nil(proc.done(), proc.log())
    local other = { agent = { contact = function() return "sip:127.0.0.1:" .. wport end } }
    local here = worker(prefix)
    local phone, watcher, presentity = H.agent(), H.agent(), H.agent()
    -- registered through the other process, found here
    assert.equal(200, assert(register(phone, other, { auth = ALICE })).status)
    local targets = H.run(function() return here.location:lookup("sip:alice@" .. REALM) end)
    assert.equal(1, #targets)
    -- its nonce (its secret is the store's: none was configured) accepted here, once
    local _, _, code, res = register(phone, other)
    assert.equal(401, code)
    local creds = assert(sip.auth.credentials(res:header("WWW-Authenticate"), ALICE,
      "REGISTER", "sip:" .. REALM, { nc = 1 }))
    assert.equal(200, assert(register(phone, here, { authorization = creds })).status)
    local _, _, code2 = register(phone, other, { authorization = creds })
    assert.equal(401, code2)
    -- a SUBSCRIBE held here hears of a PUBLISH served there
    both_listening(prefix)
    local bodies = {}
    assert(H.run(function()
      return watcher:subscribe{ uri = "sip:alice@" .. REALM, proxy = here.agent:contact(),
        event = "presence", on_notify = function(req) bodies[#bodies + 1] = req.body end }
    end))
    H.run_until(function() return #bodies >= 1 end, 5, "first NOTIFY")
    assert(H.run(function()
      return presentity:publish{ uri = "sip:alice@" .. REALM, proxy = other.agent:contact(),
        event = "presence", body = sip.pidf.build{ entity = "sip:alice@" .. REALM,
          status = "open", note = "in the other process" } }
    end))
    H.run_until(function()
      return bodies[#bodies]:find("in the other process", 1, true)
    end, 5, "NOTIFY after the PUBLISH served by the other process")
  end)

  it_("answers 503 with Retry-After while Redis is down and heals without a restart",
    function()
    local a, b = two_workers()
    local phone, watcher, presentity = H.agent(), H.agent(), H.agent()
    assert.equal(200, assert(register(phone, a, { auth = ALICE })).status)
    local bodies = {}
    assert(H.run(function()
      return watcher:subscribe{ uri = "sip:alice@" .. REALM, proxy = a.agent:contact(),
        event = "presence", on_notify = function(req) bodies[#bodies + 1] = req.body end }
    end))
    H.run_until(function() return #bodies >= 1 end, 5, "first NOTIFY")
    local logs, restore = H.capture_logs()
    defer(restore)
    server.kill()
    server = nil
    defer(function() if not server then start_redis() end end)
    H.run_until(function() return a.store:status() == "down" end, 5, "outage seen")
    -- during the outage: 503 + Retry-After, for REGISTER (digest store first) and SUBSCRIBE
    local _, err, code, res = register(phone, a, { auth = ALICE })
    assert.equal(503, code, err)
    assert.equal("5", res:header("Retry-After"))
    local _, _, scode, sres = H.run(function()
      return H.agent():request{ method = "SUBSCRIBE", uri = "sip:alice@" .. REALM,
        proxy = a.agent:contact(), headers = { Event = "presence", Expires = "60" } }
    end)
    assert.equal(503, scode)
    assert.equal("5", sres:header("Retry-After"))
    H.settle(0.5)                         -- a few reconnect attempts fail meanwhile
    start_redis()
    H.run_until(function()
      return a.store:status() == "up" and b.store:status() == "up"
    end, 15, "both stores reconnected")
    restore()
    -- each cause logged once per connection (two stores here), not once per attempt
    local seen, lines = {}, 0
    for _, l in ipairs(logs) do
      if l.msg:match("^redis store") then
        seen[l.msg] = (seen[l.msg] or 0) + 1
        assert.is_true(seen[l.msg] <= 2, "logged more than once per store: " .. l.msg)
        lines = lines + 1
      end
    end
    assert.is_true(lines > 0, "the outage was logged")
    -- the binding made before the outage is there (Redis kept it on disk), REGISTER works
    local targets = H.run(function() return b.location:lookup("sip:alice@" .. REALM) end)
    assert.equal(1, #targets)
    assert.equal(200, assert(register(phone, a, { auth = ALICE })).status)
    -- pub/sub is back: a PUBLISH via B reaches the subscription held by A
    assert(H.run(function()
      return presentity:publish{ uri = "sip:alice@" .. REALM, proxy = b.agent:contact(),
        event = "presence", body = sip.pidf.build{ entity = "sip:alice@" .. REALM,
          status = "open", note = "back again" } }
    end))
    H.run_until(function()
      return bodies[#bodies] and bodies[#bodies]:find("back again", 1, true)
    end, 10, "NOTIFY after the outage")
  end)
end)
