-- NAT traversal on loopback: RFC 3581 rport/received (server and client), bindings that
-- keep the address and connection they registered from, RFC 5626 outbound (reg-id,
-- +sip.instance, Require: outbound, flow replacement, flow failure, CRLF keep-alives,
-- flow tokens).  The phone is spec/peers/flowpeer.py: one socket it registers from and
-- answers on, with a Contact nobody listens on (what a private address is from outside).
local H = require "spec.helper"
local sip = H.sip
local location = require "luasip.location"

local AOR = "sip:alice@example.test"

describe("NAT and outbound (loopback)", function()
  local proxy, caller, loc, reg, n, procs, files
  before_each(function()
    proxy, caller = H.agent(), H.agent()
    n, procs, files = 0, {}, {}
  end)
  after_each(function()
    for _, p in ipairs(procs) do p.kill() end
    for _, f in ipairs(files) do os.remove(f) end
    H.close_agents()
  end)

  -- the proxy: a registrar (opts) and INVITEs to alice forked to her bindings' flows
  local function serve(opts)
    reg, loc = sip.registrar(opts or {})
    proxy:on("REGISTER", reg)
    proxy:on("INVITE", function(req)
      local targets = loc:lookup(AOR, proxy)
      if #targets == 0 then return req:reply(480, "Temporarily Unavailable") end
      local rr = targets[1].flow and location.flow_token(targets[1].flow)
      local _, err, code = req:proxy(targets, { record_route = rr })
      if not req:answered() then req:reply(tonumber(code) or 503, tostring(err)) end
    end)
  end

  local function port() return proxy:transports()[1].port end

  -- a REGISTER as raw text (flowpeer.py puts its own port for $LPORT)
  local function register_text(proto, o)
    n = n + 1
    local lines = {
      "REGISTER sip:127.0.0.1:" .. port() .. " SIP/2.0",
      "Via: SIP/2.0/" .. proto:upper() .. " 127.0.0.1:" .. (o.via_port or "$LPORT")
        .. (o.rport == false and "" or ";rport") .. ";branch=z9hG4bK-nat" .. n .. "-" .. os.time(),
      "Max-Forwards: 70",
      "From: <" .. AOR .. ">;tag=f" .. n,
      "To: <" .. AOR .. ">",
      "Call-ID: " .. (o.call_id or ("nat-" .. n .. "@test")),
      "CSeq: " .. n .. " REGISTER",
      "Contact: " .. o.contact,
      "Expires: 300",
    }
    for _, h in ipairs(o.headers or {}) do lines[#lines + 1] = h end
    lines[#lines + 1] = "Content-Length: 0"
    return table.concat(lines, "\r\n") .. "\r\n\r\n"
  end

  -- phone(proto, opts) -> proc: flowpeer.py registering with register_text(proto, opts)
  local function phone(proto, o)
    local file = os.tmpname()
    local f = assert(io.open(file, "wb"))
    f:write(register_text(proto, o))
    f:close()
    files[#files + 1] = file
    local p = H.background({ "python3", "spec/peers/flowpeer.py", "127.0.0.1",
      tostring(o.port or port()), file, proto, o.status or "486", tostring(o.timeout or 8) }, 20)
    procs[#procs + 1] = p
    return p
  end

  local function wait_log(p, pattern, what)
    H.run_until(function() return p.log():match(pattern) or p.done() end, 10, what)
    assert.matches(pattern, p.log())
  end

  -- an INVITE from the caller to alice through the proxy -> the status it got
  local function call_alice()
    local res, _, code = H.run(function()
      return caller:request{ method = "INVITE", uri = "sip:alice@127.0.0.1:" .. port(),
        headers = { To = "<" .. AOR .. ">", From = "<sip:bob@example.test>" } }
    end, 15)
    return res and res.status or code
  end

  it("answers to the source port with received and rport when the Via asks (RFC 3581)",
    function()
      serve()
      -- the Via names port 9 (discard): only rport brings the answer back
      local p = phone("udp", { via_port = "9", contact = "<sip:alice@127.0.0.1:9>" })
      wait_log(p, "REG SIP/2.0 200", "200 at the source port")
      local via = p.log():match("VIA ([^\n]*)")
      assert.matches(";rport=%d+", via)
      assert.matches(";received=127%.0%.0%.1", via)
      assert.not_matches(";rport=9[;%s]", via .. ";")
    end)

  it("puts rport in the Via of its own requests (RFC 3581 client)", function()
    local seen
    proxy:on("OPTIONS", function(req)
      seen = req.via[1]
      req:reply(200)
    end)
    local res = H.run(function()
      return caller:request{ method = "OPTIONS", uri = "sip:127.0.0.1:" .. port() }
    end)
    assert.equal(200, res.status)
    assert.is_not_nil(seen.rport)
  end)

  it("records the source of a binding and, with nat = true, sends requests there", function()
    serve{ nat = true }
    local private = H.free_port()          -- nobody listens: the phone's private Contact
    local p = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. private .. ">" })
    wait_log(p, "REG SIP/2.0 200", "registration")
    local b = loc:bindings(AOR)[1]
    assert.equal("udp", b.source.transport:lower())
    assert.equal("127.0.0.1", b.source.address)
    assert.equal(location.flow_uri(b.source), b.received)
    assert.is_true(b.nat)
    local t = loc:lookup(AOR)[1]
    assert.equal("sip:alice@127.0.0.1:" .. private, t.uri)       -- the Request-URI stays
    assert.equal(b.received, t.flow)
    assert.equal(486, call_alice())
    wait_log(p, "GOT INVITE sip:alice@127%.0%.0%.1:" .. private, "INVITE over the flow")
  end)

  it("without nat, a UDP binding is reached at its Contact", function()
    serve()
    local p = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port() .. ">" })
    wait_log(p, "REG SIP/2.0 200", "registration")
    local t = loc:lookup(AOR)[1]
    assert.is_nil(t.flow)
    assert.is_string(t.received)
  end)

  it("keeps a TCP client's connection as its flow and answers a CRLF ping", function()
    serve()
    local p = phone("tcp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port()
      .. ";transport=tcp>" })
    wait_log(p, "REG SIP/2.0 200", "registration")
    wait_log(p, "\nPONG", "the CRLF pong (RFC 5626 4.4.1)")
    local t = loc:lookup(AOR, proxy)[1]
    assert.matches(";transport=tcp$", t.flow)
    assert.is_true(proxy:flow_alive(t.flow))
    assert.equal(486, call_alice())
    wait_log(p, "GOT INVITE", "INVITE over the registering connection")
  end)

  local function quiet(cmd)
    local ok = os.execute(cmd .. " >/dev/null 2>&1")
    return ok == true or ok == 0
  end

  ;(quiet("command -v openssl") and it or pending)(
    "keeps a TLS client's connection as its flow", function()
    local dir = os.tmpname()
    os.remove(dir)
    assert(quiet("mkdir -m 700 " .. H.shquote(dir)))
    finally(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    assert(quiet("sh spec/peers/make-certs.sh " .. H.shquote(dir)), "openssl: test certificates")
    proxy = H.agent{ listen = { "sip:127.0.0.1:0", "sips:127.0.0.1:0" },
      tls = { cert = dir .. "/server.pem", key = dir .. "/server.key" } }
    local tls_port
    for _, t in ipairs(proxy:transports()) do
      if t.transport == "tls" then tls_port = t.port end
    end
    serve()
    -- the phone's Contact names a port nobody listens on: only its connection reaches it
    local p = phone("tls", { port = tls_port, contact = "<sip:alice@127.0.0.1:"
      .. H.free_port() .. ";transport=tls>" })
    wait_log(p, "REG SIP/2.0 200", "registration over TLS")
    -- (no CRLF pong over TLS: sofia 1.12's TLS transport answers none, README Limits)
    wait_log(p, "\nN?O?PONG", "the phone's keep-alive")
    local t = loc:lookup(AOR, proxy)[1]
    assert.matches(";transport=tls$", t.flow)
    assert.is_true(proxy:flow_alive(t.flow))
    assert.equal(486, call_alice())
    wait_log(p, "GOT INVITE", "INVITE over the registering TLS connection")
  end)

  local INSTANCE = '+sip.instance="<urn:uuid:00000000-0000-1000-8000-000a95a0e128>"'

  it("keeps one outbound binding per instance and reg-id, the newest flow replacing the old",
    function()
      serve()
      local ob = { "Supported: outbound, path" }
      local p1 = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port()
        .. ";ob>;" .. INSTANCE .. ";reg-id=1", headers = ob, call_id = "ob@test" })
      wait_log(p1, "REG SIP/2.0 200", "first registration")
      assert.matches("REQUIRE outbound", p1.log())
      local first = loc:bindings(AOR)[1]
      assert.is_true(first.ob)
      assert.equal(1, first.reg_id)
      -- the same instance and reg-id from another socket and another Contact: same binding
      local p2 = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port()
        .. ";ob>;" .. INSTANCE .. ";reg-id=1", headers = ob, call_id = "ob@test" })
      wait_log(p2, "REG SIP/2.0 200", "second registration")
      local list = loc:bindings(AOR)
      assert.equal(1, #list)
      assert.not_equal(first.received, list[1].received)
      assert.equal(first.registered_at, list[1].registered_at)
      -- a second reg-id of the instance: a second flow; a lookup uses the newest one
      local p3 = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port()
        .. ";ob>;" .. INSTANCE .. ";reg-id=2", headers = ob, call_id = "ob@test" })
      wait_log(p3, "REG SIP/2.0 200", "third registration")
      assert.equal(2, #loc:bindings(AOR))
      local targets = loc:lookup(AOR, proxy)
      assert.equal(1, #targets)
      assert.equal(2, targets[1].reg_id)
      assert.is_true(targets[1].ob)
      assert.equal(486, call_alice())
      wait_log(p3, "GOT INVITE", "INVITE over the newest flow")
      assert.not_matches("GOT", p2.log())
    end)

  it("drops an outbound binding whose connection closed (flow failure)", function()
    serve()
    local p = phone("tcp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port()
      .. ";transport=tcp;ob>;" .. INSTANCE .. ";reg-id=1",
      headers = { "Supported: outbound" }, timeout = 2 })
    wait_log(p, "REG SIP/2.0 200", "registration")
    local flow = loc:bindings(AOR)[1].received
    assert.is_true(proxy:flow_alive(flow))
    H.run_until(function() return p.done() end, 10, "the phone leaving")  -- closes the flow
    H.run_until(function() return not proxy:flow_alive(flow) end, 5, "flow gone")
    assert.equal(1, #loc:bindings(AOR))
    assert.same({}, loc:lookup(AOR, proxy))
    assert.same({}, loc:bindings(AOR))                                -- removed
    assert.equal(480, call_alice())
  end)

  it("answers 439 when the first hop of the Path lacks outbound", function()
    serve()
    local p = phone("udp", { contact = "<sip:alice@127.0.0.1:9;ob>;" .. INSTANCE .. ";reg-id=1",
      headers = { "Supported: outbound, path", "Path: <sip:edge.example.test;lr>" } })
    wait_log(p, "REG SIP/2.0 439", "439")
    assert.same({}, loc:bindings(AOR))
  end)

  it("record-routes with a flow token that routes in-dialog requests over the flow",
    function()
      serve{ nat = true }
      local p = phone("udp", { contact = "<sip:alice@127.0.0.1:" .. H.free_port() .. ">" })
      wait_log(p, "REG SIP/2.0 200", "registration")
      local flow = loc:lookup(AOR)[1].flow
      assert.equal(486, call_alice())
      wait_log(p, "\nRR ", "a Record-Route")
      local rr = p.log():match("\nRR ([^\n]*)")
      local token = rr:match("^<sip:([^@]+)@")
      assert.equal(flow, location.token_flow(token))
      -- a request that follows that route: the flow it names, unless it came over it
      local got
      proxy:on("OPTIONS", function(req)
        got = { location.request_flow(req) }
        req:reply(200)
      end)
      H.run(function()
        return caller:request{ method = "OPTIONS", uri = "sip:alice@127.0.0.1:9",
          headers = { Route = rr } }
      end)
      assert.same({ flow }, got)
      assert.is_nil(location.token_flow("ob-zz"))
    end)
end)
