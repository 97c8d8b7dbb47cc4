-- TLS transports (sofia's tport TLS): certificates made by the openssl CLI at test time
-- in a private directory (spec/peers/make-certs.sh): a CA, a server certificate for
-- 127.0.0.1 and localhost, one for another host name and an expired one.
local H = require "spec.helper"
local sip = H.sip

local function quiet(cmd) return os.execute(cmd .. " >/dev/null 2>&1") end
local function have(cmd)
  local ok = quiet("command -v " .. cmd)
  return ok == true or ok == 0
end

local function tls_port(a)
  for _, t in ipairs(a:transports()) do
    if t.transport == "tls" then return t.port end
  end
end

local can = have("openssl")
describe("luasip.agent over TLS", function()
  local dir, D
  setup(function()
    if not can then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(quiet("mkdir -m 700 " .. H.shquote(dir)))
    local ok = quiet("sh spec/peers/make-certs.sh " .. H.shquote(dir))
    assert(ok == true or ok == 0, "openssl could not make the test certificates")
    D = function(name) return dir .. "/" .. name end
  end)
  teardown(function()
    if dir then os.execute("rm -rf " .. H.shquote(dir)) end
  end)
  after_each(function() H.close_agents() end)

  -- an agent on UDP/TCP and TLS with the certificate `name` (default "server")
  local function agent(name, tls)
    tls = tls or {}
    name = name or "server"
    tls.cert = tls.cert or D(name .. ".pem")
    tls.key = tls.key or D(name .. ".key")
    tls.ca = tls.ca or D("ca.pem")
    return H.agent{ listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" }, tls = tls }
  end

  local t = can and it or pending

  t("exchanges OPTIONS between two agents over TLS, sips: and transport=tls", function()
    local uas, uac = agent(), agent()
    local port = assert(tls_port(uas))
    assert.is_true(port > 0)
    local vias = {}
    uas:on("OPTIONS", function(req)
      vias[#vias + 1] = req:header("Via")
      req:reply(200)
    end)
    local res = H.run(function()
      return assert(uac:request{ method = "OPTIONS", uri = "sips:127.0.0.1:" .. port })
    end)
    assert.equal(200, res.status)
    res = H.run(function()
      return assert(uac:request{ method = "OPTIONS",
        uri = "sip:127.0.0.1:" .. port .. ";transport=tls" })
    end)
    assert.equal(200, res.status)
    assert.equal(2, #vias)
    for _, v in ipairs(vias) do assert.matches("^SIP/2.0/TLS 127.0.0.1:", v) end
  end)

  t("listens on transport=tls and reads the port back", function()
    local a = H.agent{ listen = { "sip:127.0.0.1:0;transport=tls" },
      tls = { cert = D("server.pem"), key = D("server.key") } }
    local ts = a:transports()
    assert.equal("sips:127.0.0.1:" .. ts[1].port, a:contact())
    assert.equal("sips:bob@127.0.0.1:" .. ts[1].port, a:uri("bob"))
    assert.equal(1, #ts)
    assert.equal("tls", ts[1].transport)
    assert.is_true(ts[1].port > 0)
  end)

  t("registers with digest over TLS and records a sips: Contact", function()
    local uas, uac = agent(), agent()
    local reg, loc = sip.registrar{ authorize = sip.auth.authorizer{ realm = "example.test",
      password = function(user) return user == "alice" and "wonderland" or nil end } }
    uas:on("REGISTER", reg)
    local aor = "sips:alice@example.test"
    local contact = "<sips:alice@127.0.0.1:" .. tls_port(uac) .. ">"
    local function register(auth)
      return H.run(function()
        return uac:request{ method = "REGISTER", uri = "sips:127.0.0.1:" .. tls_port(uas),
          auth = auth, headers = { To = "<" .. aor .. ">", From = "<" .. aor .. ">",
            Contact = contact } }
      end)
    end
    local _, _, code = register()
    assert.equal(401, code)
    local res = assert(register{ username = "alice", password = "wonderland" })
    assert.equal(200, res.status)
    local targets = loc:lookup(aor)
    assert.equal(1, #targets)
    assert.matches("^sips:alice@127.0.0.1:" .. tls_port(uac), targets[1].uri or targets[1])
  end)

  t("sets up and ends a call over TLS with sips: Contacts both ways", function()
    local uas, uac = agent(), agent()
    local server
    uas:on("INVITE", function(req)
      server = assert(req:answer())
      server:wait_end(5)
    end)
    local d, res = H.run(function()
      return assert(uac:invite{ uri = "sips:bob@127.0.0.1:" .. tls_port(uas) })
    end)
    assert.equal(200, res.status)
    assert.matches("^<?sips:127.0.0.1:" .. tls_port(uas), res:header("Contact"))
    H.run_until(function() return server end)
    assert.equal("sips:127.0.0.1:" .. tls_port(uac), server:target())
    assert.equal("sips:127.0.0.1:" .. tls_port(uas), d:target())
    -- the callee's BYE opens its own TLS connection to the caller's Contact
    H.run(function() assert.is_true(server:bye()) end)
    H.run_until(function() return d:state() == "terminated" end)
    -- and a second call ended by the caller
    d = H.run(function()
      return assert(uac:invite{ uri = "sips:bob@127.0.0.1:" .. tls_port(uas) })
    end)
    H.run(function() assert.is_true(d:bye()) end)
    assert.equal("terminated", d:state())
  end)

  t("refuses a server certificate for another host or expired, unless verify = false",
    function()
      for _, name in ipairs{ "wrong", "expired" } do
        local uas = agent(name)
        uas:on("OPTIONS", function(req) req:reply(200) end)
        local uac = agent()
        local t0 = sip.now()
        local res, err, code = H.run(function()
          return uac:request{ method = "OPTIONS", uri = "sips:127.0.0.1:" .. tls_port(uas) }
        end)
        assert.is_nil(res)
        assert.equal(503, code)
        assert.equal("503 TLS Connection Failed", err)
        assert.is_true(sip.now() - t0 < 5, "refused at once, not by a timeout")
        local lax = agent(nil, { verify = false })
        res = H.run(function()
          return assert(lax:request{ method = "OPTIONS", uri = "sips:127.0.0.1:" .. tls_port(uas) })
        end)
        assert.equal(200, res.status)
      end
    end)

  ;(can and have("python3") and it or pending)(
    "answers OPTIONS from Python's ssl client over TLS 1.2 and 1.3", function()
      local uas = agent()
      uas:on("OPTIONS", function(req) req:reply(200) end)
      for _, spec in ipairs{ { "localhost", "TLSv1_2", "TLSv1.2" },
                             { "127.0.0.1", nil, "TLSv1.3" } } do
        local argv = { "python3", "spec/peers/tls_options.py", tostring(tls_port(uas)),
          D("ca.pem"), spec[1], spec[2] }
        local p = H.background(argv, 15)
        local ok = pcall(H.run_until, function() return p.done() end, 15, "tls_options.py")
        local log = p.log()
        p.kill()
        assert(ok, log)
        assert.equal(spec[3] .. "\nSIP/2.0 200 OK\n", log)
      end
    end)

  t("refuses TLS 1.0 and 1.1 handshakes (openssl s_client)", function()
    local uas = agent()
    for _, v in ipairs{ "-tls1", "-tls1_1", "-tls1_2" } do
      local p = H.background({ "sh", "-c", "echo | openssl s_client -connect 127.0.0.1:"
        .. tls_port(uas) .. " " .. v .. " -cipher DEFAULT:@SECLEVEL=0 2>&1" }, 10)
      local ok = pcall(H.run_until, function() return p.done() end, 10, "s_client")
      local log = p.log()
      p.kill()
      assert(ok, log)
      if v == "-tls1_2" then
        assert.matches("Protocol%s*: TLSv1.2", log)
        assert.not_matches("Cipher is %(NONE%)", log)
      else
        assert.matches("Cipher is (NONE)", log, 1, true)
      end
    end
  end)

  t("checks the tls option", function()
    local function agent_err(opts)
      local ok, err = pcall(sip.agent, opts)
      assert.is_false(ok)
      return err
    end
    assert.matches("luasip.agent: a sips: or transport=tls listen URI needs the tls option",
      agent_err{ listen = { "sips:127.0.0.1:0" } }, 1, true)
    assert.matches("luasip.agent: tls.pin: unknown option",
      agent_err{ listen = { "sips:127.0.0.1:0" }, tls = { pin = "x" } }, 1, true)
    assert.matches("luasip.agent: tls.cert must be a PEM file path",
      agent_err{ listen = { "sips:127.0.0.1:0" }, tls = { cert = 1 } }, 1, true)
    assert.matches("luasip.agent: tls.verify must be a boolean",
      agent_err{ listen = { "sips:127.0.0.1:0" }, tls = { verify = "yes" } }, 1, true)
    assert.matches("luasip.agent: tls must be a table",
      agent_err{ listen = { "sips:127.0.0.1:0" }, tls = true }, 1, true)
    assert.matches("luasip.agent: the tls option needs a sips: or transport=tls listen URI",
      agent_err{ listen = { "sip:127.0.0.1:0" }, tls = {} }, 1, true)
    if not can then return end
    local a, err, code = sip.agent{ listen = { "sips:127.0.0.1:0" },
      tls = { cert = D("missing.pem"), key = D("server.key") } }
    assert.is_nil(a)
    assert.equal("tls", code)
    assert.matches("luasip.agent: tls.cert: " .. D("missing.pem") .. ": No such file", err, 1, true)
    a, err, code = sip.agent{ listen = { "sips:127.0.0.1:0" },
      tls = { cert = D("server.pem"), key = D("wrong.key") } }
    assert.is_nil(a)
    assert.equal("tls", code)
    assert.matches("tls.key: " .. D("wrong.key") .. ": does not match the certificate", err, 1, true)
    a, err, code = sip.agent{ listen = { "sips:127.0.0.1:0" },
      tls = { cert = D("server.key"), key = D("server.key") } }
    assert.is_nil(a)
    assert.equal("tls", code)
    assert.matches("no PEM certificate in it", err, 1, true)
  end)
end)
