local H = require "spec.helper"
local sip = H.sip

-- examples/pbx.lua as a separate process, with luasip agents as phones.
describe("examples/pbx.lua", function()
  local pbx, port, domain, recordings
  setup(function()
    port = H.free_port()
    domain = "127.0.0.1"
    recordings = os.tmpname()                -- voicemail (none is left in these tests)
    os.remove(recordings)
    pbx = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      "IVR_RECORDINGS=" .. recordings,
      H.interpreter(), "examples/pbx.lua", "127.0.0.1:" .. port }, 120)
    H.run_until(function() return pbx.log():find("listening on") or pbx.done() end, 10,
      "pbx listening")
    assert.is_nil(pbx.done(), pbx.log())
  end)
  teardown(function()
    if pbx then pbx.kill() end
    if recordings then os.execute("rm -rf " .. H.shquote(recordings)) end
  end)
  after_each(function() H.close_agents() end)

  local function pbx_uri() return "sip:127.0.0.1:" .. port end
  local function aor(user) return "sip:" .. user .. "@" .. domain end
  local PW = { alice = "alice-secret", bob = "bob-secret", carol = "carol-secret" }

  local function phone(user, password)
    local a = H.agent()
    a.data.user = user
    a.data.auth = { username = user, password = password or PW[user] }
    return a
  end

  local function register(p, expires)
    if expires == 0 then
      local res, err = p:request{ method = "REGISTER", uri = pbx_uri(), auth = p.data.auth,
        headers = { To = "<" .. aor(p.data.user) .. ">", From = "<" .. aor(p.data.user) .. ">",
          Contact = "<" .. p:uri(p.data.user) .. ">", Expires = "0" } }
      assert(res, err)
      return res
    end
    return p:request{ method = "REGISTER", uri = pbx_uri(), auth = p.data.auth,
      headers = { To = "<" .. aor(p.data.user) .. ">", From = "<" .. aor(p.data.user) .. ">",
        Contact = "<" .. p:uri(p.data.user) .. ">", Expires = tostring(expires or 60) } }
  end

  it("registers with digest authentication and refuses a wrong password", function()
    local alice, mallory = phone("alice"), phone("alice", "guess")
    local res = H.run(function() return register(alice) end)
    assert.equal(200, res.status)
    assert.equal("<" .. alice:uri("alice") .. ">;expires=60", res:header("Contact"))
    local _, _, code = H.run(function() return register(mallory) end)
    assert.equal(401, code)
    H.run(function() assert(register(alice, 0)) end)
  end)

  it("connects a call between two registered users through the record-routing proxy", function()
    local alice, bob = phone("alice"), phone("bob")
    local bob_call
    bob:on("INVITE", function(req)
      bob_call = { from = req.from.uri, rr = req:headers("Record-Route") }
      local d = assert(req:answer{ body = "v=0\r\n", content_type = "application/sdp" })
      bob_call.ended = d:wait_end(10)
    end)
    H.run(function() assert(register(alice)); assert(register(bob)) end)
    local d, res = H.run(function()
      return alice:invite{ uri = aor("bob"), proxy = pbx_uri(), auth = alice.data.auth,
        from = "<" .. aor("alice") .. ">", body = "v=0\r\n" }
    end)
    assert(d, res)
    assert.equal(200, res.status)
    assert.equal(aor("alice"), bob_call.from)
    assert.equal(1, #bob_call.rr)
    H.run(function() assert.is_true(d:bye()) end)
    H.run_until(function() return bob_call.ended end)
    assert.equal("remote bye", bob_call.ended)
    H.run(function() register(alice, 0); register(bob, 0) end)
  end)

  it("rings every contact of a user and cancels the others when one answers", function()
    local alice, bob1, bob2 = phone("alice"), phone("bob"), phone("bob")
    local bob2_result
    bob1:on("INVITE", function(req) req:reply(180); sip.sleep(0.2); req:answer() end)
    bob2:on("INVITE", function(req) req:reply(180); bob2_result = { sip.sleep(5) } end)
    H.run(function() assert(register(alice)); assert(register(bob1)); assert(register(bob2)) end)
    local d, res = H.run(function()
      return alice:invite{ uri = aor("bob"), proxy = pbx_uri(), auth = alice.data.auth,
        from = "<" .. aor("alice") .. ">" }
    end)
    assert(d, res)
    assert.equal(bob1:contact(), d:target())
    H.run_until(function() return bob2_result end)
    assert.same({ nil, "cancelled", "cancelled" }, bob2_result)
    H.run(function()
      d:bye(); register(alice, 0); register(bob1, 0); register(bob2, 0)
    end)
  end)

  it("delivers MESSAGE, and answers 404, 480, 403 and 407 where it must", function()
    local alice, carol = phone("alice"), phone("carol")
    local got
    carol:on("MESSAGE", function(req) got = req.body; req:reply(200) end)
    H.run(function() assert(register(alice)); assert(register(carol)) end)
    local function send(uri, auth)
      return select(3, H.run(function()
        return alice:request{ method = "MESSAGE", uri = uri, proxy = pbx_uri(), auth = auth,
          from = "<" .. aor("alice") .. ">",
          body = "hello carol", content_type = "text/plain" }
      end))
    end
    local res = H.run(function()
      return alice:request{ method = "MESSAGE", uri = aor("carol"), proxy = pbx_uri(),
        auth = alice.data.auth, from = "<" .. aor("alice") .. ">", body = "hello carol", content_type = "text/plain" }
    end)
    assert.equal(200, res.status)
    assert.equal("hello carol", got)
    assert.equal(404, send(aor("nobody"), alice.data.auth))
    assert.equal(480, send(aor("bob"), alice.data.auth))
    assert.equal(403, send("sip:carol@elsewhere.example", alice.data.auth))
    assert.equal(407, send(aor("carol"), nil))
    local _, err, code = H.run(function()
      return alice:request{ method = "MESSAGE", uri = aor("carol"), proxy = pbx_uri(),
        auth = alice.data.auth, from = "<" .. aor("bob") .. ">", body = "x", content_type = "text/plain" }
    end)
    assert.equal(403, code)
    assert.equal("403 From Does Not Match Credentials", err)
    H.run(function() register(alice, 0); register(carol, 0) end)
  end)

  it("is no open relay: in-dialog requests not routed through it get 403", function()
    local alice, victim = phone("alice"), H.agent()
    local got
    victim:on("MESSAGE", function(req) got = true; req:reply(200) end)
    local _, err, code = H.run(function()
      return alice:request{ method = "MESSAGE", uri = victim:uri("victim"), proxy = pbx_uri(),
        headers = { From = "<sip:mallory@evil.example>;tag=m1", To = "<sip:victim@127.0.0.1>;tag=fake" },
        body = "spam", content_type = "text/plain" }
    end)
    assert.equal(403, code)
    assert.equal("403 Not Routed Here", err)
    H.settle(0.1)
    assert.is_nil(got)
  end)
end)

-- examples/pbx.lua with LUASIP_TLS_CERT / LUASIP_TLS_KEY: TLS beside UDP and TCP
local have_openssl = os.execute("command -v openssl >/dev/null 2>&1")
describe("examples/pbx.lua over TLS", function()
  local pbx, dir, tls_port
  setup(function()
    if not (have_openssl == true or have_openssl == 0) then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -m 700 " .. H.shquote(dir) .. " && sh spec/peers/make-certs.sh "
      .. H.shquote(dir) .. " >/dev/null 2>&1"))
    pbx = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      "LUASIP_TLS_CERT=" .. dir .. "/server.pem", "LUASIP_TLS_KEY=" .. dir .. "/server.key",
      "LUASIP_TLS_CA=" .. dir .. "/ca.pem", "LUASIP_TLS_PORT=0",
      H.interpreter(), "examples/pbx.lua", "127.0.0.1:" .. H.free_port() }, 60)
    H.run_until(function() return pbx.log():find("listening on") or pbx.done() end, 10,
      "pbx listening")
    assert.is_nil(pbx.done(), pbx.log())
    tls_port = assert(tonumber(pbx.log():match("TLS on port (%d+)")), pbx.log())
  end)
  teardown(function()
    if pbx then pbx.kill() end
    if dir then os.execute("rm -rf " .. H.shquote(dir)) end
  end)
  after_each(function() H.close_agents() end)

  ;((have_openssl == true or have_openssl == 0) and it or pending)(
    "registers a TLS phone with digest authentication on sips:", function()
      local phone = H.agent{ listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" },
        tls = { cert = dir .. "/server.pem", key = dir .. "/server.key", ca = dir .. "/ca.pem" } }
      local aor, phone_port = "sips:alice@127.0.0.1", nil
      for _, t in ipairs(phone:transports()) do
        if t.transport == "tls" then phone_port = t.port end
      end
      local function register(auth, expires)
        return H.run(function()
          return phone:request{ method = "REGISTER", uri = "sips:127.0.0.1:" .. tls_port,
            auth = auth, headers = { To = "<" .. aor .. ">", From = "<" .. aor .. ">",
              Contact = "<sips:alice@127.0.0.1:" .. phone_port .. ">",
              Expires = tostring(expires) } }
        end)
      end
      local _, _, code = register(nil, 60)
      assert.equal(401, code)
      local res = assert(register({ username = "alice", password = "alice-secret" }, 60))
      assert.equal(200, res.status)
      assert.matches("^<sips:alice@127.0.0.1:%d+>;expires=60$", res:header("Contact"))
      assert(register({ username = "alice", password = "alice-secret" }, 0))
    end)

  ;((have_openssl == true or have_openssl == 0) and it or pending)(
    "connects a call between two TLS phones through it", function()
      local function tls_phone(user)
        local a = H.agent{ listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" },
          tls = { cert = dir .. "/server.pem", key = dir .. "/server.key",
            ca = dir .. "/ca.pem" } }
        for _, t in ipairs(a:transports()) do
          if t.transport == "tls" then a.data.port = t.port end
        end
        a.data.auth = { username = user, password = user .. "-secret" }
        a.data.aor = "sip:" .. user .. "@127.0.0.1"     -- the user's AOR, reached on sips:
        return a
      end
      local function register(p, expires)
        return H.run(function()
          return assert(p:request{ method = "REGISTER", uri = "sips:127.0.0.1:" .. tls_port,
            auth = p.data.auth, headers = { To = "<" .. p.data.aor .. ">",
              From = "<" .. p.data.aor .. ">", Expires = tostring(expires),
              Contact = "<sips:" .. p.data.auth.username .. "@127.0.0.1:" .. p.data.port .. ">" } })
        end)
      end
      local alice, bob = tls_phone("alice"), tls_phone("bob")
      local bob_call
      bob:on("INVITE", function(req)
        bob_call = { via = req:header("Via") }
        local d = assert(req:answer())
        bob_call.ended = d:wait_end(10)
      end)
      register(alice, 60)
      register(bob, 60)
      local d, res = H.run(function()
        return alice:invite{ uri = "sip:bob@127.0.0.1", proxy = "sips:127.0.0.1:" .. tls_port,
          auth = alice.data.auth, from = "<" .. alice.data.aor .. ">" }
      end)
      assert(d, res)
      assert.equal(200, res.status)
      assert(bob_call, pbx.log())
      assert.matches("^SIP/2.0/TLS", bob_call.via)
      H.run(function() assert.is_true(d:bye()) end)
      H.run_until(function() return bob_call.ended end)
      assert.equal("remote bye", bob_call.ended)
      register(alice, 0)
      register(bob, 0)
    end)
end)
