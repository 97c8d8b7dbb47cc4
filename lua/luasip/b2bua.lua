-- luasip.b2bua: a back-to-back user agent made of two dialogs (RFC 3261 6, 7092).
--   local a, b = sip.b2bua(req, "sip:bob@127.0.0.1:5070", { timeout = 30 })
-- Leg A is the incoming INVITE (answered with req:answer), leg B an agent:invite of our
-- own.  Until B's final response the call is driven here (18x relayed, CANCEL passed on,
-- failures passed back); afterwards dialog handlers on both legs relay BYE and the
-- in-dialog requests, each in its own coroutine.  opts.media = "relay" anchors the media:
-- each leg has its own RTP stream (luasip.media), bridged in C.
local dispatcher = require "luasip.dispatcher"
local dialog = require "luasip.dialog"
local client_tx = require "luasip.client_tx"
local session = require "luasip.call"

local M = {}

local PRACK_WAIT = 32               -- 64*T1: how long a relayed reliable 18x waits

-- response headers that mean something to the other side (RFC 3261 20, RFC 4028)
local PASSED = { "Retry-After", "Warning", "Reason", "Allow", "Accept", "Accept-Encoding",
  "Accept-Language", "Unsupported", "Min-SE", "Error-Info" }

local function fail(fname, msg) error(fname .. ": " .. msg, 3) end

-- targets: a URI, a list of URIs or of { uri =, path = {...} | route = } (location:lookup)
local function normalize(targets)
  if type(targets) == "string" then targets = { targets } end
  if type(targets) ~= "table" or #targets == 0 then
    fail("luasip.b2bua", "targets must be a URI or a non-empty list")
  end
  local list = {}
  for i, t in ipairs(targets) do
    if type(t) == "string" then
      list[i] = { uri = t }
    elseif type(t) == "table" and type(t.uri) == "string" then
      local route = t.route
      if type(t.path) == "table" and #t.path > 0 then route = table.concat(t.path, ", ") end
      list[i] = { uri = t.uri, route = route }
    else
      fail("luasip.b2bua", "target " .. i .. " must be a URI or { uri = }")
    end
  end
  return list
end

local OPTION_TYPES = { from = "string", to = "string", headers = "table", auth = "table",
  on_request = "function", on_answer = "function", relay = "table", agent = "userdata",
  media = "string" }

-- methods the dialogs and the core handle themselves
local NOT_RELAYED = { BYE = true, ACK = true, CANCEL = true, PRACK = true }

local function check_options(opts)
  if opts == nil then return {} end
  if type(opts) ~= "table" then fail("luasip.b2bua", "options must be a table") end
  for k, t in pairs(OPTION_TYPES) do
    if opts[k] ~= nil and type(opts[k]) ~= t then fail("luasip.b2bua", k .. " must be a " .. t) end
  end
  if opts.timeout ~= nil and (type(opts.timeout) ~= "number" or opts.timeout <= 0) then
    fail("luasip.b2bua", "timeout must be a positive number")
  end
  if opts.media ~= nil and opts.media ~= "relay" then
    fail("luasip.b2bua", 'media must be "relay"')
  end
  for i, m in ipairs(opts.relay or {}) do
    if type(m) ~= "string" or NOT_RELAYED[m:upper()] then
      fail("luasip.b2bua", "relay[" .. i .. "] must be a method other than BYE, ACK, CANCEL, PRACK")
    end
  end
  return opts
end

local function has_tag(msg, tag)
  for _, name in ipairs{ "Supported", "Require" } do
    for _, v in ipairs(msg:headers(name)) do
      for t in v:gmatch("[^,%s]+") do
        if t:lower() == tag then return true end
      end
    end
  end
  return false
end

-- the message's body and its full Content-Type (msg.content_type drops parameters such as
-- a multipart boundary)
local function body_of(msg)
  if not msg.body or msg.body == "" then return nil, nil end
  return msg.body, msg:header("Content-Type") or msg.content_type
end

local function copy(t)
  local c = {}
  for k, v in pairs(t or {}) do c[k] = v end
  return c
end

local function quote(display)
  return '"' .. display:gsub('[\\"]', "\\%0") .. '"'
end

-- headers[name] = every value of header name in res, if it has any (res:header first:
-- most responses carry none of PASSED, and headers() makes a list each time)
local function pass(res, headers, name)
  if res:header(name) then
    local v = res:headers(name)
    if #v > 0 then headers[name] = v end
  end
end

-- what goes back for response res (from leg `leg`): { status, reason, headers, body,
-- content_type }, after opts.on_answer(res, o, leg) -> nil (o as edited) | table | body
-- string | false (no body)
local function shape(opts, res, leg)
  local o = { status = res.status, reason = res.reason, headers = {} }
  o.body, o.content_type = body_of(res)
  for _, name in ipairs(PASSED) do pass(res, o.headers, name) end
  if o.status >= 300 and o.status < 400 then pass(res, o.headers, "Contact") end
  if opts.on_answer then
    local r = opts.on_answer(res, o, leg)
    if type(r) == "table" then
      o = r
    elseif type(r) == "string" then
      o.body = r
    elseif r == false then
      o.body, o.content_type = nil, nil
    end
  end
  if o.body and not o.content_type then o.content_type = "application/sdp" end
  return o
end

local function reply(req, o, extra)
  local ro = { headers = o.headers, body = o.body, content_type = o.content_type }
  for k, v in pairs(extra or {}) do ro[k] = v end
  if o.reason then return req:reply(o.status, o.reason, ro) end
  return req:reply(o.status, ro)
end

-- opts.on_request(req, o, leg) -> nil (o as edited) | table (replaces o) | status (reject)
local function hook_request(opts, req, o, leg)
  if not opts.on_request then return o end
  local r = opts.on_request(req, o, leg)
  if type(r) == "table" then return r end
  if type(r) == "number" then return nil, r end
  return o
end

-- ------------------------------------------------------------------ provisional relay

local install                         -- (call, dialog, leg): relay handlers, defined below

-- relay_early(call, item): A's 18x for B's early media (media = "relay"): the first one
-- opens A's stream (req:progress, our SDP), later ones reuse it; A's stream is bridged to
-- the stream of the B leg that sent it (a later target's, after a failover).  -> true, or
-- nil when A's stream could not be set up (the 18x then goes without SDP)
local function relay_early(call, item)
  local req, o = call.req, item.o
  local ad = req:progress{ media = true, status = o.status, reason = o.reason,
    headers = o.headers, reliable = item.reliable, timeout = PRACK_WAIT }
  if not ad then return nil end
  call.early_a = ad
  local bm = item.early
  if bm:state() ~= "terminated" and not req:answered() and not req:cancelled() then
    local ok, err = ad:bridge(bm)
    if not ok then dispatcher.log("warn", "b2bua: early media not bridged: " .. tostring(err)) end
  end
  return true
end

-- 18x from B go to A in order; a reliable one waits for A's PRACK before the next goes
-- out (RFC 3262 3), so those run in a coroutine.  An 18x goes to A reliably when A
-- supports 100rel and B's was reliable or it carries SDP (an answer: RFC 3262 5); one that
-- arrives while an earlier one waits for its PRACK keeps its SDP (queued whole).
local function relay_provisional(call, res, tx)
  local req = call.req
  if req:answered() or req:cancelled() then return end
  -- early dialogs on both legs, so UPDATE and INFO pass before the answer (RFC 3311)
  local bd = res.to_tag and tx:dialog()
  if bd then
    install(call, dialog.init(bd), "b")
    if not call.a then
      local ad = req:early()
      if ad then install(call, ad, "a") end
    end
  end
  local o = shape(call.opts, res, "b")
  local item = { o = o }
  if call.opts.media then
    -- media = "relay": leg B's SDP is not for A; B's early media reaches A through our
    -- streams, bridged (A's 18x carries our answer, and the 2xx the same one)
    o.body, o.content_type = nil, nil
    if bd and bd:has_media() and req.body then item.early = bd end
  end
  item.reliable = call.a_100rel and (res:header("RSeq") ~= nil or has_tag(res, "100rel")
    or o.body ~= nil or item.early ~= nil)
  local q = call.queue
  if not call.pumping and not item.reliable and not item.early then return reply(req, o) end
  q[#q + 1] = item
  if call.pumping then return end
  call.pumping = true
  dispatcher.spawn(function()
    while #q > 0 do
      local it = table.remove(q, 1)
      if not req:answered() and not req:cancelled() then
        local ok, err = it.early and relay_early(call, it)
        if not ok then
          ok, err = reply(req, it.o, it.reliable and { reliable = true, timeout = PRACK_WAIT } or nil)
        end
        if not ok and err then dispatcher.log("info", "b2bua: 18x not relayed: " .. err) end
      end
    end
    call.pumping = false
    if call.drained then dispatcher.fill(call.drained, true) end
  end)
end

-- waits (bounded) until every queued 18x went out and reliable ones were PRACKed
local function drain(call)
  if not call.pumping then return end
  call.drained = dispatcher.new_slot("luasip.b2bua")
  dispatcher.wait(call.drained, PRACK_WAIT)
  call.drained = nil
end

-- An INVITE we gave up on (ring timeout, CANCEL) may still be answered 2xx by a callee
-- that did not see our CANCEL in time: watch it, and end that call (RFC 3261 9.1).
local function reap(tx)
  if not tx or client_tx.final(tx) or tx:status() >= 200 then return end
  dispatcher.spawn(function()
    local res = tx:wait(PRACK_WAIT + 8)
    local d = res and tx:dialog()
    if d then dialog.init(d):bye() end
  end)
end

-- ------------------------------------------------------------------ bridged dialogs

-- a failure of the other leg as a response: status, reason
local function local_failure(code)
  if type(code) == "number" then return { status = code, headers = {} } end
  if code == "terminated" then
    return { status = 481, reason = "Call/Transaction Does Not Exist", headers = {} }
  end
  if code == "timeout" then return { status = 408, reason = "Request Timeout", headers = {} } end
  return { status = 500, reason = "Other Leg Failed", headers = {} }
end

-- relays in-dialog request r that came on dialog `from` of leg `leg` to the other leg
local function relay_request(call, r, from, leg)
  local method = r.method
  local to = call[leg == "a" and "b" or "a"]
  local offer = method == "INVITE" or method == "UPDATE"
  -- a re-INVITE needs both legs confirmed; UPDATE and INFO also work in early dialogs
  if not to or to:state() == "terminated" or (method == "INVITE" and not call.bridged) then
    if offer then return r:reply(491, "Request Pending") end
    return r:reply(500, "Not Bridged Yet", { headers = { ["Retry-After"] = "1" } })
  end
  -- one offer/answer exchange at a time across the pair (RFC 3261 14.2, RFC 3311 5.2)
  if offer and call.offering then return r:reply(491, "Request Pending") end
  local o = { headers = {} }
  o.body, o.content_type = body_of(r)
  local status
  o, status = hook_request(call.opts, r, o, leg)
  if not o then return r:reply(status) end
  if offer then call.offering = true end
  local res, _, code, fres = to:request(method, o)
  if offer then call.offering = false end
  local other = leg == "a" and "b" or "a"
  local out = (res or fres) and shape(call.opts, res or fres, other) or local_failure(code)
  reply(r, out)
  if offer and res then
    -- the session of the dialog the offer came in: ours is the answer we relayed
    session.settled(from, out.body, o.body)
  end
end

-- puts the relay handlers on dialog d of leg `leg` (early or confirmed)
function install(call, d, leg)
  if call[leg] == d then return end
  call[leg] = d
  d:on("BYE", function()
    local to = call[leg == "a" and "b" or "a"]
    -- the callee's BYE before the caller's ACK: sip.b2bua ends the caller's leg after it
    if to and (call.bridged or leg == "a") then to:bye() end
  end)
  local function relay(r) relay_request(call, r, d, leg) end
  for _, m in ipairs(call.relay) do d:on(m, relay) end
end

-- ------------------------------------------------------------------ the call

-- the options of agent:invite for target t
local function leg_options(req, t, opts)
  local headers = copy(opts.headers)
  -- a B2BUA is a UA, but keeps the hop count so that loops through it end (RFC 3261 16.6)
  if req.max_forwards and not headers["Max-Forwards"] then
    headers["Max-Forwards"] = tostring(req.max_forwards - 1)
  end
  if t.route and not headers.Route then headers.Route = t.route end
  local from = opts.from
  if not from then
    from = "<" .. req.from.uri .. ">"
    if req.from.display then from = quote(req.from.display) .. " " .. from end
  end
  local o = { uri = t.uri, from = from, to = opts.to, headers = headers }
  if opts.media then
    o.media = true                     -- our own stream and offer to B
  else
    o.body, o.content_type = body_of(req)
  end
  return o
end

-- best failure of a sequential hunt: a 6xx, else the lowest class, where a response
-- beats a timeout of ours (RFC 3261 16.7 step 6, simplified)
local function better(new, old)
  if not old then return true end
  local nc, oc = math.floor(new.status / 100), math.floor(old.status / 100)
  if nc == 6 then return true end
  if oc == 6 then return false end
  if nc ~= oc then return nc < oc end
  return old.ours and not new.ours
end

-- sip.b2bua(req, targets [, opts]) -> a_dialog, b_dialog | nil, err, code [, response]
function M.b2bua(req, targets, opts)
  if type(req) ~= "userdata" or type(req.method) ~= "string" or not req.reply then
    error("luasip.b2bua: luasip.request expected, got " .. type(req), 2)
  end
  if req.method ~= "INVITE" then error("luasip.b2bua: only an INVITE can be bridged", 2) end
  local list = normalize(targets)
  opts = check_options(opts)
  dispatcher.current("luasip.b2bua")
  local agent = opts.agent or req.agent
  local relay = {}
  -- with media = "relay" each leg answers re-INVITEs and UPDATEs from its own stream
  local default_relay = opts.media and { "INFO" } or { "INVITE", "UPDATE", "INFO" }
  for i, m in ipairs(opts.relay or default_relay) do relay[i] = m:upper() end
  if req:cancelled() then return nil, "cancelled", "cancelled" end
  if req:answered() then return nil, "request already answered", "answered" end
  if req.max_forwards == 0 then
    req:reply(483, "Too Many Hops")
    return nil, "483 Too Many Hops", 483
  end

  local call = { req = req, opts = opts, queue = {}, a_100rel = has_tag(req, "100rel"),
    relay = relay }
  local tx                               -- leg B's INVITE in progress
  local prev_cancel
  prev_cancel = req:on_cancel(function(r)
    if tx and tx:status() < 200 then tx:cancel() end
    if prev_cancel then prev_cancel(r) end
  end)

  local b, bres, best
  for _, t in ipairs(list) do
    local o, status = hook_request(opts, req, leg_options(req, t, opts), "a")
    if not o then
      req:reply(status)
      return nil, "rejected by on_request", status
    end
    o.timeout, o.auth = opts.timeout, opts.auth
    o.on_sent = function(x) tx = x end
    o.on_provisional = function(res, x) relay_provisional(call, res, x) end
    local d, r2, code, fres = agent:invite(o)
    if d then
      b, bres = d, r2
      break
    end
    if code == "cancelled" or req:cancelled() then
      reap(tx)
      return nil, "cancelled", "cancelled", fres
    end
    local f
    if fres then
      f = shape(opts, fres, "b")
      f.response = fres
    elseif code == "timeout" then
      reap(tx)
      -- rang without an answer: 480 (RFC 3261 21.4.18); nothing came back: 408
      f = tx and tx:status() > 100 and { status = 480, reason = "No Answer", headers = {} }
        or { status = 408, reason = "Request Timeout", headers = {} }
      f.ours = true
    else
      f = local_failure(code)
      f.ours = true
    end
    if better(f, best) then best = f end
    tx = nil
    if f.status >= 600 then break end
  end

  if not b then
    drain(call)
    if req:cancelled() then return nil, "cancelled", "cancelled" end
    reply(req, best)
    local err = tostring(best.status) .. " " .. tostring(best.reason or "")
    return nil, (err:gsub("%s+$", "")), best.status, best.response
  end

  -- B answered: A gets the answer; until A's ACK, a BYE from B ends B alone
  install(call, b, "b")
  drain(call)
  if req:cancelled() then
    b:bye()
    return nil, "cancelled", "cancelled"
  end
  local o = shape(opts, bres, "b")
  local a, aerr, acode
  if opts.media then
    a, aerr, acode = req:answer{ status = o.status, headers = o.headers, media = true }
  else
    a, aerr, acode = req:answer{ status = o.status, headers = o.headers, body = o.body,
      content_type = o.content_type }
  end
  if not a then
    b:bye()
    return nil, aerr, acode
  end
  if b:state() == "terminated" then
    a:bye()
    return nil, "dialog terminated", "terminated"
  end
  install(call, a, "a")
  call.bridged = true
  if opts.media then
    local ok, err = a:bridge(b)
    if not ok then dispatcher.log("warn", "b2bua: media not bridged: " .. tostring(err)) end
  end
  return a, b
end

return M
