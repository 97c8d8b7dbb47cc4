local H = require "spec.helper"
local S = require "spec.peers.sipp"
local sip = H.sip

-- Events, publications and MESSAGE against sipp 3.6 as the external peer (issue 5): sipp
-- subscribes to a luasip presence notifier (immediate NOTIFY, state change, refresh in
-- the dialog, unsubscribe), lets a subscription expire, gets 489, 423 and 481; a luasip
-- subscriber (agent:subscribe) of a sipp notifier refreshes and unsubscribes; sipp
-- publishes (create, refresh, modify, remove, 412), alone and feeding a notifier; MESSAGE
-- both ways (200, 202).  Scenarios live in spec/peers/sipp_events/ and check what luasip
-- sends with <ereg check_it>; the spec reads sipp's message trace for CSeq numbers and
-- tags.  Each test starts its sipp and stops it in its one `finally`.
local it_sipp = S.available() and it or pending
H.defer_with(function(f) finally(f) end)             -- S.uac / S.uas stop their sipp when the test ends


local function scenario(name) return "../sipp_events/" .. name end

-- sipp against agent a / sipp answering / all sipp calls passed (spec/peers/sipp.lua)
local function sipp_uac(a, name, o) return S.uac(a, scenario(name), o) end
local function sipp_uas(name, o) return S.uas(scenario(name), o) end
local function passed(p, timeout) return S.passed(p, timeout or 10) end

-- the messages sipp received, from its message trace: list of { method = (requests) |
-- status = (responses), cseq = number, cseq_method =, from_tag =, to_tag = }
local function received(p)
  local list = {}
  for block in (p.messages() .. "\n-----"):gmatch("message received.-\n%-%-%-%-%-") do
    local msg = block:match("bytes :%s*\n(.*)$")
    local first = msg:match("^%s*([^\r\n]*)")
    local m = { method = first:match("^(%u+) "),
      status = tonumber(first:match("^SIP/2%.0 (%d+)")) }
    local n, meth = msg:match("\nCSeq:%s*(%d+)%s+(%u+)")
    m.cseq, m.cseq_method = tonumber(n), meth
    m.from_tag = msg:match("\nFrom:[^\r\n]-;tag=([^;>%s]+)")
    m.to_tag = msg:match("\nTo:[^\r\n]-;tag=([^;>%s]+)")
    list[#list + 1] = m
  end
  return list
end

-- the log lines at warn or error level
local function troubles(logs)
  local list = {}
  for _, l in ipairs(logs) do
    if l.level == "warn" or l.level == "error" then list[#list + 1] = l.msg end
  end
  return list
end

describe("sipp subscribes to a luasip notifier (RFC 6665)", function()
  local a, logs, restore
  before_each(function()
    a = H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)

  -- the notifier: presence, with min_expires lowered for the short subscriptions here
  local function serve(opts)
    opts = opts or {}
    opts.package = opts.package or "presence"
    if opts.min_expires == nil then opts.min_expires = 1 end
    local handler, notifier = sip.events(opts)
    a:on("SUBSCRIBE", handler)
    return notifier
  end

  it_sipp("subscribes, gets the immediate NOTIFY and a state change, refreshes and "
    .. "unsubscribes", function()
      local presence = serve()
      local p = sipp_uac(a, "uac_subscribe")
      -- the spec changes the state once sipp has answered the immediate NOTIFY
      local sub
      H.run_until(function()
        sub = presence:subscriptions()[1]
        return p.done() ~= nil or (sub and sub.notified >= 1)
      end, 5, "the first NOTIFY answered")
      assert(sub, "no subscription\n" .. p.report())
      assert.equal("active", sub.state)
      assert.matches("^sip:sipp@127%.0%.0%.1:%d+$", sub.subscriber)
      local open = sip.pidf.build{ entity = sub.resource, status = "open",
        note = "back from sipp" }
      assert.equal(1, H.run(function() return presence:notify(sub.resource, open) end))
      passed(p)                 -- sipp checked every header and body it got
      -- the dialog seen from sipp: one notifier tag in every 200 and as the From tag of
      -- every NOTIFY, and the NOTIFYs' CSeq numbers one after the other
      local oks, notifies = {}, {}
      for _, m in ipairs(received(p)) do
        if m.status == 200 then oks[#oks + 1] = m end
        if m.method == "NOTIFY" then notifies[#notifies + 1] = m end
      end
      assert.equal(3, #oks)
      assert.equal(4, #notifies)
      local tag = oks[1].to_tag
      assert.is_string(tag)
      for i, m in ipairs(oks) do
        assert.same({ i, "SUBSCRIBE", tag }, { m.cseq, m.cseq_method, m.to_tag })
      end
      for i, m in ipairs(notifies) do
        assert.same({ notifies[1].cseq + i - 1, tag, oks[1].from_tag },
          { m.cseq, m.from_tag, m.to_tag })
      end
      H.run_until(function() return sub.state == "terminated" end, 2, "subscription end")
      assert.equal(4, sub.notified)
      assert.same({}, presence:subscriptions())
      assert.same({}, troubles(logs))
    end)

  it_sipp("ends a subscription that is not refreshed: NOTIFY terminated;reason=timeout",
    function()
      local presence = serve()
      local p = sipp_uac(a, "uac_subscribe_expiry")
      local sub, t0
      H.run_until(function()
        sub = presence:subscriptions()[1]
        return p.done() ~= nil or sub ~= nil
      end, 5, "the subscription")
      assert(sub, "no subscription\n" .. p.report())
      t0 = sip.now()
      assert.equal(1, sub:expires())
      passed(p)                 -- sipp got active;expires=1, then the timeout NOTIFY
      H.run_until(function() return sub.state == "terminated" end, 2, "subscription end")
      local lasted = sip.now() - t0
      assert.is_true(lasted > 0.8 and lasted < 3, "ended after " .. lasted .. " s")
      assert.equal("timeout", sub.reason)
      assert.equal(2, sub.notified)
      assert.same({}, presence:subscriptions())
      assert.same({}, troubles(logs))
    end)

  it_sipp("answers 489 Bad Event with Allow-Events for a package it does not serve",
    function()
      local presence = serve()
      passed(sipp_uac(a, "uac_subscribe_489"))   -- sipp checked Allow-Events: presence
      assert.same({}, presence:subscriptions())
    end)

  it_sipp("answers 423 with Min-Expires below the minimum, then accepts the minimum",
    function()
      local presence = serve{ min_expires = 60 }
      local p = sipp_uac(a, "uac_subscribe_423")
      local seen
      H.run_until(function()
        local sub = presence:subscriptions()[1]
        if sub and not seen then seen = { expires = sub:expires(), state = sub.state } end
        return p.done() ~= nil
      end, 10, "sipp exit")
      passed(p)                 -- 423 Min-Expires: 60, then 200 Expires: 60, unsubscribe
      assert.same({ expires = 60, state = "active" }, seen)
      H.run_until(function() return #presence:subscriptions() == 0 end, 2, "no subscription")
      assert.same({}, troubles(logs))
    end)

  it_sipp("answers 481 to sipp's NOTIFY for a subscription it does not have", function()
    serve()
    local reached = false
    a:on("NOTIFY", function(req) reached = true; req:reply(200) end)
    passed(sipp_uac(a, "uac_notify_481"))
    assert.is_false(reached)      -- in-dialog NOTIFY for no dialog: the core's 481
  end)
end)

describe("a luasip subscriber (agent:subscribe) of a sipp notifier", function()
  local a, logs, restore
  before_each(function()
    a = H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)

  it_sipp("takes a NOTIFY that comes before the 2xx of its SUBSCRIBE (RFC 6665 4.1.2.4)",
    function()
      local p, uri = sipp_uas("uas_notify_first")
      local notes = {}
      local sub, err = H.run(function()
        return a:subscribe{ uri = uri, event = "presence", expires = 60,
          on_notify = function(req)
            local doc = req.body and sip.pidf.parse(req.body)
            notes[#notes + 1] = doc and doc.status or false
          end }
      end)
      assert(sub, tostring(err) .. "\n" .. p.messages())
      -- sipp sent its 200 only after the NOTIFY was answered 200 (not 481)
      assert.same({ "open" }, notes)
      assert.equal("active", sub.state)
      local ok, uerr = H.run(function() return sub:unsubscribe(3) end)
      assert(ok, uerr)
      passed(p)
    end)

  it_sipp("gets the NOTIFYs, refreshes before the 2 s granted run out and unsubscribes",
    function()
      local p, uri = sipp_uas("uas_notifier")
      local notes = {}
      local sub = H.run(function()
        return assert(a:subscribe{ uri = uri, event = "presence", expires = 60,
          on_notify = function(req)
            local doc = req.body and sip.pidf.parse(req.body)
            notes[#notes + 1] = { state = req:header("Subscription-State"),
              status = doc and doc.status or false }
          end })
      end)
      assert.equal(2, sub.expires)          -- what sipp granted
      -- the dialog's tags (its leg, and so its tags, go when it ends)
      local tags = { mine = sub.dialog.local_tag, sipp = sub.dialog.remote_tag }
      -- the refresh goes out by itself; sipp answers it with Expires: 60 and a NOTIFY
      H.run_until(function() return p.done() ~= nil or #notes >= 3 end, 5, "three NOTIFYs")
      assert.equal(60, sub.expires, p.report())
      local ok, err = H.run(function() return sub:unsubscribe(3) end)
      assert(ok, err)
      passed(p)                 -- sipp checked the refresh's To tag, Expires: 0
      -- initial, refresh, unsubscribe: CSeq numbers one after the other, one From tag,
      -- sipp's tag in the To of the two in the dialog
      local subs = {}
      for _, m in ipairs(received(p)) do
        if m.method == "SUBSCRIBE" then subs[#subs + 1] = m end
      end
      assert.equal(3, #subs)
      local first = subs[1]
      assert.is_nil(first.to_tag)
      assert.equal(tags.mine, first.from_tag)
      for i = 2, 3 do
        assert.same({ first.cseq + i - 1, tags.mine, tags.sipp },
          { subs[i].cseq, subs[i].from_tag, subs[i].to_tag })
      end
      assert.matches("SIPpTag01", tags.sipp)
      assert.equal("terminated", sub.state)
      assert.equal("timeout", sub.reason)
      assert.same({
        { state = "active;expires=2", status = "closed" },
        { state = "active;expires=2", status = "open" },
        { state = "active;expires=60", status = "open" },
        { state = "terminated;reason=timeout", status = false },
      }, notes)
      assert.equal(4, sub.notifications)
      assert.same({}, troubles(logs))
    end)
end)

describe("presence end to end: sipp publishes, a luasip subscriber is notified", function()
  local a, logs, restore
  before_each(function()
    a = H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)

  it_sipp("turns sipp's PUBLISHes into NOTIFYs, in order, ending with the neutral state",
    function()
      local on_subscribe, presence = sip.events{ package = "presence" }
      local on_publish = sip.publications{ package = "presence", notifier = presence }
      a:on("SUBSCRIBE", on_subscribe)
      a:on("PUBLISH", on_publish)
      local watcher = H.agent()
      local seen = {}
      local uri = "sip:alice@127.0.0.1:" .. a:transports()[1].port
      local sub = H.run(function()
        return assert(watcher:subscribe{ uri = uri, event = "presence", expires = 60,
          on_notify = function(req)
            local doc = sip.pidf.parse(req.body)
            local note = doc.tuples[1] and doc.tuples[1].note
            seen[#seen + 1] = doc.status .. (note and (" " .. note) or "")
          end })
      end)
      H.run_until(function() return #seen == 1 end, 2, "the immediate NOTIFY")
      local p = sipp_uac(a, "uac_publish")
      passed(p)
      -- NOTIFYs of one subscription coalesce (a newer state replaces one not yet sent):
      -- what arrives is the states in publication order, ending with the last one
      H.run_until(function() return seen[#seen] == "closed" and #seen > 1 end, 2,
        "the NOTIFY of the removal")
      local order = { "closed", "open sipp one", "closed sipp two", "closed" }
      local i = 0
      for _, s in ipairs(seen) do
        repeat i = i + 1 until order[i] == s or i > #order
        assert(i <= #order, "out of order: " .. table.concat(seen, ", "))
      end
      assert.equal("closed", seen[1])
      assert.is_true(#seen >= 3, table.concat(seen, ", "))
      assert(H.run(function() return sub:unsubscribe(3) end))
      assert.equal("terminated", sub.state)
      H.run_until(function() return #presence:subscriptions() == 0 end, 2, "no subscription")
      assert.same({}, troubles(logs))
    end)
end)

describe("sipp publishes to luasip (RFC 3903)", function()
  local a, logs, restore
  before_each(function()
    a = H.agent()
    logs, restore = H.capture_logs()
  end)
  after_each(function()
    restore()
    H.close_agents()
  end)

  it_sipp("creates, refreshes, modifies and removes a publication; 412 for unknown tags",
    function()
      local changes = {}
      local handler, pubs = sip.publications{ package = "presence",
        on_change = function(resource, body, ctype)
          changes[#changes + 1] = { resource = resource,
            status = body and sip.pidf.parse(body).status or false,
            note = body and sip.pidf.parse(body).tuples[1].note or false,
            content_type = ctype or false }
        end }
      a:on("PUBLISH", handler)
      local p = sipp_uac(a, "uac_publish")
      passed(p)                 -- sipp checked SIP-ETag, Expires and every 412
      local resource = changes[1] and changes[1].resource
      assert.is_string(resource)
      assert.matches("^sip:alice@127%.0%.0%.1", resource)
      -- the refresh changes nothing; create, modify and remove do
      assert.same({
        { resource = resource, status = "open", note = "sipp one",
          content_type = "application/pidf+xml" },
        { resource = resource, status = "closed", note = "sipp two",
          content_type = "application/pidf+xml" },
        { resource = resource, status = false, note = false, content_type = false },
      }, changes)
      assert.same({}, pubs:entries(resource))
      assert.same({}, troubles(logs))
    end)
end)

describe("MESSAGE between sipp and luasip (RFC 3428)", function()
  local a
  before_each(function() a = H.agent() end)
  after_each(function() H.close_agents() end)

  it_sipp("answers sipp's MESSAGEs (CPIM, JSON) 200 after its handler got them", function()
    local got = {}
    a:on("MESSAGE", function(req)
      got[#got + 1] = { body = req.body, content_type = req.content_type,
        from = req.from.uri, cseq = req.cseq }
      req:reply(200)
    end)
    passed(sipp_uac(a, "uac_message"))
    assert.equal(2, #got)
    assert.equal("message/cpim", got[1].content_type)
    assert.matches("Content%-Type: text/plain\r?\n\r?\nhello alice, from sipp", got[1].body)
    assert.matches("^sip:sipp@127%.0%.0%.1:%d+$", got[1].from)
    assert.equal("application/json", got[2].content_type)
    assert.matches('^{"text":"second, as JSON"}', got[2].body)
    assert.same({ 1, 2 }, { got[1].cseq, got[2].cseq })
  end)

  it_sipp("sends a MESSAGE to sipp and gets its 202 Accepted", function()
    local p, uri = sipp_uas("uas_message_202")
    local res, err = H.run(function()
      return a:request{ method = "MESSAGE", uri = uri, body = '{"text":"hello sipp"}',
        content_type = "application/json" }
    end)
    assert(res, err)
    assert.equal(202, res.status)
    assert.is_string(res.to_tag)
    passed(p)                   -- sipp checked the body and its Content-Type
  end)
end)
