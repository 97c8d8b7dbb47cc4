local H = require "spec.helper"
local sip = H.sip

local PIDF = "application/pidf+xml"

-- a SUBSCRIBE sent by hand (request{dialog = true}); the NOTIFYs of its dialog are
-- recorded in notes as { state =, event =, body =, content_type = } and answered 200
local function subscribe_raw(agent, uri, headers, notes, reply)
  local h = { Event = "presence", Expires = "60" }
  for k, v in pairs(headers or {}) do h[k] = v end
  for k, v in pairs(h) do if v == false then h[k] = nil end end
  return H.run(function()
    local res, err, code, r = agent:request{ method = "SUBSCRIBE", uri = uri, dialog = true,
      headers = h }
    if res and notes then
      res.dialog:on("NOTIFY", function(req)
        notes[#notes + 1] = { state = req:header("Subscription-State"),
          event = req:header("Event"), body = req.body, content_type = req.content_type }
        req:reply(reply or 200)
      end)
    end
    return res, err, code, r
  end)
end

describe("luasip.events (notifier)", function()
  local notifier_agent, watcher, handler, presence, resource
  before_each(function()
    notifier_agent, watcher = H.agent(), H.agent()
    resource = notifier_agent:uri("alice")
  end)
  after_each(function() H.close_agents() end)

  local function serve(opts)
    opts = opts or {}
    opts.package = opts.package or "presence"
    handler, presence = sip.events(opts)
    notifier_agent:on("SUBSCRIBE", handler)
    return presence
  end

  it("accepts a SUBSCRIBE with 200 and Expires, then sends an immediate NOTIFY", function()
    serve()
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, { Expires = "120" }, notes))
    assert.equal(200, res.status)
    assert.equal("120", res:header("Expires"))
    assert.truthy(res:header("Contact"))
    H.run_until(function() return #notes == 1 end)
    assert.equal("presence", notes[1].event)
    assert.matches("^active;expires=1[12]%d$", notes[1].state)
    -- nothing published yet: the neutral presence state (closed)
    assert.equal(PIDF, notes[1].content_type)
    assert.equal("closed", sip.pidf.parse(notes[1].body).status)
    local subs = presence:subscriptions(resource)
    assert.equal(1, #subs)
    assert.equal("active", subs[1].state)
    assert.equal("sip:luasip@127.0.0.1:" .. watcher:transports()[1].port, subs[1].subscriber)
  end)

  it("fans notify(resource, body) out to every subscriber of that resource only", function()
    serve()
    local a, b, other = {}, {}, {}
    assert(subscribe_raw(watcher, resource, nil, a))
    assert(subscribe_raw(H.agent(), resource, nil, b))
    assert(subscribe_raw(watcher, notifier_agent:uri("bob"), nil, other))
    H.run_until(function() return #a == 1 and #b == 1 and #other == 1 end)
    local open = sip.pidf.build{ entity = resource, status = "open", note = "here" }
    assert.equal(2, H.run(function() return presence:notify(resource, open) end))
    H.run_until(function() return #a == 2 and #b == 2 end)
    assert.equal(open, a[2].body)
    assert.equal(open, b[2].body)
    assert.equal(PIDF, b[2].content_type)
    H.settle(0.1)
    assert.equal(1, #other)
    -- a later subscriber gets the stored state at once
    local c = {}
    assert(subscribe_raw(watcher, resource, nil, c))
    H.run_until(function() return #c == 1 end)
    assert.equal(open, c[1].body)
    assert.equal(open, (presence:state(resource)))
  end)

  it("sends the state function's body, per subscriber", function()
    serve{ state = function(res, sub) return "state of " .. res .. " for " .. sub.subscriber,
      "text/plain" end }
    local notes = {}
    assert(subscribe_raw(watcher, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    assert.matches("^state of " .. resource:gsub("%p", "%%%0") .. " for sip:", notes[1].body)
    assert.equal("text/plain", notes[1].content_type)
    H.run(function() presence:notify(resource) end)
    H.run_until(function() return #notes == 2 end)
    assert.equal(notes[1].body, notes[2].body)
    H.run(function() presence:notify(resource, "explicit", "text/x-y") end)
    H.run_until(function() return #notes == 3 end)
    assert.equal("explicit", notes[3].body)
    assert.equal("text/x-y", notes[3].content_type)
  end)

  it("refreshes on a re-SUBSCRIBE in the dialog and answers it with a NOTIFY", function()
    serve{ min_expires = 1 }
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, { Expires = "2" }, notes))
    H.run_until(function() return #notes == 1 end)
    local r2 = H.run(function()
      return res.dialog:request("SUBSCRIBE", { headers = { Event = "presence", Expires = "300" } })
    end)
    assert.equal(200, r2.status)
    assert.equal("300", r2:header("Expires"))
    H.run_until(function() return #notes == 2 end)
    assert.matches("^active;expires=%d+$", notes[2].state)
    assert.is_true(tonumber(notes[2].state:match("expires=(%d+)")) > 290)
    -- past the first expiry: still there
    H.settle(2.2)
    assert.equal(2, #notes)
    assert.equal(1, #presence:subscriptions(resource))
    assert.is_true(presence:subscriptions(resource)[1]:expires() > 290)
  end)

  it("ends the subscription on a re-SUBSCRIBE with Expires: 0 (final NOTIFY terminated)", function()
    serve()
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    local r2 = H.run(function()
      return res.dialog:request("SUBSCRIBE", { headers = { Event = "presence", Expires = "0" } })
    end)
    assert.equal(200, r2.status)
    assert.equal("0", r2:header("Expires"))
    H.run_until(function() return #notes == 2 end)
    assert.equal("terminated;reason=timeout", notes[2].state)
    H.run_until(function() return #presence:subscriptions() == 0 end)
    -- the dialog is gone on the notifier: a new re-SUBSCRIBE gets 481
    local _, _, code = H.run(function()
      return res.dialog:request("SUBSCRIBE", { headers = { Event = "presence", Expires = "60" } })
    end)
    assert.equal(481, code)
  end)

  it("expires a subscription that is not refreshed: NOTIFY terminated;reason=timeout", function()
    serve{ min_expires = 0 }
    local notes = {}
    local t0 = sip.now()
    assert(subscribe_raw(watcher, resource, { Expires = "1" }, notes))
    H.run_until(function() return #notes == 2 end, 5, "the timeout NOTIFY")
    local took = sip.now() - t0
    assert.equal("active;expires=1", notes[1].state)
    assert.equal("terminated;reason=timeout", notes[2].state)
    assert.is_true(took >= 0.9 and took < 3, "expired after " .. took .. " s")
    H.run_until(function() return #presence:subscriptions() == 0 end)
  end)

  it("answers a fetch (Expires: 0) with one NOTIFY carrying the state, terminated", function()
    serve()
    H.run(function() presence:notify(resource, "<open/>", PIDF) end)
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, { Expires = "0" }, notes))
    assert.equal("0", res:header("Expires"))
    H.run_until(function() return #notes == 1 end)
    assert.equal("terminated;reason=timeout", notes[1].state)
    assert.equal("<open/>", notes[1].body)
    H.run_until(function() return #presence:subscriptions() == 0 end)
  end)

  it("answers 489 Bad Event with Allow-Events for other or missing packages", function()
    serve()
    local _, err, code, res = subscribe_raw(watcher, resource, { Event = "dialog" })
    assert.equal(489, code)
    assert.equal("489 Bad Event", err)
    assert.equal("presence", res:header("Allow-Events"))
    _, _, code = subscribe_raw(watcher, resource, { Event = false })
    assert.equal(489, code)
    assert.equal(0, #presence:subscriptions())
  end)

  it("lists every package of a fallback chain in Allow-Events", function()
    local on_presence = sip.events{ package = "presence" }
    local on_mwi, mwi = sip.events{ package = "message-summary", fallback = on_presence }
    notifier_agent:on("SUBSCRIBE", on_mwi)
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, { Event = "presence" }, notes))
    assert.equal(200, res.status)
    local _, _, code, r = subscribe_raw(watcher, resource, { Event = "dialog" })
    assert.equal(489, code)
    assert.equal("message-summary, presence", r:header("Allow-Events"))
    local m = {}
    assert(subscribe_raw(watcher, resource, { Event = "message-summary" }, m))
    H.run(function() mwi:notify(resource, "Messages-Waiting: yes\r\n") end)
    H.run_until(function() return #m == 2 and #notes == 1 end)
    assert.equal("message-summary", m[2].event)
    assert.equal("application/simple-message-summary", m[2].content_type)
  end)

  it("answers 423 with Min-Expires below the minimum, and caps at max_expires", function()
    serve{ min_expires = 30, max_expires = 600, default_expires = 100 }
    local _, err, code, res = subscribe_raw(watcher, resource, { Expires = "10" })
    assert.equal(423, code)
    assert.equal("423 Interval Too Brief", err)
    assert.equal("30", res:header("Min-Expires"))
    local ok = assert(subscribe_raw(watcher, resource, { Expires = "7200" }, {}))
    assert.equal("600", ok:header("Expires"))
    ok = assert(subscribe_raw(watcher, resource, { Expires = false }, {}))
    assert.equal("100", ok:header("Expires"))
  end)

  it("answers 406 when Accept leaves out the package's type", function()
    serve()
    local _, _, code, res = subscribe_raw(watcher, resource, { Accept = "text/plain" })
    assert.equal(406, code)
    assert.equal(PIDF, res:header("Accept"))
    assert(subscribe_raw(watcher, resource, { Accept = "application/*, text/plain" }, {}))
  end)

  it("refuses with 403, or holds a pending subscription until it is activated", function()
    local seen
    serve{ authorize = function(req, res, subscriber)
      seen = { res, subscriber, req.method }
      if req:header("X-Who") == "friend" then return true end
      if req:header("X-Who") == "stranger" then return "pending" end
      return false
    end }
    local _, _, code = subscribe_raw(watcher, resource, { ["X-Who"] = "enemy" })
    assert.equal(403, code)
    assert.equal(resource, seen[1])
    local notes = {}
    assert(subscribe_raw(watcher, resource, { ["X-Who"] = "stranger" }, notes))
    H.run_until(function() return #notes == 1 end)
    assert.matches("^pending;expires=%d+$", notes[1].state)
    assert.is_nil(notes[1].body)
    H.run(function() presence:notify(resource, "<x/>") end)
    H.settle(0.1)
    assert.equal(1, #notes)                  -- pending subscribers get no state
    local sub = presence:subscriptions(resource)[1]
    assert.equal("pending", sub.state)
    H.run(function() assert.is_true(sub:activate()) end)
    H.run_until(function() return #notes == 2 end)
    assert.matches("^active;", notes[2].state)
    assert.equal("<x/>", notes[2].body)
    H.run(function() sub:terminate("rejected") end)
    H.run_until(function() return #notes == 3 end)
    assert.equal("terminated;reason=rejected", notes[3].state)
    assert.is_nil(notes[3].body)
  end)

  it("removes a subscription whose NOTIFY is answered 481", function()
    serve()
    local notes = {}
    local res = assert(subscribe_raw(watcher, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    res.dialog:terminate()                 -- the watcher forgets it: the core answers 481
    H.run(function() presence:notify(resource, "<y/>") end)
    H.run_until(function() return #presence:subscriptions() == 0 end)
    assert.equal(1, #notes)
  end)

  it("answers 481 to a NOTIFY for a subscription that does not exist", function()
    local _, err, code = H.run(function()
      return watcher:request{ method = "NOTIFY", uri = notifier_agent:contact(), headers = {
        From = "<sip:a@127.0.0.1>;tag=n1", To = "<sip:b@127.0.0.1>;tag=unknown",
        Event = "presence", ["Subscription-State"] = "active;expires=60" } }
    end)
    assert.equal(481, code)
    assert.equal("481 Call/Transaction Does Not Exist", err)
  end)

  it("sends NOTIFYs of one subscription one at a time, the latest state last", function()
    serve()
    local notes = {}
    assert(subscribe_raw(watcher, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    H.run(function()
      for i = 1, 5 do presence:notify(resource, "<s" .. i .. "/>") end
    end)
    H.run_until(function() return notes[#notes].body == "<s5/>" end)
    H.settle(0.1)
    assert.is_true(#notes <= 3, #notes .. " NOTIFYs")   -- waiting states were replaced
    assert.equal("<s5/>", notes[#notes].body)
  end)

  it("ends every subscription with terminated;reason=noresource on close()", function()
    serve()
    local a, b = {}, {}
    assert(subscribe_raw(watcher, resource, nil, a))
    assert(subscribe_raw(watcher, notifier_agent:uri("bob"), nil, b))
    H.run_until(function() return #a == 1 and #b == 1 end)
    H.run(function() presence:close() end)
    H.run_until(function() return #a == 2 and #b == 2 end)
    assert.equal("terminated;reason=noresource", a[2].state)
    assert.is_nil(a[2].body)
    H.run_until(function() return #presence:subscriptions() == 0 end)
  end)

  it("keeps subscription records and the state in its store", function()
    local store = sip.store.memory{}
    serve{ store = store }
    assert(subscribe_raw(watcher, resource, nil, {}))
    H.run(function() presence:notify(resource, "<z/>") end)
    local keys = store:keys("events:presence:")
    assert.equal(2, #keys)
    local sub = presence:subscriptions()[1]
    local rec = store:get("events:presence:sub:" .. sub.id)
    assert.equal(resource, rec.resource)
    assert.equal("active", rec.state)
    assert.equal("<z/>", store:get("events:presence:state:" .. resource).body)
  end)

  it("raises on bad options", function()
    assert.has_error(function() sip.events() end, "luasip.events: options table expected")
    assert.has_error(function() sip.events{ package = "a b" } end,
      "luasip.events: package must be an event package name")
    assert.has_error(function() sip.events{ package = "presence", state = 1 } end,
      "luasip.events: state must be a function")
    assert.has_error(function() sip.events{ package = "x", min_expires = 10, max_expires = 5 } end,
      "luasip.events: min_expires is above max_expires")
  end)
end)

describe("agent:subscribe", function()
  local server, client, presence, resource
  before_each(function()
    server, client = H.agent(), H.agent()
    resource = server:uri("alice")
  end)
  after_each(function() H.close_agents() end)

  local function serve(opts)
    opts = opts or {}
    opts.package = opts.package or "presence"
    local handler
    handler, presence = sip.events(opts)
    server:on("SUBSCRIBE", handler)
  end

  local function watch(opts, notes)
    opts = opts or {}
    opts.uri = opts.uri or resource
    opts.event = opts.event or "presence"
    opts.on_notify = function(req, sub)
      notes[#notes + 1] = { state = sub.state, reason = sub.reason, body = req.body,
        header = req:header("Subscription-State") }
    end
    return H.run(function() return client:subscribe(opts) end)
  end

  it("subscribes, gets the immediate NOTIFY, state changes, refreshes and unsubscribes", function()
    serve()
    local notes = {}
    local sub = assert(watch({ expires = 600 }, notes))
    assert.equal(600, sub.expires)
    H.run_until(function() return #notes == 1 end)
    assert.equal("active", notes[1].state)
    assert.equal("active", sub.state)
    assert.equal("closed", sip.pidf.parse(notes[1].body).status)
    local open = sip.pidf.build{ entity = resource, status = "open" }
    H.run(function() presence:notify(resource, open) end)
    H.run_until(function() return #notes == 2 end)
    assert.equal(open, notes[2].body)
    assert.equal(open, sub.body)
    assert.equal(sip.pidf.content_type, sub.content_type)
    assert.is_true(H.run(function() return sub:refresh() end))
    H.run_until(function() return #notes == 3 end)
    assert.equal("active", notes[3].state)
    assert.is_true(H.run(function() return sub:unsubscribe() end))
    assert.equal(4, #notes)
    assert.equal("terminated", notes[4].state)
    assert.equal("timeout", notes[4].reason)
    assert.equal("terminated", sub.state)
    assert.equal("terminated", sub.dialog:state())
    H.run_until(function() return #presence:subscriptions() == 0 end)
    H.settle(0.2)
    assert.equal(4, #notes)                  -- no re-subscription after an unsubscribe
  end)

  it("refreshes by itself before the subscription expires", function()
    serve{ min_expires = 0 }
    local notes = {}
    local sub = assert(watch({ expires = 2 }, notes))
    H.run_until(function() return #notes >= 2 end, 4, "a refresh")
    H.settle(1.5)                             -- beyond the first 2 s
    assert.equal("active", sub.state)
    assert.equal(1, #presence:subscriptions())
    for _, n in ipairs(notes) do assert.equal("active", n.state) end
    H.run(function() sub:unsubscribe() end)
  end)

  it("retries with Min-Expires after a 423", function()
    serve{ min_expires = 300 }
    local notes = {}
    local sub = assert(watch({ expires = 60 }, notes))
    assert.equal(300, sub.expires)
    H.run_until(function() return #notes == 1 end)
    H.run(function() sub:unsubscribe() end)
  end)

  it("fails with the notifier's answer (489, 403)", function()
    serve()
    local sub, err, code, res = watch({ event = "dialog" }, {})
    assert.is_nil(sub)
    assert.equal("489 Bad Event", err)
    assert.equal(489, code)
    assert.equal("presence", res:header("Allow-Events"))
    server:on("SUBSCRIBE", function(req) req:reply(403) end)
    local _, _, code2 = watch({}, {})
    assert.equal(403, code2)
  end)

  it("re-subscribes when the notifier ends it with reason=deactivated", function()
    serve()
    local notes = {}
    local sub = assert(watch({}, notes))
    H.run_until(function() return #notes == 1 end)
    local first = sub.dialog
    H.run(function() presence:subscriptions()[1]:terminate("deactivated") end)
    H.run_until(function() return #notes == 3 end)
    assert.equal("terminated", notes[2].state)
    assert.equal("deactivated", notes[2].reason)
    assert.equal("active", notes[3].state)
    assert.equal("active", sub.state)
    assert.are_not.equal(first, sub.dialog)
    H.run_until(function() return #presence:subscriptions() == 1 end)
    H.run(function() sub:unsubscribe() end)
  end)

  it("waits retry-after before re-subscribing, and gives up on rejected", function()
    serve()
    local notes = {}
    local sub = assert(watch({}, notes))
    H.run_until(function() return #notes == 1 end)
    local t0 = sip.now()
    H.run(function() presence:subscriptions()[1]:terminate("probation", 1) end)
    H.run_until(function() return #notes == 3 end, 4, "the re-subscription")
    assert.equal("terminated;reason=probation;retry-after=1", notes[2].header)
    assert.is_true(sip.now() - t0 >= 0.9)
    H.run(function() presence:subscriptions()[1]:terminate("rejected") end)
    H.run_until(function() return #notes == 4 end)
    assert.equal("rejected", sub.reason)
    H.settle(0.3)
    assert.equal(4, #notes)
    assert.equal("terminated", sub.state)
    assert.equal(0, #presence:subscriptions())
  end)

  it("starts a new subscription when a refresh gets 481", function()
    serve()
    local notes = {}
    local sub = assert(watch({}, notes))
    H.run_until(function() return #notes == 1 end)
    -- the notifier forgets the dialog without a word
    local s = presence:subscriptions()[1]
    s.dialog:terminate()
    local ok, _, code = H.run(function() return sub:refresh() end)
    assert.is_nil(ok)
    assert.equal(481, code)
    H.run_until(function() return #notes == 2 and sub.state == "active" end)
    -- terminating the dialog ended the old subscription at once: only the new one is left
    assert.equal(1, #presence:subscriptions())
    H.run(function() sub:unsubscribe() end)
  end)

  it("answers 489 and 481 to NOTIFYs for another package or id in its dialog", function()
    local codes = {}
    server:on("SUBSCRIBE", function(req)
      local d = assert(req:dialog())
      req:reply(200, { headers = { Expires = "60" } })
      for _, ev in ipairs{ "dialog", "presence;id=9", "presence" } do
        local _, _, code = d:request("NOTIFY", { headers = { Event = ev,
          ["Subscription-State"] = "active;expires=60" } })
        codes[#codes + 1] = code or 200
      end
    end)
    local notes = {}
    local sub = assert(watch({}, notes))
    H.run_until(function() return #codes == 3 end)
    assert.same({ 489, 481, 200 }, codes)
    assert.equal(1, #notes)
    assert.equal("active", sub.state)
  end)

  it("raises on bad options and outside a coroutine", function()
    assert.has_error(function() client:subscribe{ event = "presence" } end,
      "luasip.agent:subscribe: uri must be a string")
    assert.has_error(function() client:subscribe{ uri = resource, event = "presence" } end,
      "not in a luasip coroutine: use sip.spawn (luasip.agent:subscribe)")
  end)
end)

describe("luasip.publications", function()
  local server, client, resource, pubs, presence, seen
  before_each(function()
    server, client = H.agent(), H.agent()
    resource = server:uri("alice")
    seen = {}
  end)
  after_each(function() H.close_agents() end)

  -- a PUBLISH handler (and a presence notifier fed by it); seen records what arrives
  local function serve(opts)
    opts = opts or {}
    local on_subscribe
    on_subscribe, presence = sip.events{ package = "presence" }
    server:on("SUBSCRIBE", on_subscribe)
    opts.package = opts.package or "presence"
    if opts.notifier == nil then opts.notifier = presence end
    local on_publish
    on_publish, pubs = sip.publications(opts)
    server:on("PUBLISH", function(req)
      seen[#seen + 1] = { if_match = req:header("SIP-If-Match"), expires = req.expires,
        body = req.body }
      return on_publish(req)
    end)
  end

  -- publish{ header = value | false, body = } -> response | nil, err, code, response
  local function publish(headers, body, ctype)
    local h = { Event = "presence", Expires = "60" }
    for k, v in pairs(headers or {}) do h[k] = v end
    for k, v in pairs(h) do if v == false then h[k] = nil end end
    return H.run(function()
      return client:request{ method = "PUBLISH", uri = resource, headers = h, body = body,
        content_type = body and (ctype or PIDF) or nil }
    end)
  end

  local function doc(status, note)
    return sip.pidf.build{ entity = resource, status = status, note = note }
  end

  it("creates, refreshes, modifies and removes a publication, notifying the subscribers", function()
    serve()
    local notes = {}
    assert(subscribe_raw(client, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    -- create
    local res = assert(publish(nil, doc("open", "in")))
    assert.equal(200, res.status)
    local tag1 = res:header("SIP-ETag")
    assert.matches("^%x+$", tag1)
    assert.equal("60", res:header("Expires"))
    H.run_until(function() return #notes == 2 end)
    assert.equal(doc("open", "in"), notes[2].body)
    assert.equal(doc("open", "in"), (pubs:state(resource)))
    -- refresh: new tag, same state, no NOTIFY
    res = assert(publish({ ["SIP-If-Match"] = tag1, Expires = "120" }))
    local tag2 = res:header("SIP-ETag")
    assert.are_not.equal(tag1, tag2)
    assert.equal("120", res:header("Expires"))
    assert.equal(120, pubs:entries(resource)[1].expires)
    H.settle(0.1)
    assert.equal(2, #notes)
    -- the old tag is gone
    local _, err, code = publish({ ["SIP-If-Match"] = tag1 })
    assert.equal(412, code)
    assert.equal("412 Conditional Request Failed", err)
    -- modify
    res = assert(publish({ ["SIP-If-Match"] = tag2 }, doc("open", "busy")))
    local tag3 = res:header("SIP-ETag")
    H.run_until(function() return #notes == 3 end)
    assert.equal(doc("open", "busy"), notes[3].body)
    assert.equal(1, #pubs:entries(resource))
    -- remove: subscribers are back to the neutral state
    res = assert(publish({ ["SIP-If-Match"] = tag3, Expires = "0" }))
    assert.equal("0", res:header("Expires"))
    assert.is_nil(res:header("SIP-ETag"))
    H.run_until(function() return #notes == 4 end)
    assert.equal("closed", sip.pidf.parse(notes[4].body).status)
    assert.same({}, pubs:entries(resource))
    assert.same({}, pubs:resources())
    _, _, code = publish({ ["SIP-If-Match"] = tag3, Expires = "0" })
    assert.equal(412, code)
  end)

  it("answers 412 for an unknown SIP-If-Match and for another resource's tag", function()
    serve()
    local _, _, code = publish({ ["SIP-If-Match"] = "nope" })
    assert.equal(412, code)
    local res = assert(publish(nil, doc("open")))
    local tag = res:header("SIP-ETag")
    local _, _, code2 = H.run(function()
      return client:request{ method = "PUBLISH", uri = server:uri("bob"), headers = {
        Event = "presence", ["SIP-If-Match"] = tag } }
    end)
    assert.equal(412, code2)
  end)

  it("answers 423 with Min-Expires, 489, 400 and 415 where RFC 3903 says", function()
    serve{ min_expires = 30, max_expires = 600 }
    local _, _, code, res = publish({ Expires = "5" }, doc("open"))
    assert.equal(423, code)
    assert.equal("30", res:header("Min-Expires"))
    res = assert(publish({ Expires = "9999" }, doc("open")))
    assert.equal("600", res:header("Expires"))
    _, _, code, res = publish({ Event = "dialog" }, doc("open"))
    assert.equal(489, code)
    assert.equal("presence", res:header("Allow-Events"))
    _, _, code = publish(nil, nil)                       -- initial without a body
    assert.equal(400, code)
    _, _, code, res = publish(nil, "hello", "text/plain")
    assert.equal(415, code)
    assert.equal(PIDF, res:header("Accept"))
  end)

  it("removes a publication when it expires, and notifies", function()
    serve{ min_expires = 0 }
    local notes = {}
    assert(subscribe_raw(client, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    local t0 = sip.now()
    assert(publish({ Expires = "1" }, doc("open")))
    H.run_until(function() return #notes == 2 end)
    assert.equal("open", sip.pidf.parse(notes[2].body).status)
    H.run_until(function() return #notes == 3 end, 4, "the expiry NOTIFY")
    assert.is_true(sip.now() - t0 >= 0.9)
    assert.equal("closed", sip.pidf.parse(notes[3].body).status)
    assert.same({}, pubs:entries(resource))
  end)

  it("composes several publications of one presentity into one document", function()
    local changes = {}
    serve{ on_change = function(res, body) changes[#changes + 1] = { res, body } end }
    assert(publish(nil, sip.pidf.build{ entity = resource, id = "phone", status = "closed" }))
    assert(publish(nil, sip.pidf.build{ entity = resource, id = "pc", status = "open",
      note = "at desk" }))
    local d = sip.pidf.parse((pubs:state(resource)))
    assert.equal(2, #d.tuples)
    assert.equal("open", d.status)
    assert.equal("at desk", d.tuples[2].note)
    assert.equal(2, #changes)
    assert.equal(resource, changes[2][1])
  end)

  it("authorizes publishers", function()
    serve{ authorize = function(req, res) return res == resource and req:header("X-Ok") end }
    local _, _, code = publish(nil, doc("open"))
    assert.equal(403, code)
    assert(publish({ ["X-Ok"] = "1" }, doc("open")))
  end)

  it("agent:publish creates, refreshes by itself, modifies and removes", function()
    serve{ min_expires = 0 }
    local pub = assert(H.run(function()
      return client:publish{ uri = resource, event = "presence", body = doc("open"),
        expires = 2 }
    end))
    assert.matches("^%x+$", pub.etag)
    assert.equal(2, pub.expires)
    local first = pub.etag
    H.run_until(function() return pub.etag ~= first end, 4, "a refresh")
    assert.equal(first, seen[2].if_match)
    assert.is_nil(seen[2].body)
    assert.are_not.equal(first, pub.etag)
    assert.is_true(H.run(function() return pub:modify(doc("open", "lunch")) end))
    assert.equal(doc("open", "lunch"), (pubs:state(resource)))
    assert.is_true(H.run(function() return pub:remove() end))
    assert.is_nil(pub.etag)
    assert.equal("0", tostring(seen[#seen].expires))
    assert.same({}, pubs:entries(resource))
    local n = #seen
    H.settle(1.5)
    assert.equal(n, #seen)                   -- no refresh after the removal
  end)

  it("agent:publish publishes afresh after a 412 and retries with Min-Expires", function()
    serve{ min_expires = 100 }
    local pub = assert(H.run(function()
      return client:publish{ uri = resource, event = "presence", body = doc("open"),
        expires = 10, refresh = false }
    end))
    assert.equal(100, pub.expires)
    -- the server loses the state
    pubs.store:del(pubs.prefix .. resource)
    assert.is_true(H.run(function() return pub:refresh() end))
    assert.equal(412, select(3, publish({ ["SIP-If-Match"] = "x", Expires = "5" })))
    local last = seen[#seen - 1]                 -- the fresh PUBLISH after the 412
    assert.is_nil(last.if_match)
    assert.equal(doc("open"), last.body)
    assert.equal(doc("open"), (pubs:state(resource)))
    H.run(function() pub:remove() end)
  end)

  it("raises on bad options", function()
    assert.has_error(function() sip.publications{} end,
      "luasip.publications: package must be an event package name")
    assert.has_error(function() sip.publications{ package = "presence", notifier = 1 } end,
      "luasip.publications: notifier must be a notifier from luasip.events")
    assert.has_error(function() H.run(function() client:publish{ uri = resource, event = "presence" } end) end)
  end)
end)

local have_redis = os.execute("command -v redis-server >/dev/null 2>&1")
have_redis = have_redis == true or have_redis == 0

-- the store interface with Redis (a redis-server on a Unix socket made by the spec)
describe("luasip.events and luasip.publications on a Redis store", function()
  local server, dir, sock
  setup(function()
    if not have_redis then return end
    dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    sock = dir .. "/redis.sock"
    server = H.background({ "redis-server", "--port", "0", "--unixsocket", sock,
      "--save", "", "--appendonly", "no", "--dir", dir }, 120)
    H.run_until(function()
      local ok = os.execute("test -S " .. sock)
      return ok == true or ok == 0 or server.done()
    end, 10, "redis socket")
  end)
  teardown(function()
    if server then server.kill() end
    if dir then os.execute("rm -rf " .. dir) end
  end)
  local stores = {}
  after_each(function()
    for _, st in ipairs(stores) do st:close() end
    stores = {}
    H.close_agents()
  end)
  local function redis_store(prefix)
    local st = assert(sip.store.redis{ path = sock, prefix = prefix })
    stores[#stores + 1] = st
    return st
  end

  local it_ = have_redis and it or pending

  it_("shares publications between two servers: one creates, the other refreshes and modifies", function()
    local a, b, client = H.agent(), H.agent(), H.agent()
    local pubs_a, pubs_b
    H.run(function()
      local h
      h, pubs_a = sip.publications{ package = "presence",
        store = redis_store("ev1:") }
      a:on("PUBLISH", h)
      h, pubs_b = sip.publications{ package = "presence",
        store = redis_store("ev1:") }
      b:on("PUBLISH", h)
    end)
    local resource = "sip:alice@example.test"
    local function publish(to, headers, body)
      local h = { Event = "presence", Expires = "60" }
      for k, v in pairs(headers) do h[k] = v end
      return H.run(function()
        return client:request{ method = "PUBLISH", uri = resource, proxy = to:contact(),
          headers = h, body = body, content_type = body and PIDF or nil }
      end)
    end
    local doc = sip.pidf.build{ entity = resource, status = "open" }
    local res = assert(publish(a, {}, doc))
    res = assert(publish(b, { ["SIP-If-Match"] = res:header("SIP-ETag") }))
    local doc2 = sip.pidf.build{ entity = resource, status = "closed" }
    res = assert(publish(a, { ["SIP-If-Match"] = res:header("SIP-ETag") }, doc2))
    assert.equal(doc2, (H.run(function() return pubs_b:state(resource) end)))
    assert.same({ resource }, H.run(function() return pubs_b:resources() end))
    assert(publish(b, { ["SIP-If-Match"] = res:header("SIP-ETag"), Expires = "0" }))
    assert.same({}, H.run(function() return pubs_a:entries(resource) end))
  end)

  it_("keeps subscription records and state where another process can read them", function()
    local server_agent, watcher = H.agent(), H.agent()
    local presence, other
    H.run(function()
      local h
      h, presence = sip.events{ package = "presence",
        store = redis_store("ev2:") }
      server_agent:on("SUBSCRIBE", h)
      other = redis_store("ev2:")
    end)
    local resource = server_agent:uri("alice")
    local notes = {}
    assert(subscribe_raw(watcher, resource, nil, notes))
    H.run_until(function() return #notes == 1 end)
    H.run(function() presence:notify(resource, "<r/>") end)
    H.run_until(function() return #notes == 2 end)
    local keys = H.run(function() return other:keys("events:presence:sub:") end)
    assert.equal(1, #keys)
    local rec = H.run(function() return other:get(keys[1]) end)
    assert.equal(resource, rec.resource)
    assert.equal("<r/>", H.run(function()
      return other:get("events:presence:state:" .. resource) end).body)
  end)
end)
