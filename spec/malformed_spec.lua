local H = require "spec.helper"
local sip = require "luasip"

-- What sofia's parser lets through and RFC 3261 rejects, sent as raw datagrams by
-- spec/peers/rawsip.py (issue: fixes for what a fuzzing run found in examples/uas.lua).
describe("luasip.agent malformed requests", function()
  local uas, handled
  before_each(function()
    uas = H.agent()
    handled = 0
    uas:on("OPTIONS", function(req) handled = handled + 1; req:reply(200) end)
    uas:on("REGISTER", function(req)
      handled = handled + 1
      req:reply(200, nil, { headers = { Contact = req:header("Contact") } })
    end)
  end)
  after_each(function() H.close_agents() end)

  -- the status line of the first answer to the bytes msg (over proto, default UDP),
  -- or "NONE" when none came within timeout seconds (default 3)
  local function send_raw(msg, proto, timeout, agent)
    return H.send_raw((agent or uas):transports()[1].port, msg, proto, timeout)
  end

  -- a request built from the parts given (spec/helper.lua)
  local build = H.raw_request
  -- the status line of the answer to a request built from the parts given, or "NONE"
  local function send(...) return send_raw(build(...)) end

  it("answers 400 to a Request-URI with an ESC byte, without running the handler", function()
    assert.equal("SIP/2.0 400 Bad Request-URI", send("OPTIONS", "sip:\27[31mred@127.0.0.1"))
    assert.equal(0, handled)
  end)

  it("answers 400 to a Request-URI with an 8-bit byte", function()
    assert.equal("SIP/2.0 400 Bad Request-URI", send("OPTIONS", "sip:r\233d@127.0.0.1"))
    assert.equal(0, handled)
  end)

  it("answers 400 when Content-Length is larger than the body of a datagram", function()
    assert.equal("SIP/2.0 400 Content-Length Larger Than Body",
      send("OPTIONS", "sip:x@127.0.0.1", nil, "10"))
    assert.equal(0, handled)
    -- the same request with its body is served
    assert.equal("SIP/2.0 200 OK", send("OPTIONS", "sip:x@127.0.0.1",
      "Content-Type: text/plain\r\n", "10", "0123456789"))
    assert.equal(1, handled)
  end)

  it("answers 400 to a TCP message cut short by the end of the stream", function()
    local cut = build("OPTIONS", "sip:x@127.0.0.1;transport=tcp",
      "Content-Type: text/plain\r\n", "10", "abc"):gsub("SIP/2.0/UDP", "SIP/2.0/TCP")
    assert.equal("SIP/2.0 400 Bad Request", send_raw(cut, "tcp"))
    -- the headers cut short: nothing to answer, and nothing runs
    assert.equal("NONE", send_raw(cut:sub(1, 60), "tcp", 1))
    assert.equal(0, handled)
  end)

  it("answers 400 to a Max-Forwards that is not a number (found by scripts/fuzz-sip.py)", function()
    for _, v in ipairs{ "abc", "7\2240", "" } do
      local msg = build("OPTIONS", "sip:x@127.0.0.1"):gsub("Max%-Forwards: 70",
        "Max-Forwards: " .. v)
      assert.equal("SIP/2.0 400 Bad Max-Forwards", send_raw(msg), v)
    end
    assert.equal(0, handled)
  end)

  it("unfolds a folded header value read by req:header, so a reply can echo it", function()
    assert.equal("SIP/2.0 200 OK", send("REGISTER", "sip:127.0.0.1",
      'Contact: "A\r\n B" <sip:a@127.0.0.1:5999>\r\n ;expires=60\r\n'))
    assert.equal(1, handled)
  end)

  it("raises naming the header when a reply value holds CR or LF", function()
    local err
    uas:on("OPTIONS", function(req)
      local ok, e = pcall(req.reply, req, 200, nil, { headers = { ["X-Bad"] = "a\r\nInjected: 1" } })
      err = not ok and e
      req:reply(200)
    end)
    assert.equal("SIP/2.0 200 OK", send("OPTIONS", "sip:x@127.0.0.1"))
    assert.matches("header 'X-Bad': the value must not contain CR or LF", err, 1, true)
  end)

  it("writes control bytes in log lines as \\xNN", function()
    local logs, restore = H.capture_logs()
    sip.log("warn", "red \27[31m\r\nline\ttab")
    restore()
    assert.equal("red \\x1b[31m\\x0d\nline\ttab", logs[#logs].msg)
  end)

  -- sofia's parser takes time in the square of the header lines (issue 15 item 3): the
  -- size limit bounds it
  it("drops a datagram larger than max_message_size, and serves the next at once", function()
    local big = build("OPTIONS", "sip:x@127.0.0.1", ("0\r"):rep(6000))
    assert.is_true(#big > 8192)
    assert.equal("NONE", send_raw(big, "udp", 1))
    assert.equal(0, handled)
    assert.equal("SIP/2.0 200 OK", send("OPTIONS", "sip:x@127.0.0.1"))
    assert.equal(1, handled)
  end)

  it("answers 413 to a TCP message larger than max_message_size", function()
    local body = ("x"):rep(9000)
    assert.equal("SIP/2.0 413 Request Entity Too Large", send_raw(build("OPTIONS",
      "sip:x@127.0.0.1;transport=tcp", "Content-Type: text/plain\r\n", tostring(#body), body)
      :gsub("SIP/2.0/UDP", "SIP/2.0/TCP"), "tcp"))
    assert.equal(0, handled)
  end)

  it("takes messages up to max_message_size, raised by the option", function()
    local extra = ("X-A: 0\r\n"):rep(2000)
    local big = build("OPTIONS", "sip:x@127.0.0.1", extra)
    assert.is_true(#big > 8192 and #big < 32768)
    local roomy = H.agent{ max_message_size = 32768 }
    roomy:on("OPTIONS", function(req) handled = handled + 1; req:reply(200) end)
    assert.equal("SIP/2.0 200 OK", send_raw(big, "udp", 3, roomy))
    assert.equal(1, handled)
    -- within the default limit, many header lines are still served
    assert.equal("SIP/2.0 200 OK", send("OPTIONS", "sip:x@127.0.0.1", ("X-A: 0\r\n"):rep(500)))
    assert.equal(2, handled)
  end)

  it("rejects a max_message_size that is not a size, naming the function", function()
    for _, v in ipairs{ 100, 2^30, 1500.5, "8k" } do
      local ok, err = pcall(sip.agent, { listen = "sip:127.0.0.1:0", max_message_size = v })
      assert.is_false(ok)
      assert.matches("luasip.agent: max_message_size must be", err, 1, true)
    end
  end)

  -- issue 15 item 6: an SDP offer whose m= line is broken over two lines is refused
  -- (400 from sip.sdp.answer, 488 from req:answer's media), never answered with CR/LF
  -- inside a line or a 500
  for _, case in ipairs{
    { "folded", "m=audio 4000 RTP/AVP\r\n 0 8\r\n" },
    { "split", "m=audio 4000\r\nRTP/AVP 0 8\r\n" },
    { "LF inside", "m=audio 4000 RTP/AVP 0\n8\r\n" },
  } do
    it("refuses an SDP offer with a line break inside m= (" .. case[1] .. ")", function()
      local body = "v=0\r\no=a 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\n" ..
        "t=0 0\r\n" .. case[2]
      local how = {}
      uas:on("INVITE", function(req)
        local answer, err, code = sip.sdp.answer(req.body, { address = "127.0.0.1",
          media = { audio = { port = 40000, codecs = { "PCMU/8000" } } } })
        how.answer, how.err = answer, err
        req:reply(code or 500)
      end)
      assert.equal("SIP/2.0 400 Bad Request", send("INVITE", "sip:x@127.0.0.1",
        "Contact: <sip:a@127.0.0.1:9>\r\nContent-Type: application/sdp\r\n",
        tostring(#body), body))
      assert.is_nil(how.answer)
      assert.is_string(how.err)
    end)
  end
end)
