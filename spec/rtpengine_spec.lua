local H = require "spec.helper"
local sip = H.sip
local testing = require "luasip.testing"
local rtpengine = require "luasip.rtpengine"

local have = os.execute("command -v rtpengine >/dev/null 2>&1")
have = have == true or have == 0

-- rtpengine (Debian's rtpengine-daemon) in userspace on loopback: no kernel table, ng on
-- a free port, RTP on a range of its own; ready when it answers a ping
local function start_rtpengine()
  local port = H.free_port()
  local base = 20000 + 200 * math.random(0, 40)
  local proc = H.background({ "rtpengine", "--config-file=none", "--foreground",
    "--log-stderr", "--table=-1", "--interface=127.0.0.1", "--listen-ng=127.0.0.1:" .. port,
    "--port-min=" .. base, "--port-max=" .. (base + 199), "--log-level=6",
    "--delete-delay=0", "--num-threads=2" }, 120)
  local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port }, timeout = 0.2, retries = 0,
    down_for = 0 }
  local ok = false
  local _, restore = H.capture_logs()          -- (refused until it listens)
  H.run_until(function()
    if proc.done() then return true end
    H.run(function() ok = rtp:ping() end)
    return ok
  end, 10, "rtpengine pong")
  restore()
  assert(ok, "rtpengine did not start:\n" .. proc.log())
  return proc, port, base
end

local OFFER = table.concat({ "v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1",
  "t=0 0", "m=audio 40000 RTP/AVP 0 101", "a=rtpmap:0 PCMU/8000",
  "a=rtpmap:101 telephone-event/8000", "a=sendrecv", "" }, "\r\n")
local ANSWER = OFFER:gsub("40000", "40100"):gsub("o=%- 1 1", "o=- 2 1")

-- a stand-in message for the SDP commands: what a request or response gives
local function msg(t)
  t.content_type = t.content_type or "application/sdp"
  return t
end

-- the port of the first m= line and the c= address of an SDP
local function media_of(sdp)
  local t = assert(sip.sdp.parse(sdp))
  local c = t.media[1].connection or t.connection
  return c.address, t.media[1].port
end

describe("luasip.rtpengine bencode", function()
  it("encodes dictionaries with sorted keys, lists, strings and integers", function()
    assert.equal("d7:command4:ping5:flagsl1:a2:bbe1:ni-3ee",
      rtpengine.encode{ command = "ping", flags = { "a", "bb" }, n = -3 })
    assert.equal("le", rtpengine.encode{})
  end)

  it("decodes what it encodes and refuses malformed replies without raising", function()
    local v = assert(rtpengine.decode("d6:result4:pong3:sdp5:v=0\r\n4:listli1ei2eee"))
    assert.same({ result = "pong", sdp = "v=0\r\n", list = { 1, 2 } }, v)
    for _, bad in ipairs{ "", "d", "d3:foo", "5:abc", "i12", "ixe", "d1:ai1ee junk",
      "di1ei2ee", "d1:a", "99999999999:x", ("l"):rep(100) .. ("e"):rep(100), "x" } do
      local r, err = rtpengine.decode(bad)
      assert.is_nil(r, bad)
      assert.is_string(err)
    end
  end)

  it("checks its options and raises outside a luasip coroutine", function()
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:9" } }
    assert.has_error(function() sip.rtpengine{ servers = { "nowhere" } } end,
      "luasip.rtpengine: bad server address 'nowhere' (an IP address and port expected)")
    assert.has_error(function() sip.rtpengine{ servers = { "127.0.0.1:9" }, bogus = 1 } end)
    assert.has_error(function() rtp:ping() end,
      "not in a luasip coroutine: use sip.spawn (luasip.rtpengine:command)")
  end)
end)

describe("luasip.rtpengine with rtpengine-daemon", function()
  local defer = H.defer_with(function(f) finally(f) end)
  after_each(function() H.close_agents() end)
  local it_ = have and it or pending

  it_("pings, offers, answers, queries and deletes a call", function()
    local proc, port, base = start_rtpengine()
    defer(proc.kill)
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. port } }
    H.run(function()
      local ok, server = rtp:ping()
      assert.is_true(ok)
      assert.equal("127.0.0.1:" .. port, server)
      local call = { call_id = "c1-" .. sip.random_hex(4), from_tag = "ft1", to_tag = "tt1" }
      local offer = msg{ call_id = call.call_id, from_tag = "ft1", body = OFFER }
      local sdp, err = rtp:offer(offer, "ICE=remove replace-origin RTP/AVP")
      assert.is_string(sdp, err)
      local addr, p = media_of(sdp)
      assert.equal("127.0.0.1", addr)
      assert.is_true(p >= base and p < base + 200, "port " .. p .. " not rtpengine's")
      local answer = msg{ call_id = call.call_id, from_tag = "ft1", to_tag = "tt1", body = ANSWER }
      local asdp = assert(rtp:answer(answer, { "replace-origin" }))
      local aaddr, ap = media_of(asdp)
      assert.equal("127.0.0.1", aaddr)
      assert.is_true(ap >= base and ap < base + 200 and ap ~= p)
      local q = assert(rtp:query(call))
      assert.equal("ok", q.result)
      assert.is_table(q.tags)
      assert.is_truthy(q.tags.ft1 and q.tags.tt1)
      local d = assert(rtp:delete(call))
      assert.equal("ok", d.result)
      local q2, qerr, qcode = rtp:query(call)
      assert.is_nil(q2)
      assert.equal("rtpengine", qcode)
      assert.matches("rtpengine: ", qerr)
    end)
  end)

  it_("fails over to the next server and skips one that is down", function()
    local proc, port = start_rtpengine()
    defer(proc.kill)
    local dead = H.free_port()                 -- nobody listens: ICMP refuses at once
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. dead, "127.0.0.1:" .. port },
      down_for = 30 }
    local logs, restore = H.capture_logs()
    defer(restore)
    H.run(function()
      local t0 = sip.now()
      local ok, server = rtp:ping()
      assert.is_true(ok)
      assert.equal("127.0.0.1:" .. port, server)
      assert.is_true(sip.now() - t0 < 0.5, "a refused server held the command")
      -- the dead one is now skipped: no second warning
      assert.is_true(rtp:ping())
    end)
    local warned = 0
    for _, l in ipairs(logs) do if l.msg:find(":" .. dead, 1, true) then warned = warned + 1 end end
    assert.equal(1, warned)
  end)

  it_("retransmits to a silent server, then says clearly that none answered", function()
    -- a socket that takes datagrams and never answers: a luasip agent's UDP port
    local silent = H.agent()
    local sport = silent:transports()[1].port
    local rtp = sip.rtpengine{ servers = { "127.0.0.1:" .. sport }, timeout = 0.1, retries = 2 }
    local logs, restore = H.capture_logs()
    defer(restore)
    H.run(function()
      local t0 = sip.now()
      local ok, err, code = rtp:ping()
      local took = sip.now() - t0
      assert.is_nil(ok)
      assert.equal("timeout", code)
      assert.equal("rtpengine unreachable (127.0.0.1:" .. sport .. ": no reply)", err)
      assert.is_true(took >= 0.29 and took < 1, "took " .. took)
    end)
    assert.is_truthy(logs[1] and logs[1].msg:find("ping failed: no reply", 1, true))
  end)
end)
