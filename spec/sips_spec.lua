-- sips: is TLS end to end (RFC 3261 26.2, RFC 5630): what luasip sends to a sips: URI
-- never leaves over UDP or TCP, dialogs set up with sips: keep sips: Contacts, a proxy
-- forwards a sips: request over TLS only (Record-Route sips:), a UAS answers 416 to a
-- sips: Request-URI that came over UDP/TCP and the registrar refuses a sips: Contact
-- registered over UDP.  Real TLS over loopback, certificates made at test time by
-- spec/peers/make-certs.sh; raw SIP over Python's ssl (spec/peers/tls_send.py) for
-- RFC 4475 bext01, whose Via names TLS.
local H = require "spec.helper"
local sip = H.sip

local function port_of(a, proto)
  for _, t in ipairs(a:transports()) do
    if t.transport == proto then return t.port end
  end
end

local can = H.have("openssl")
local t = can and it or pending
describe("sips: over TLS only", function()
  local dir
  local function D(name) return dir .. "/" .. name end
  setup(function() if can then dir = H.test_certs() end end)
  teardown(function()
    if dir then os.execute("rm -rf " .. H.shquote(dir)) end
  end)
  after_each(function() H.close_agents() end)

  -- an agent on UDP first (its default Contact is sip:), then TLS
  local function agent(opts)
    opts = opts or {}
    opts.listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" }
    opts.tls = { cert = D("server.pem"), key = D("server.key"), ca = D("ca.pem") }
    return H.agent(opts)
  end
  local function sips_uri(a, user)
    return "sips:" .. (user and user .. "@" or "") .. "127.0.0.1:" .. port_of(a, "tls")
  end
  local function udp_uri(a, user)
    return "sip:" .. (user and user .. "@" or "") .. "127.0.0.1:" .. port_of(a, "udp")
  end

  t("refuses to send a sips: request over a UDP next hop or without a TLS transport",
    function()
      local uas, uac = agent(), agent()
      local got = 0
      uas:on("OPTIONS", function(req) got = got + 1; req:reply(200) end)
      uas:on("INVITE", function(req) got = got + 1; req:reply(486) end)
      local res, err, code = H.run(function()
        return uac:request{ method = "OPTIONS", uri = sips_uri(uas), proxy = udp_uri(uas) }
      end)
      assert.is_nil(res)
      assert.equal("tls", code)
      assert.equal("a sips: request goes over TLS only, and its next hop "
        .. udp_uri(uas) .. " is not TLS", err)
      local d
      d, err, code = H.run(function()
        return uac:invite{ uri = sips_uri(uas, "bob"), headers = { Route = "<" .. udp_uri(uas)
          .. ";lr>" } }
      end)
      assert.is_nil(d)
      assert.equal("tls", code)
      assert.matches("next hop " .. udp_uri(uas) .. ";lr is not TLS", err, 1, true)
      -- an agent with no TLS transport at all
      local plain = H.agent()
      res, err, code = H.run(function()
        return plain:request{ method = "OPTIONS", uri = sips_uri(uas) }
      end)
      assert.is_nil(res)
      assert.equal("tls", code)
      assert.equal("a sips: request needs a TLS transport (listen on a sips: URI)", err)
      -- nothing reached the UAS; over TLS it does
      assert.equal(0, got)
      res = H.run(function()
        return assert(uac:request{ method = "OPTIONS", uri = sips_uri(uas) })
      end)
      assert.equal(200, res.status)
      assert.equal(1, got)
    end)

  t("keeps sips: Contacts and TLS for the in-dialog requests of a sips: call (secure dialog)",
    function()
    local uas, uac = agent(), agent()
    local server, seen = nil, {}
    uas:on("INVITE", function(req)
      server = assert(req:answer())
      server:on("INVITE", function(r, _)
        seen[#seen + 1] = { contact = r:header("Contact"), via = r:header("Via") }
        r:reply(200)
      end)
      server:on("BYE", function(r, _)
        seen[#seen + 1] = { via = r:header("Via") }
        r:reply(200)
      end)
      server:wait_end(10)
    end)
    local d = H.run(function() return assert(uac:invite{ uri = sips_uri(uas, "bob") }) end)
    H.run_until(function() return server end)
    -- a re-INVITE from the caller: its Contact is sips: although UDP is listed first
    local res = H.run(function() return assert(d:request("INVITE")) end)
    assert.equal(200, res.status)
    assert.matches("^<?sips:127.0.0.1:" .. port_of(uac, "tls"), seen[1].contact)
    assert.matches("^SIP/2.0/TLS ", seen[1].via)
    -- both ends hold a secure dialog (RFC 3261 12.1): a target refresh to a sip: URI
    -- over UDP does not take it off TLS
    assert.is_true(d.secure)
    assert.is_true(server.secure)
    res = H.run(function()
      return assert(d:request("INVITE", { headers = { Contact = "<" .. udp_uri(uac) .. ">" } }))
    end)
    assert.equal(200, res.status)
    local r, err, code = H.run(function() return server:request("INFO") end)
    assert.is_nil(r)
    assert.equal("tls", code)
    assert.equal("a sips: request goes over TLS only, and its next hop " .. udp_uri(uac)
      .. " is not TLS", err)
    H.run(function() assert.is_true(d:bye()) end)
    assert.equal(3, #seen)
    assert.matches("^SIP/2.0/TLS ", seen[3].via)
    -- a dialog over UDP is not secure
    local plain = H.run(function() return assert(uac:invite{ uri = udp_uri(uas, "bob") }) end)
    assert.is_false(plain.secure)
    H.run(function() assert.is_true(plain:bye()) end)
  end)

  t("proxies a sips: request over TLS only, with a sips: Record-Route", function()
    local proxy, callee, caller = agent(), agent(), agent()
    local rr, target, vias
    callee:on("INVITE", function(req)
      rr = req:headers("Record-Route")
      vias = vias or {}
      vias[#vias + 1] = req:header("Via")
      req:reply(200)
    end)
    callee:on("ACK", function() end)
    local forking
    proxy:on("INVITE", function(req)
      req:proxy(target, { record_route = true, forking = forking })
    end)
    -- the target the location gave is a sip: URI over UDP: not for a sips: request
    target = udp_uri(callee, "bob")
    local d, err, code = H.run(function()
      return caller:invite{ uri = sips_uri(callee, "bob"), proxy = sips_uri(proxy) }
    end)
    assert.is_nil(d)
    assert.equal(480, code)
    assert.equal("480 No TLS Route For SIPS Request", err)
    assert.is_nil(rr)
    target = sips_uri(callee, "bob")
    d = H.run(function()
      return assert(caller:invite{ uri = sips_uri(callee, "bob"), proxy = sips_uri(proxy) })
    end)
    assert.same({ "<" .. sips_uri(proxy) .. ";lr>" }, rr)
    H.run(function() assert.is_true(d:bye()) end)
    -- a target that is not TLS is skipped, in parallel and in sequence
    for _, how in ipairs{ "parallel", "sequential" } do
      forking, target, rr, vias = how, { { uri = udp_uri(callee, "bob") },
        { uri = sips_uri(callee, "bob") } }, nil, nil
      d = H.run(function()
        return assert(caller:invite{ uri = sips_uri(callee, "bob"), proxy = sips_uri(proxy) })
      end)
      assert.same({ "<" .. sips_uri(proxy) .. ";lr>" }, rr)
      assert.equal(1, #vias)
      assert.matches("^SIP/2.0/TLS ", vias[1])
      H.run(function() assert.is_true(d:bye()) end)
    end
    forking, target = nil, sips_uri(callee, "bob")
    -- a sip: request that came over TLS is Record-Routed sips: too (its dialog's
    -- requests come back over TLS)
    d = H.run(function()
      return assert(caller:invite{ uri = udp_uri(callee, "bob"), proxy = sips_uri(proxy) })
    end)
    assert.same({ "<" .. sips_uri(proxy) .. ";lr>" }, rr)
    H.run(function() assert.is_true(d:bye()) end)
    -- ... and when it goes on over UDP, the callee's side is UDP: a double Record-Route
    -- (RFC 5658), so a UDP-only callee can still reach the proxy, and the caller's
    -- requests still come over TLS (the caller's hang-up goes through it)
    target = udp_uri(callee, "bob")
    d = H.run(function()
      return assert(caller:invite{ uri = udp_uri(callee, "bob"), proxy = sips_uri(proxy) })
    end)
    assert.same({ "<" .. udp_uri(proxy) .. ";lr;r2=on>", "<" .. sips_uri(proxy) .. ";lr;r2=on>" }, rr)
    H.run(function() assert.is_true(d:bye()) end)
  end)

  t("forwards a sips: request statelessly over TLS only", function()
    local proxy, callee, caller = agent(), agent(), agent()
    local results = {}
    callee:on("MESSAGE", function(req) req:reply(200) end)
    proxy:on("MESSAGE", function(req)
      results[#results + 1] = { req:forward(nil, udp_uri(callee)) }
      results[#results + 1] = { req:forward(nil, sips_uri(callee)) }
    end)
    local res = H.run(function()
      return assert(caller:request{ method = "MESSAGE", uri = sips_uri(callee, "bob"),
        proxy = sips_uri(proxy), body = "hi", content_type = "text/plain" })
    end)
    assert.equal(200, res.status)
    assert.same({ nil, "a sips: request goes over TLS only, and its next hop "
      .. udp_uri(callee) .. " is not TLS", "tls" }, results[1])
    assert.same({ true }, results[2])
  end)

  t("answers 416 to a sips: Request-URI that came over UDP or TCP, unless told not to",
    function()
      local strict = agent()
      local lax = H.agent{ listen = { "sip:127.0.0.1:0", "sip:127.0.0.1:0;transport=tcp" },
        sips_without_tls = true }
      for _, a in ipairs{ strict, lax } do a:on("OPTIONS", function(req) req:reply(200) end) end
      local function options(port, proto)
        return table.concat({
          "OPTIONS sips:luasip@127.0.0.1 SIP/2.0",
          "Via: SIP/2.0/" .. proto:upper() .. " 127.0.0.1:9;rport;branch=z9hG4bKsips" .. proto,
          "From: <sips:py@127.0.0.1>;tag=1", "To: <sips:luasip@127.0.0.1>",
          "Call-ID: sips-" .. proto .. "-" .. port .. "@127.0.0.1", "CSeq: 1 OPTIONS",
          "Max-Forwards: 70", "Content-Length: 0", "", "" }, "\r\n")
      end
      assert.equal("SIP/2.0 416 SIPS Request-URI Needs TLS",
        H.send_raw(port_of(strict, "udp"), options(port_of(strict, "udp"), "udp")))
      local tcp = H.agent{ listen = { "sip:127.0.0.1:0;transport=tcp" } }
      tcp:on("OPTIONS", function(req) req:reply(200) end)
      assert.equal("SIP/2.0 416 SIPS Request-URI Needs TLS",
        H.send_raw(port_of(tcp, "tcp"), options(port_of(tcp, "tcp"), "tcp"), "tcp"))
      assert.equal("SIP/2.0 200 OK",
        H.send_raw(port_of(lax, "udp"), options(port_of(lax, "udp"), "udp")))
      local ok, err = pcall(sip.agent, { sips_without_tls = "yes" })
      assert.is_false(ok)
      assert.matches("luasip.agent: sips_without_tls must be a boolean", err, 1, true)
    end)

  t("refuses a sips: Contact registered over UDP, records it over TLS", function()
    local uas, uac = agent(), agent()
    local reg, loc = sip.registrar()
    uas:on("REGISTER", reg)
    local aor = "sip:alice@example.test"
    local function register(uri, contact)
      return H.run(function()
        return uac:request{ method = "REGISTER", uri = uri, headers = {
          To = "<" .. aor .. ">", From = "<" .. aor .. ">", Contact = contact } }
      end)
    end
    local res, err, code = register(udp_uri(uas), "<" .. sips_uri(uac, "alice") .. ">")
    assert.is_nil(res)
    assert.equal(400, code)
    assert.equal("400 SIPS Contact Needs TLS", err)
    assert.same({}, loc:lookup(aor))
    res = assert(register(sips_uri(uas), "<" .. sips_uri(uac, "alice") .. ">"))
    assert.equal(200, res.status)
    -- a sip: Contact over UDP is as before
    res = assert(register(udp_uri(uas), "<" .. udp_uri(uac, "alice") .. ">"))
    assert.equal(200, res.status)
    assert.equal(2, #loc:lookup(aor))
  end)

  ;(can and H.have("python3") and it or pending)(
    "answers RFC 4475 bext01 (its Via names TLS) over TLS with 420 and Unsupported",
    function()
      local file = "../shared/corpus/rfc4475/bext01.dat"
      local f = io.open(file)
      if not f then return pending("RFC 4475 corpus not found at " .. file) end
      f:close()
      local uas = agent()
      uas:on("OPTIONS", function(req) req:reply(200) end)
      local p = H.background({ "python3", "spec/peers/tls_send.py",
        tostring(port_of(uas, "tls")), D("ca.pem"), "127.0.0.1", file }, 15)
      local ok = pcall(H.run_until, function() return p.done() end, 15, "tls_send.py")
      local log = p.log()
      p.kill()
      assert(ok, log)
      assert.matches("^SIP/2.0 420 Bad Extension\r?\n", log)
      local unsupported = log:match("\nUnsupported: ([^\r\n]*)")
      -- (the dispatcher compares option tags in lower case and echoes them so)
      assert.equal("nothingsupportsthis, nothingsupportsthiseither", unsupported:lower())
    end)
end)
