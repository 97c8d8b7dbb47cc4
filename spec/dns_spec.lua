local H = require "spec.helper"
local sip = H.sip

-- RFC 3263 through sofia's resolver (nta's NAPTR -> SRV -> A/AAAA), against a real DNS
-- server the specs start on loopback: dnsmasq on an OS-chosen port, named to the agent
-- with sip.agent{ dns = { servers = {"127.0.0.1:PORT"} } } (csrc/dnsconf.c).
local function have(cmd)
  local ok = os.execute("command -v " .. cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end
local it_dns = have("dnsmasq") and it or function(name) pending(name .. " -- no dnsmasq") end

-- A UDP socket on loopback that reads and never answers: a SIP target or a name server
-- that is down without refusing (no ICMP port unreachable)
local SILENT = [[
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
with open(sys.argv[1], "w") as f:
    f.write(str(s.getsockname()[1]))
n = 0
t0 = time.time()
while time.time() - t0 < 30:
    s.settimeout(0.5)
    try:
        s.recv(65535)
        n += 1
        with open(sys.argv[1] + ".n", "w") as f:
            f.write(str(n))
    except socket.timeout:
        pass
]]

describe("DNS (RFC 3263)", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)

  -- zone(args) -> the port of a dnsmasq answering for *.test with the records in args
  -- (dnsmasq options: --naptr-record, --srv-host, --host-record); stopped after the test
  local function zone(args)
    local port = H.free_port()
    local argv = { "dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--no-resolv",
      "--no-hosts", "--bind-interfaces", "--listen-address=127.0.0.1", "--port=" .. port,
      "--local=/test/", "--log-queries", "--log-facility=-" }
    for _, a in ipairs(args) do argv[#argv + 1] = a end
    local p = H.background(argv, 60)
    defer(p.kill)
    H.run_until(function() return p.log():find("started, version", 1, true) or p.done() end,
      10, "dnsmasq started")
    assert.is_nil(p.done(), p.log())
    return port, p
  end

  -- silent() -> the port of a loopback UDP socket that never answers, and how many
  -- datagrams it read so far
  local function silent()
    local script, portfile = os.tmpname(), os.tmpname()
    os.remove(portfile)
    local f = assert(io.open(script, "w"))
    f:write(SILENT)
    f:close()
    local p = H.background({ "python3", script, portfile }, 40)
    defer(function() p.kill(); os.remove(script); os.remove(portfile); os.remove(portfile .. ".n") end)
    H.run_until(function() return tonumber(H.read_file(portfile) or "") or p.done() end, 10,
      "silent socket bound")
    return tonumber(H.read_file(portfile)), function()
      return tonumber(H.read_file(portfile .. ".n") or "") or 0
    end
  end

  local function uas(name, status)
    local a = H.agent{ listen = { "sip:127.0.0.1:0" } }
    local got = {}
    for _, m in ipairs({ "OPTIONS", "MESSAGE", "INVITE" }) do
      a:on(m, function(req)
        got[#got + 1] = req.method .. " " .. req.transport
        req:reply(status or 200, name)
      end)
    end
    a:on("ACK", function() end)
    a:on("BYE", function(req) req:reply(200) end)
    return a, a:transports()[1].port, got
  end

  -- message(agent) -> agent:request's results for a MESSAGE to sip:bob@example.test
  local function message(a)
    return H.run(function()
      return a:request{ method = "MESSAGE", uri = "sip:bob@example.test", body = "hi",
        content_type = "text/plain" }
    end)
  end

  local function resolver_agent(dns_port, opts)
    opts = opts or {}
    opts.dns = { servers = { "127.0.0.1:" .. dns_port } }
    return H.agent(opts)
  end

  it_dns("reaches sip:bob@example.test through NAPTR -> SRV -> A over the NAPTR's TCP",
  function()
    local b, bport, got = uas("bob")
    local dport, dns = zone{
      "--naptr-record=example.test,10,50,s,SIP+D2T,,_sip._tcp.example.test",
      "--srv-host=_sip._tcp.example.test,bob.example.test," .. bport .. ",10,0",
      "--host-record=bob.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local res, err = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@example.test" }
    end)
    assert.is_truthy(res, err)
    assert.equal(200, res.status)
    assert.equal("bob", res.reason)
    assert.same({ "OPTIONS tcp" }, got)
    local log = dns.log()
    assert.matches("query[NAPTR] example.test", log, 1, true)
    assert.matches("query[SRV] _sip._tcp.example.test", log, 1, true)
    -- and an INVITE: its dialog's BYE goes to the Contact, not through DNS
    local d, r2 = H.run(function() return a:invite{ uri = "sip:bob@example.test" } end)
    assert.is_truthy(d, r2)
    assert.equal(200, r2.status)
    assert.equal("INVITE tcp", got[2])
    H.run(function() return d:bye() end)
    assert.is_truthy(b)
  end)

  it_dns("follows an AAAA record to an IPv6 target", function()
    local b = H.agent{ listen = { "sip:[::1]:0" } }
    b:on("OPTIONS", function(req) req:reply(200, "v6") end)
    local bport = b:transports()[1].port
    local dport = zone{
      "--srv-host=_sip._udp.example.test,six.example.test," .. bport .. ",10,0",
      "--host-record=six.example.test,::1" }
    local a = resolver_agent(dport, { listen = { "sip:[::1]:0", "sip:127.0.0.1:0" } })
    local res, err = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@example.test" }
    end)
    assert.is_truthy(res, err)
    assert.equal("v6", res.reason)
  end)

  it_dns("req:proxy forwards to a domain name by SRV and A, past a refusing first target",
  function()
    local _, bport, got = uas("bob")
    local closed = H.free_port()
    local dport = zone{
      "--naptr-record=example.test,10,50,s,SIP+D2T,,_sip._tcp.example.test",
      "--srv-host=_sip._tcp.example.test,down.example.test," .. closed .. ",5,0",
      "--srv-host=_sip._tcp.example.test,bob.example.test," .. bport .. ",10,0",
      "--host-record=down.example.test,127.0.0.1",
      "--host-record=bob.example.test,127.0.0.1" }
    local proxy = resolver_agent(dport)
    proxy:on("MESSAGE", function(req) req:proxy("sip:bob@example.test") end)
    local uac = H.agent()
    local res, err = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:bob@example.test", proxy = proxy:contact(),
        body = "hi", content_type = "text/plain" }
    end)
    assert.is_truthy(res, err)
    assert.equal(200, res.status)
    assert.equal("bob", res.reason)
    assert.same({ "MESSAGE tcp" }, got)
  end)

  -- a proxy (resolving through a zone of SRV targets) relaying MESSAGE and INVITE to
  -- sip:bob@<domain>, and a client sending through it: send() a MESSAGE, call() an INVITE
  local function relay(dport, domain, agent_opts)
    local proxy = resolver_agent(dport, agent_opts)
    for _, m in ipairs{ "MESSAGE", "INVITE" } do
      proxy:on(m, function(req) req:proxy("sip:bob@" .. domain) end)
    end
    local uac = H.agent()
    local function send()
      return H.run(function()
        return uac:request{ method = "MESSAGE", uri = "sip:bob@" .. domain,
          proxy = proxy:contact(), body = "hi", content_type = "text/plain" }
      end, 15)
    end
    local function call()
      return H.run(function()
        return uac:invite{ uri = "sip:bob@" .. domain, proxy = proxy:contact() }
      end, 15)
    end
    return send, call
  end

  it_dns("req:proxy fails over to the next SRV target on a 503 and skips it for its Retry-After",
  function()
    local one = H.agent{ listen = { "sip:127.0.0.1:0" } }
    local got1 = {}
    one:on("MESSAGE", function(req)
      got1[#got1 + 1] = req.method
      req:reply(503, "busy", { headers = { ["Retry-After"] = #got1 == 1 and "60" or nil } })
    end)
    local p1 = one:transports()[1].port
    local _, p2, got2 = uas("second")
    local _, p3, got3 = uas("third")
    local dport = zone{
      "--srv-host=_sip._udp.example.test,one.example.test," .. p1 .. ",10,0",
      "--srv-host=_sip._udp.example.test,two.example.test," .. p2 .. ",20,0",
      "--srv-host=_sip._udp.example.test,three.example.test," .. p3 .. ",30,0",
      "--host-record=one.example.test,127.0.0.1",
      "--host-record=two.example.test,127.0.0.1",
      "--host-record=three.example.test,127.0.0.1" }
    local send = relay(dport, "example.test")
    local down = require("luasip.dns").down
    defer(function() for k in pairs(down) do down[k] = nil end end)
    local res, err = send()
    assert.is_truthy(res, err)
    assert.equal(200, res.status)
    assert.equal("second", res.reason)
    assert.same({ "MESSAGE" }, got1)
    assert.same({ "MESSAGE udp" }, got2)
    assert.same({}, got3)                  -- the first 200 ends the failover
    -- "Retry-After: 60": the first target is left alone meanwhile
    local r2, err2 = send()
    assert.is_truthy(r2, err2)
    assert.equal("second", r2.reason)
    assert.same({ "MESSAGE" }, got1)
    assert.same({ "MESSAGE udp", "MESSAGE udp" }, got2)
    -- a final answer other than 503 or 408 is the answer: no failover (MESSAGE: 404);
    -- an INVITE answered 503 goes on to the next target (the 503 ACKed hop by hop)
    local four = H.agent()
    four:on("MESSAGE", function(req) req:reply(404, "nobody") end)
    four:on("INVITE", function(req) req:reply(503, "busy") end)
    local dport3 = zone{
      "--srv-host=_sip._udp.gone.test,four.gone.test," .. four:transports()[1].port .. ",10,0",
      "--srv-host=_sip._udp.gone.test,three.gone.test," .. p3 .. ",20,0",
      "--host-record=four.gone.test,127.0.0.1",
      "--host-record=three.gone.test,127.0.0.1" }
    local send3, call3 = relay(dport3, "gone.test")
    local r3, err3, code3 = send3()
    assert.is_nil(r3)
    assert.equal("404 nobody", err3)
    assert.equal(404, code3)
    assert.same({}, got3)
    local d, r4 = call3()
    assert.is_truthy(d, r4)
    assert.equal("third", r4.reason)
    assert.same({ "INVITE udp" }, got3)
    assert.is_truthy(H.run(function() return d:bye() end))
  end)

  it_dns("req:proxy to a name that does not resolve answers 503 Cannot Resolve Target",
  function()
    local dport = zone{ "--host-record=other.test,127.0.0.1" }
    local proxy = resolver_agent(dport)
    local seen
    proxy:on("MESSAGE", function(req) seen = { req:proxy("sip:bob@nowhere.test") } end)
    local uac = H.agent()
    local res, err, code = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:bob@nowhere.test",
        proxy = proxy:contact(), body = "hi", content_type = "text/plain" }
    end)
    assert.is_nil(res)
    assert.equal("503 Cannot Resolve Target", err)
    assert.equal(503, code)
    assert.same({ nil, "cannot resolve nowhere.test: no such domain", 503 }, seen)
  end)

  it_dns("tries SRV targets in priority order and fails over when the first refuses", function()
    local _, p1, got1 = uas("first")
    local _, p2, got2 = uas("second")
    local closed = H.free_port()          -- nothing listens there: TCP connect refused
    local dport = zone{
      "--srv-host=_sip._tcp.example.test,down.example.test," .. closed .. ",5,0",
      "--srv-host=_sip._tcp.example.test,one.example.test," .. p1 .. ",10,0",
      "--srv-host=_sip._tcp.example.test,two.example.test," .. p2 .. ",20,0",
      "--host-record=down.example.test,127.0.0.1",
      "--host-record=one.example.test,127.0.0.1",
      "--host-record=two.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local res, err = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@example.test;transport=tcp" }
    end)
    assert.is_truthy(res, err)
    assert.equal("first", res.reason)
    assert.same({ "OPTIONS tcp" }, got1)
    assert.same({}, got2)
  end)

  it_dns("agent:request skips a target for the Retry-After of its 503", function()
    local one = H.agent{ listen = { "sip:127.0.0.1:0" } }
    local got1 = 0
    one:on("MESSAGE", function(req)
      got1 = got1 + 1
      req:reply(503, "busy", { headers = { ["Retry-After"] = "60" } })
    end)
    local _, p2, got2 = uas("second")
    local dport = zone{
      "--srv-host=_sip._udp.example.test,one.example.test," .. one:transports()[1].port .. ",10,0",
      "--srv-host=_sip._udp.example.test,two.example.test," .. p2 .. ",20,0",
      "--host-record=one.example.test,127.0.0.1",
      "--host-record=two.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local down = require("luasip.dns").down
    defer(function() for k in pairs(down) do down[k] = nil end end)
    for _ = 1, 2 do
      local res, err = message(a)
      assert.is_truthy(res, err)
      assert.equal("second", res.reason)
    end
    assert.equal(1, got1)                  -- the second request went straight to two
    assert.same({ "MESSAGE udp", "MESSAGE udp" }, got2)
  end)

  it_dns("fails over to the next SRV target when the first answers 503 (request and INVITE)",
  function()
    local _, p1, got1 = uas("busy", 503)
    local _, p2, got2 = uas("second")
    local dport = zone{
      "--naptr-record=example.test,10,50,s,SIP+D2U,,_sip._udp.example.test",
      "--srv-host=_sip._udp.example.test,one.example.test," .. p1 .. ",10,0",
      "--srv-host=_sip._udp.example.test,two.example.test," .. p2 .. ",20,0",
      "--host-record=one.example.test,127.0.0.1",
      "--host-record=two.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local res, err = message(a)
    assert.is_truthy(res, err)
    assert.equal("second", res.reason)
    assert.same({ "MESSAGE udp" }, got1)
    assert.same({ "MESSAGE udp" }, got2)
    local d, r2 = H.run(function() return a:invite{ uri = "sip:bob@example.test" } end)
    assert.is_truthy(d, r2)
    assert.equal("second", r2.reason)
    assert.same({ "MESSAGE udp", "INVITE udp" }, got1)
    assert.same({ "MESSAGE udp", "INVITE udp" }, got2)
    H.run(function() return d:bye() end)
    -- every target busy: the last answer is the result
    local _, p3 = uas("busy too", 503)
    local dport2 = zone{
      "--srv-host=_sip._udp.busy.test,one.busy.test," .. p1 .. ",10,0",
      "--srv-host=_sip._udp.busy.test,three.busy.test," .. p3 .. ",20,0",
      "--host-record=one.busy.test,127.0.0.1",
      "--host-record=three.busy.test,127.0.0.1" }
    local b = resolver_agent(dport2)
    local r3, err3, code3 = H.run(function()
      return b:request{ method = "OPTIONS", uri = "sip:bob@busy.test" }
    end)
    assert.is_nil(r3)
    assert.equal("503 busy too", err3)
    assert.equal(503, code3)
  end)

  it_dns("a request too large for UDP still moves to TCP (RFC 3261 18.1.1)", function()
    local _, bport, got = uas("bob")
    local dport = zone{
      "--srv-host=_sip._udp.example.test,bob.example.test," .. bport .. ",10,0",
      "--host-record=bob.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local res, err = H.run(function()
      return a:request{ method = "MESSAGE", uri = "sip:bob@example.test",
        body = ("x"):rep(2000), content_type = "text/plain" }
    end)
    assert.is_truthy(res, err)
    assert.same({ "MESSAGE tcp" }, got)
  end)

  it_dns("takes a name from the hosts file (dns.hosts) without asking DNS", function()
    local _, bport, got = uas("bob")
    local dport, dns = zone{}
    local hosts = os.tmpname()
    defer(function() os.remove(hosts) end)
    local f = assert(io.open(hosts, "w"))
    f:write("# test hosts\n127.0.0.1\tlocalhost\n127.0.0.1 pbx.hosts.test pbx # the PBX\n")
    f:close()
    local a = H.agent{ dns = { servers = { "127.0.0.1:" .. dport }, hosts = hosts } }
    local res, err = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@PBX:" .. bport .. ";transport=tcp" }
    end)
    assert.is_truthy(res, err)
    assert.equal("bob", res.reason)
    assert.same({ "OPTIONS tcp" }, got)
    assert.is_nil(dns.log():find("query[", 1, true))
    assert.same({ { address = "127.0.0.1", port = 5061, transport = "tls" } },
      H.run(function() return require("luasip.dns").resolve("sips:pbx.hosts.test", a, hosts) end))
    -- nta's own resolution (req:proxy, dialogs) finds hosts names in its cache
    a:on("MESSAGE", function(req) req:proxy("sip:bob@pbx.hosts.test:" .. bport) end)
    local uac = H.agent()
    local r2, err2 = H.run(function()
      return uac:request{ method = "MESSAGE", uri = "sip:bob@pbx.hosts.test", proxy = a:contact(),
        body = "hi", content_type = "text/plain" }
    end)
    assert.is_truthy(r2, err2)
    assert.equal("bob", r2.reason)
    assert.same({ "OPTIONS tcp", "MESSAGE udp" }, got)
    assert.is_nil(dns.log():find("query[", 1, true))
  end)

  it_dns("agent:request and req:proxy fail over to the next SRV target when the first does "
    .. "not answer, in bounded time",
  function()
    local _, p2, got2 = uas("second")
    local p1, heard = silent()
    local dport = zone{
      "--srv-host=_sip._udp.example.test,one.example.test," .. p1 .. ",10,0",
      "--srv-host=_sip._udp.example.test,two.example.test," .. p2 .. ",20,0",
      "--host-record=one.example.test,127.0.0.1",
      "--host-record=two.example.test,127.0.0.1" }
    local a = resolver_agent(dport, { t1 = 0.05 })    -- timer F = 64*T1 = 3.2 s
    local t0 = sip.now()
    local res, err = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@example.test" }
    end, 15)
    local elapsed = sip.now() - t0
    assert.is_truthy(res, err)
    assert.equal("second", res.reason)
    assert.same({ "OPTIONS udp" }, got2)
    assert.is_true(heard() >= 1, "the first target got the request")
    assert.is_true(elapsed >= 3 and elapsed < 8, "one timer F, then the second: " .. elapsed)
    -- the same through a proxy: its branch to the first times out (408), the second answers
    local asked = heard()
    local send = relay(dport, "example.test", { t1 = 0.05 })
    t0 = sip.now()
    local r2, err2 = send()
    elapsed = sip.now() - t0
    assert.is_truthy(r2, err2)
    assert.equal("second", r2.reason)
    assert.same({ "OPTIONS udp", "MESSAGE udp" }, got2)
    assert.is_true(heard() > asked, "the proxy tried the first target")
    assert.is_true(elapsed >= 3 and elapsed < 8, "the proxy's timer F, then the second: " .. elapsed)
  end)

  it_dns("a name that does not resolve: nil, 'cannot resolve ...', 503", function()
    local dport = zone{ "--host-record=other.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local res, err, code = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@nowhere.test" }
    end)
    assert.is_nil(res)
    assert.equal("cannot resolve nowhere.test: no such domain", err)
    assert.equal(503, code)
  end)

  it("with a name server that never answers the loop serves on, and the request fails",
  function()
    local nsport, asked = silent()
    local a = H.agent{ dns = { servers = { "127.0.0.1:" .. nsport } }, t1 = 0.1 }
    a:on("OPTIONS", function(req) req:reply(200) end)
    local pinger = H.agent()
    local answered, sent, done = 0, 0, nil
    local t0 = sip.now()
    sip.spawn(function()
      done = { a:request{ method = "OPTIONS", uri = "sip:bob@unanswered.test" } }
      done.elapsed = sip.now() - t0
    end)
    sip.spawn(function()
      while not done do
        sent = sent + 1
        local r = pinger:request{ method = "OPTIONS", uri = a:contact(), timeout = 2 }
        if r and r.status == 200 then answered = answered + 1 end
        sip.sleep(0.1)
      end
    end)
    H.run_until(function() return done end, 40, "the request to an unanswered name failed")
    assert.is_nil(done[1])
    assert.equal(503, done[3], tostring(done[2]))
    assert.equal("cannot resolve unanswered.test: no answer from the name servers", done[2])
    assert.is_true(done.elapsed >= 7 and done.elapsed < 12, "bounded: " .. done.elapsed)
    assert.is_true(asked() >= 1, "the name server was asked")
    assert.is_true(answered >= 5 and answered >= sent - 1,
      ("OPTIONS answered meanwhile: %d/%d in %.1fs"):format(answered, sent, done.elapsed))
  end)

  it_dns("numeric hosts do not touch DNS", function()
    local _, bport, got = uas("bob")
    local dport, dns = zone{}
    local a = resolver_agent(dport)
    local res = H.run(function()
      return a:request{ method = "OPTIONS", uri = "sip:bob@127.0.0.1:" .. bport }
    end)
    assert.equal(200, res.status)
    assert.same({ "OPTIONS udp" }, got)
    assert.is_nil(dns.log():find("query[", 1, true))
  end)

  ;(have("dnsmasq") and have("redis-server") and it or pending)(
  "the Redis client connects to a name from DNS (A) and from the hosts file", function()
    local redis = require "luasip.redis"
    local port = H.free_port()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. H.shquote(dir)))
    defer(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    local server = H.background({ "redis-server", "--port", tostring(port), "--bind",
      "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir }, 60)
    defer(server.kill)
    local dport, dns = zone{ "--host-record=redis.example.test,127.0.0.1" }
    local a = resolver_agent(dport)
    local c
    H.run(function()
      local t0 = sip.now()
      repeat                         -- until the server listens (bounded)
        c = redis.connect{ host = "redis.example.test", port = port, timeout = 1, agent = a }
        if not c then sip.sleep(0.05) end
      until c or sip.now() - t0 > 10 or server.done()
    end, 15)
    assert.is_truthy(c, server.log())
    assert.matches("query[A] redis.example.test", dns.log(), 1, true)
    H.run(function()
      assert.equal("OK", c:call("SET", "k", "v"))
      c:close()
      local l = assert(redis.connect{ host = "localhost", port = port })
      assert.equal("v", l:call("GET", "k"))
      l:close()
      local r, err, code = redis.connect{ host = "nowhere.test", port = port, agent = a }
      assert.is_nil(r)
      assert.equal("cannot resolve nowhere.test: no such domain", err)
      assert.equal("connect", code)
    end)
    local r, err = redis.connect{ host = "redis.example.test", port = port, agent = a }
    assert.is_nil(r)
    assert.equal("cannot resolve redis.example.test outside a luasip coroutine", err)
  end)

  it("checks the dns option", function()
    local function bad(dns, msg)
      local ok, err = pcall(sip.agent, { listen = { "sip:127.0.0.1:0" }, dns = dns })
      assert.is_false(ok)
      assert.matches(msg, err, 1, true)
    end
    bad("x", "dns must be a table")
    bad({ servers = { "127.0.0.1" }, resolv_conf = "/etc/resolv.conf" }, "not both")
    bad({ port = 53 }, "port")
    bad({ servers = {} }, "dns.servers must be a non-empty list")
    bad({ servers = { "example.com" } }, "dns.servers[1] must be")
    bad({ servers = { "127.0.0.1:0" } }, "dns.servers[1] must be")
    bad({ servers = { "127.0.0.1:53", "[::1]:5353" } }, "must all use one port")
    bad({ resolv_conf = "/nonexistent/resolv.conf" }, "dns.resolv_conf /nonexistent")
    local a = H.agent{ dns = { servers = { "[::1]:5353", "127.0.0.1:5353" } } }
    local b = H.agent{ dns = { servers = { "::1", "127.0.0.1" } } }
    assert.is_false(b:closed())
    assert.is_false(a:closed())
  end)
end)
