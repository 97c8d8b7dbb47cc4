local H = require "spec.helper"
local sip = H.sip
local jsonlog = require "luasip.jsonlog"

local defer = H.defer_with(function(f) finally(f) end)

-- A raw HTTP client in a bounded child: connects to 127.0.0.1:port, sends `data` (after
-- `hold` seconds, only its first `part` bytes; then waits), reads until the server closes.
-- Its log is "ELAPSED <s>\n" then the reply bytes.
local CLIENT = [[
import socket, sys, time
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=30)
data, part = bytes.fromhex(sys.argv[2]), int(sys.argv[3])
t = time.time()
s.sendall(data[:part] if part >= 0 else data)
out = b""
while True:
    try:
        b = s.recv(65536)
    except OSError:
        break
    if not b:
        break
    out += b
sys.stdout.write("ELAPSED %.3f\n" % (time.time() - t))
sys.stdout.flush()
sys.stdout.buffer.write(out)
]]

local function hex(s) return (s:gsub(".", function(c) return string.format("%02x", c:byte()) end)) end

local function http_start(port, data, part)
  local p = H.background({ "python3", "-c", CLIENT, tostring(port), hex(data),
    tostring(part or -1) }, 30)
  defer(p.kill)
  return p
end

-- http(port, data) -> elapsed, status, headers, body (the loop turns meanwhile)
local function http(port, data, part)
  local p = http_start(port, data, part)
  H.run_until(function() return p.done() ~= nil end, 20, "HTTP client")
  local log = p.log()
  local elapsed, rest = log:match("^ELAPSED ([%d%.]+)\n(.*)$")
  assert(elapsed, "client failed: " .. log)
  local status = tonumber(rest:match("^HTTP/1%.%d (%d%d%d)"))
  local head, body = rest:match("^(.-)\r\n\r\n(.*)$")
  return tonumber(elapsed), status, head, body
end

local function get(port, path)
  return http(port, "GET " .. (path or "/metrics") .. " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
end

-- samples of a page: ['name{labels}'] = value
local function samples(page)
  local t = {}
  for line in page:gmatch("[^\n]+") do
    if not line:match("^#") then
      local key, v = line:match("^(.*) (%S+)$")
      assert(key, "bad sample line: " .. line)
      t[key] = tonumber(v) or (v == "+Inf" and math.huge) or v
    end
  end
  return t
end

-- a strict reading of the text format 0.0.4: HELP and TYPE once per family, before
-- its samples; sample names of the family's type; label syntax; numeric values
local function check_format(page)
  assert.equal("\n", page:sub(-1), "the page ends with a newline")
  local types, seen_samples = {}, {}
  for line in page:gmatch("([^\n]*)\n") do
    local kw, name, rest = line:match("^# (%u+) ([%a_:][%w_:]*) (.*)$")
    if kw then
      if kw == "TYPE" then
        assert(not types[name], "TYPE twice for " .. name)
        assert(not seen_samples[name], "TYPE after samples of " .. name)
        assert(({ counter = 1, gauge = 1, histogram = 1, summary = 1, untyped = 1 })[rest], line)
        types[name] = rest
      else
        assert.equal("HELP", kw, line)
      end
    else
      local sname, labels, value = line:match("^([%a_:][%w_:]*)(%b{}) (%S+)$")
      if not sname then sname, value = line:match("^([%a_:][%w_:]*) (%S+)$") end
      assert(sname, "not a sample: " .. line)
      if labels then
        local inner, i = labels:sub(2, -2), 1
        while i <= #inner do          -- name="value" pairs, \\ \" \n escapes only
          local j = inner:match('^[%a_][%w_]*="()', i)
          assert(j, "bad labels: " .. line)
          i = j
          while inner:sub(i, i) ~= '"' do
            if inner:sub(i, i) == "\\" then
              assert(inner:sub(i + 1, i + 1):match('[\\"n]'), "bad escape: " .. line)
              i = i + 1
            end
            assert(i <= #inner, "unterminated label value: " .. line)
            i = i + 1
          end
          i = i + 1
          if i <= #inner then
            assert.equal(",", inner:sub(i, i), "bad labels: " .. line)
            i = i + 1
          end
        end
      end
      assert(tonumber(value) or value == "+Inf" or value == "NaN", "bad value: " .. line)
      local base = sname
      if not types[base] then base = sname:gsub("_bucket$", ""):gsub("_sum$", ""):gsub("_count$", "") end
      assert(types[base], "sample without TYPE: " .. line)
      seen_samples[base] = true
    end
  end
end

local function delta(before, after, key)
  return (after[key] or 0) - (before[key] or 0)
end

describe("luasip.metrics", function()
  local srv
  before_each(function()
    srv = assert(sip.metrics{ listen = "127.0.0.1:0", timeout = 0.5 })
  end)
  after_each(function()
    srv:close()
    H.close_agents()
  end)

  it("listens on an OS-chosen port, read back, and closes idempotently", function()
    assert.is_number(srv.port)
    assert.is_true(srv.port > 0)
    assert.equal("http://127.0.0.1:" .. srv.port .. "/metrics", srv.url)
    local m2 = assert(sip.metrics{ listen = "127.0.0.1:0", path = "/m" })
    local _, st = get(m2.port, "/m")
    assert.equal(200, st)
    assert.is_true(m2:close())
    assert.is_true(m2:close())
    assert.is_true(m2:closed())
    local ok, err, code = sip.metrics{ listen = "127.0.0.1:" .. srv.port }
    assert.is_nil(ok)
    assert.matches("cannot listen on 127.0.0.1:%d+: .*in use", err)
    assert.equal("listen", code)
  end)

  it("counts the OPTIONS a spec sent, received, answered and sent", function()
    local uas, uac = H.agent(), H.agent()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    local _, st0, _, page0 = get(srv.port)
    assert.equal(200, st0)
    local before = samples(page0)
    H.run(function()
      for _ = 1, 3 do
        local res = assert(uac:request{ method = "OPTIONS", uri = uas:contact() })
        assert.equal(200, res.status)
      end
    end)
    local _, st, head, page = get(srv.port)
    assert.equal(200, st)
    assert.matches("Content%-Type: text/plain; version=0%.0%.4", head)
    local after = samples(page)
    assert.equal(3, delta(before, after, 'luasip_requests_received_total{method="OPTIONS"}'))
    assert.equal(3, delta(before, after, 'luasip_responses_sent_total{method="OPTIONS",code="200"}'))
    assert.equal(3, delta(before, after, 'luasip_requests_sent_total{method="OPTIONS"}'))
    assert.equal(3, delta(before, after, "luasip_handler_duration_seconds_count"))
    assert.equal(0, delta(before, after, "luasip_handler_errors_total"))
    assert.is_true(after["luasip_agents"] >= 2)
    assert.is_true(after["luasip_loop_lag_seconds_count"] >= 1)
    check_format(page)
  end)

  it("counts the core's own answers, handler errors and a call's dialog", function()
    local _, restore = H.capture_logs()
    defer(restore)
    local uas, uac = H.agent(), H.agent()
    uas:on("MESSAGE", function() error("boom") end)
    local server
    -- (it waits before answering: an INVITE answered at once gets no 100 Trying)
    uas:on("INVITE", function(req) sip.sleep(0.01); server = assert(req:answer()) end)
    local before = samples(sip.metrics.text())
    local d = H.run(function()
      assert.equal(405, select(3, uac:request{ method = "SUBSCRIBE", uri = uas:contact(),
        headers = { Event = "presence" } }))
      assert.equal(500, select(3, uac:request{ method = "MESSAGE", uri = uas:contact(),
        body = "x", content_type = "text/plain" }))
      return assert(uac:invite{ uri = uas:uri("bob") })
    end)
    H.run_until(function() return server ~= nil end)
    local mid = samples(select(4, get(srv.port)))
    assert.equal(1, delta(before, mid, 'luasip_responses_sent_total{method="SUBSCRIBE",code="405"}'))
    assert.equal(1, delta(before, mid, 'luasip_responses_sent_total{method="MESSAGE",code="500"}'))
    assert.equal(1, delta(before, mid, "luasip_handler_errors_total"))
    assert.equal(1, delta(before, mid, 'luasip_responses_sent_total{method="INVITE",code="100"}'))
    assert.equal(1, delta(before, mid, 'luasip_responses_sent_total{method="INVITE",code="200"}'))
    assert.equal(1, delta(before, mid, 'luasip_requests_sent_total{method="ACK"}'))
    assert.equal(2, delta(before, mid, "luasip_dialogs"))   -- both ends of the call
    H.run(function() assert(d:bye()) end)
    local after = samples(sip.metrics.text())
    assert.equal(1, delta(mid, after, 'luasip_requests_received_total{method="BYE"}'))
    assert.equal(1, delta(mid, after, 'luasip_responses_sent_total{method="BYE",code="200"}'))
  end)

  it("serves the application's counters, gauges and histograms from the same registry", function()
    local c = sip.metrics.counter{ name = "app_routes_total", help = "Routed calls.",
      labels = { "route" } }
    local g = sip.metrics.gauge{ name = "app_queue", help = "Callers waiting." }
    local h = sip.metrics.histogram{ name = "app_wait_seconds", help = "Wait.\nin queue",
      buckets = { 1, 5 } }
    defer(function()
      for _, m in ipairs{ c, g, h } do sip.metrics.unregister(m) end
    end)
    c:inc(1, { route = "voicemail" })
    c:inc(2, { route = 'say "hi"\\\n' })
    c:labels{ route = "voicemail" }:inc()
    g:set(5); g:inc(); g:dec(2)
    h:observe(0.5); h:observe(3); h:observe(7)
    assert.equal(2, c:value{ route = "voicemail" })
    -- the same definition again (a reloaded module) is the same metric
    assert.equal(c, sip.metrics.counter{ name = "app_routes_total", labels = { "route" } })
    local _, _, _, page = get(srv.port)
    local s = samples(page)
    assert.equal(2, s['app_routes_total{route="voicemail"}'])
    assert.equal(2, s['app_routes_total{route="say \\"hi\\"\\\\\\n"}'])
    assert.equal(4, s.app_queue)
    assert.equal(1, s['app_wait_seconds_bucket{le="1"}'])
    assert.equal(2, s['app_wait_seconds_bucket{le="5"}'])
    assert.equal(3, s['app_wait_seconds_bucket{le="+Inf"}'])
    assert.equal(10.5, s.app_wait_seconds_sum)
    assert.matches("# HELP app_wait_seconds Wait.\\nin queue\n", page, 1, true)
    check_format(page)
  end)

  it("rejects bad definitions and uses with errors naming the function", function()
    assert.has_error(function() sip.metrics.counter{ name = "9bad" } end,
      "luasip.metrics.counter: name must match [a-zA-Z_:][a-zA-Z0-9_:]*")
    assert.has_error(function() sip.metrics.gauge{ name = "luasip_x" } end,
      "luasip.metrics.gauge: names luasip_* and process_* are the library's")
    assert.has_error(function() sip.metrics.counter{ name = "a_total", labels = { "b-c" } } end)
    assert.has_error(function() sip.metrics.histogram{ name = "a_h", labels = { "le" } } end,
      "luasip.metrics.histogram: label le is reserved")
    assert.has_error(function() sip.metrics.histogram{ name = "a_h", buckets = { 2, 1 } } end,
      "luasip.metrics.histogram: buckets must be increasing numbers")
    assert.has_error(function() sip.metrics.counter{ name = "a_total", colour = 1 } end,
      "luasip.metrics.counter: unknown option 'colour'")
    local c = sip.metrics.counter{ name = "spec_err_total", labels = { "m" } }
    defer(function() sip.metrics.unregister(c) end)
    assert.has_error(function() c:inc(-1, { m = "x" }) end,
      "luasip.metrics.counter:inc: a counter only goes up (value < 0)")
    assert.has_error(function() c:inc(1) end,
      "luasip.metrics.counter:inc: labels must be a table (m)")
    assert.has_error(function() c:inc(1, { m = "x", n = "y" }) end,
      "luasip.metrics.counter:inc: spec_err_total has no label n")
    assert.has_error(function() c:set(1, { m = "x" }) end,
      "luasip.metrics.gauge:set: not available on a counter")
    assert.has_error(function() sip.metrics.gauge{ name = "spec_err_total" } end,
      "luasip.metrics.gauge: spec_err_total is already registered as a counter with other labels")
    assert.has_error(function() sip.metrics{ listen = "localhost:80" } end)
    assert.has_error(function() sip.metrics{ listen = "127.0.0.1:1", extra = 1 } end,
      "luasip.metrics: unknown option 'extra'")
  end)

  local promtool = os.execute("command -v promtool >/dev/null 2>&1")
  promtool = promtool == true or promtool == 0
  ;(promtool and it or pending)("is accepted by promtool check metrics", function()
    local c = sip.metrics.counter{ name = "app_checked_total", help = "Checked.", labels = { "x" } }
    defer(function() sip.metrics.unregister(c) end)
    c:inc(1, { x = "y" })
    local uas, uac = H.agent(), H.agent()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    H.run(function() assert(uac:request{ method = "OPTIONS", uri = uas:contact() }) end)
    local _, _, _, page = get(srv.port)
    local file = os.tmpname()
    defer(function() os.remove(file) end)
    local f = assert(io.open(file, "w"))
    f:write(page)
    f:close()
    local p = io.popen("timeout 20 promtool check metrics < " .. file .. " 2>&1; echo rc=$?")
    local out = p:read("*a")
    p:close()
    assert.matches("rc=0\n$", out, nil, false)
  end)

  it("answers 404, 405 and 400 to other requests, and HEAD without a body", function()
    local _, st, _, body = get(srv.port, "/other")
    assert.equal(404, st)
    assert.equal("Not Found\n", body)
    _, st = http(srv.port, "POST /metrics HTTP/1.0\r\n\r\n")
    assert.equal(405, st)
    _, st = http(srv.port, "\1\2garbage\r\n\r\n")
    assert.equal(400, st)
    _, st = http(srv.port, "GET /metrics HTTP/1.1\r\nX: " .. ("a"):rep(5000) .. "\r\n\r\n")
    assert.equal(400, st)
    local head
    _, st, head, body = http(srv.port, "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n")
    assert.equal(200, st)
    assert.matches("Content%-Length: %d+", head)
    assert.equal("", body)
  end)

  it("closes slow and silent clients after the timeout while SIP goes on", function()
    local uas, uac = H.agent(), H.agent()
    uas:on("OPTIONS", function(req) req:reply(200) end)
    local slow = {}
    for i = 1, 3 do slow[i] = http_start(srv.port, "GET /metrics HTTP/1.1\r\nHost: x", 10) end
    local silent = http_start(srv.port, "", 0)
    -- SIP is answered while they hang on
    local t0 = sip.now()
    H.run(function()
      for _ = 1, 5 do assert.equal(200, assert(uac:request{ method = "OPTIONS", uri = uas:contact() }).status) end
    end)
    assert.is_true(sip.now() - t0 < (os.getenv("LUASIP_VALGRIND") and 10 or 1))
    for _, p in ipairs{ slow[1], slow[2], slow[3], silent } do
      H.run_until(function() return p.done() ~= nil end, 10, "server closing a slow client")
      local elapsed, rest = p.log():match("^ELAPSED ([%d%.]+)\n(.*)$")
      assert.equal("", rest)                  -- closed without a reply
      assert.is_true(tonumber(elapsed) < 5, "closed after " .. elapsed .. " s")
    end
    local _, st = get(srv.port)                -- and the server still serves
    assert.equal(200, st)
  end)
end)

describe("examples/pbx.lua with LUASIP_METRICS", function()
  after_each(function() H.close_agents() end)

  it("serves its page at the address given", function()
    local port, mport = H.free_port(), H.free_port()
    local pbx = H.background({ "env", "LUA_PATH=lua/?.lua;lua/?/init.lua;;",
      "LUA_CPATH=build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;",
      "LUASIP_METRICS=127.0.0.1:" .. mport,
      H.interpreter(), "examples/pbx.lua", "127.0.0.1:" .. port }, 60)
    defer(pbx.kill)
    H.run_until(function() return pbx.log():find("listening on") or pbx.done() end, 20,
      "pbx listening")
    assert.is_nil(pbx.done(), pbx.log())
    local uac = H.agent()
    H.run(function()
      for _ = 1, 2 do
        assert.equal(200, assert(uac:request{ method = "OPTIONS", uri = "sip:127.0.0.1:" .. port }).status)
      end
    end)
    local _, st, _, page = get(mport)
    assert.equal(200, st)
    local s = samples(page)
    assert.equal(2, s['luasip_requests_received_total{method="OPTIONS"}'])
    assert.equal(2, s['luasip_responses_sent_total{method="OPTIONS",code="200"}'])
    assert.equal(0, s.luasip_registrations)
  end)
end)

describe("luasip logs", function()
  after_each(function() H.close_agents() end)

  it("gives the Call-ID of the call with the lines about it (Lua and C lines)", function()
    local got = {}
    local old = sip.set_logger(function(level, msg, call_id)
      got[#got + 1] = { level = level, msg = msg, call_id = call_id }
    end)
    local uas, uac = H.agent(), H.agent()
    local ids = {}
    uas:on("MESSAGE", function(req) ids.msg = req.call_id; error("boom") end)
    uas:on("OPTIONS", function(req) ids.opt = req.call_id end)  -- no answer: 500, a warning
    H.run(function()
      uac:request{ method = "MESSAGE", uri = uas:contact(), body = "x", content_type = "text/plain" }
      uac:request{ method = "OPTIONS", uri = uas:contact() }
    end)
    sip.set_logger(old)
    local by = {}
    for _, l in ipairs(got) do
      if l.msg:match("handler failed") then by.failed = l end
      if l.msg:match("ended without a final response") then by.noanswer = l end
    end
    assert.is_string(ids.msg)
    assert.equal(ids.msg, by.failed.call_id)
    assert.equal(ids.opt, by.noanswer.call_id)
  end)

  it("writes JSON lines with ts, level, msg and call_id, escaped", function()
    local line = jsonlog.line("warn", 'say "hi"\\\n\tnow \1 caf\195\169 \255', "a\"b@x")
    local p = io.popen("timeout 10 python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); "
      .. "print(sorted(d)); print(repr(d[\"msg\"])); print(d[\"call_id\"]); print(d[\"level\"])' <<'EOF'\n"
      .. line .. "\nEOF\n")
    local out = p:read("*a")
    p:close()
    assert.equal("['call_id', 'level', 'msg', 'ts']\n'say \"hi\"\\\\\\n\\tnow \\x01 café ÿ'\na\"b@x\nwarn\n", out)
    assert.matches('^{"ts":"%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ"', line)
    assert.not_matches("call_id", jsonlog.line("info", "x"))
    -- set_logger("json") installs it; set_logger("text") the default
    local prev = sip.set_logger("json")
    assert.equal(jsonlog.logger, sip.set_logger("text"))
    sip.set_logger(prev)
    assert.has_error(function() sip.set_logger("xml") end,
      'luasip.set_logger: logger must be a function, "text" or "json"')
  end)
end)
