--[[ pbx_app.lua — the handlers of examples/pbx.lua, as an application module: pbx.lua
  installs them with app:load("pbx_app", pbx) and swaps them on SIGHUP with
  sip.reload("pbx_app") while calls go on (README: Reloading).  What must outlive a
  reload (registrations, the calls being forked, the IVR) lives in pbx.lua and comes in
  the `pbx` table; this file keeps only code.
  pbx = { vm =, vm_uri =, host =, users =, registrar =, location =, ringing =,
          dialogs =, ivr =, ring =, log =, store = (Redis or nil),
          nat = (phones behind NAT: README "NAT") }
]]
local sip = require "luasip"
local flow_uri = require("luasip.location").flow_uri

return function(app, pbx)
  local host, users, location, ivr, log = pbx.host, pbx.users, pbx.location, pbx.ivr, pbx.log
  local ringing = pbx.ringing  -- Call-ID -> { user =, phones =, failed =, status =, reason = }
  local dialogs = pbx.dialogs  -- Call-ID -> { [remote target URI] = flow | true }: calls we
                               -- connected; flow: where that party's messages came from

  -- A registered user's voicemail answers on an agent of its own: the proxy forks each
  -- call to it beside the user's phones; it answers after `ring` seconds unless a phone
  -- answered (the proxy then cancels it), or gives the phones' answer when all said no.
  pbx.vm:on("INVITE", function(req)
    local c, t0 = ringing[req.call_id], sip.now()
    -- only calls the PBX is forking to that user (no way round authentication)
    if not c or c.user ~= req.ruri.user then return req:reply(403, "Not Routed Here") end
    while sip.now() - t0 < pbx.ring do             -- looks at the phones 5 times a second
      if c.failed >= c.phones then return req:reply(c.status, c.reason) end
      local _, err = sip.sleep(0.2)
      if err == "cancelled" then return end
    end
    local call = req:answer{ media = true }
    if not call then return end
    log("voicemail for", req.ruri.user, tostring(ivr.voicemail(call, req.ruri.user)))
  end)

  local ours = { [host] = true, ["localhost"] = true, ["127.0.0.1"] = true }
  local function password(user) return users[user] end

  -- REGISTER: digest-authenticated registrar; a user registers only their own AOR
  app:on("REGISTER", function(req)
    pbx.registrar(req)
    log("REGISTER", req.to.uri, tostring(req:answered()))
  end)

  -- in-dialog requests go where their Request-URI says, but only along a route we
  -- record-routed ourselves (top Route = this PBX), in a call we connected, to one of
  -- its two parties (the Contacts of its INVITE and 2xx): no open relay through To tags
  -- or a forged Route (spec/relay_spec.lua)
  -- (each Contact is kept with the flow its message came over -- a request's source, or
  -- a response's over the transport of the target that sent it -- when that is a TCP/TLS
  -- connection, or always with pbx.nat)
  local function targets_of(d, targets, ...)
    for _, m in ipairs{ ... } do
      local src, flow = m.source, true
      for _, t in ipairs(src and not src.transport and targets or {}) do
        local ts = type(t) == "table" and t.source
        if ts and ts.address == src.address and ts.port == src.port then src = ts end
      end
      local tr = src and (src.transport or "udp"):lower()
      if src and (pbx.nat or tr == "tcp" or tr == "tls") then flow = flow_uri(src) end
      for _, c in ipairs(m.contact) do d[c.uri] = flow end
    end
  end
  -- the next hop of an in-dialog request: the flow of its target, if still usable
  local function flow_to(req)
    local d = dialogs[req.call_id]
    local flow = d and d[req.uri]
    if type(flow) == "string" and app:flow_alive(flow) then return flow end
  end
  local function routed_here(req)
    local d = dialogs[req.call_id]
    return d ~= nil and d[req.uri] and req:loose_route()
  end

  local function in_dialog(req)
    if not req.to_tag then return end
    if not routed_here(req) then
      req:reply(403, "Not Routed Here")
      return true
    end
    local flow = flow_to(req)
    local res = req:proxy(flow and { { uri = req.uri, flow = flow } } or req.uri)
    local d = dialogs[req.call_id]
    if d and req.method == "BYE" then dialogs[req.call_id] = nil end
    if d and res and res.status < 300 and (req.method == "INVITE" or req.method == "UPDATE") then
      targets_of(d, nil, req, res)                   -- a target refresh (RFC 3261 12.2)
    end
    return true
  end

  -- calls and messages between users of this PBX
  local function route(req, opts)
    if in_dialog(req) then return end
    local user = sip.auth.check(req, { realm = host, password = password, proxy = true,
      failures = true, nonce_ttl = pbx.nonce_ttl, store = pbx.store })
    if not user then return end                      -- 407 (or 400) sent by check
    if req.from.uri:match("^sips?:([^@;]+)@") ~= user then
      return req:reply(403, "From Does Not Match Credentials")
    end
    if not ours[req.ruri.host] then
      return req:reply(403, "Relaying Denied")
    end
    local callee = req.ruri.user
    if not callee or not users[callee] then return req:reply(404, "No Such User") end
    local targets = location:lookup("sip:" .. callee .. "@" .. host, app) or {}
    local invite = req.method == "INVITE"
    if #targets == 0 and not invite then return req:reply(480, "Temporarily Unavailable") end
    if #targets == 0 then                               -- offline: straight to voicemail
      local call = req:answer{ media = true }
      return call and log("voicemail for", callee, tostring(ivr.voicemail(call, callee)))
    end
    log(req.method, user, "->", callee, "(" .. #targets .. " contact(s))")
    if invite then
      local c = { user = callee, phones = #targets, failed = 0 }
      ringing[req.call_id] = c
      opts.on_response = function(res)               -- the best failure of the phones
        if res.status < 300 then                     -- a call we connect: its parties
          if res.status > 100 then
            dialogs[req.call_id] = dialogs[req.call_id] or {}
            targets_of(dialogs[req.call_id], targets, req, res)
          end
          return
        end
        c.failed = c.failed + 1
        if not c.status or res.status < c.status then c.status, c.reason = res.status, res.reason end
      end
      targets[#targets + 1] = "sip:" .. callee .. pbx.vm_uri
    end
    local res, err = req:proxy(targets, opts)
    ringing[req.call_id] = nil
    if invite and not (res and res.status < 300) then dialogs[req.call_id] = nil end
    log(req.method, user, "->", callee, res and res.status or err)
  end

  app:on("INVITE", function(req)
    if req.to_tag or req.ruri.user ~= "ivr" or not ours[req.ruri.host] then
      return route(req, { record_route = true })
    end
    local call = req:answer{ media = true }              -- the menu, for anyone
    if call then log("ivr", call.call_id, ivr.menu(call)) end
  end)
  app:on("MESSAGE", function(req) route(req) end)
  app:on("ACK", function(ack) if routed_here(ack) then ack:forward(nil, flow_to(ack)) end end)
  for _, m in ipairs{ "BYE", "INFO", "UPDATE", "NOTIFY", "PRACK", "REFER", "SUBSCRIBE" } do
    app:on(m, function(req)
      if not in_dialog(req) then req:reply(m == "BYE" and 481 or 404) end
    end)
  end

  app:on("OPTIONS", function(req)
    if in_dialog(req) then return end
    if req.ruri.user and users[req.ruri.user] then return route(req) end
    req:reply(200, { headers = { Allow = app:allow(), Accept = "application/sdp, text/plain" } })
  end)
end
