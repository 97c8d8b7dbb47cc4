-- luasip.call: INVITE sessions on dialogs -- req:answer (UAS), agent:invite (UAC), and the
-- default answer to a refresh (re-INVITE/UPDATE) with the current session (RFC 3264).
-- The class modules (luasip.request, luasip.agent, luasip.dialog) call these.
local class = require "luasip.class"
local sdp = require "luasip.sdp"
local st_timer = require "luasip.session_timer"

local state = class.state

local function dispatcher_log(level, msg) require("luasip.dispatcher").log(level, msg) end

local M = {}

local function copy(t)
  local o = {}
  for k, v in pairs(t or {}) do o[k] = v end
  return o
end

-- our current session, with each stream's direction answering the offer's (RFC 3264
-- 6.1: a hold offer, sendonly, is answered recvonly)
local function mirror_sdp(local_sdp, offer)
  local o, l = sdp.parse(offer or ""), sdp.parse(local_sdp or "")
  if not o or not l then return local_sdp end
  local map = { sendonly = "recvonly", recvonly = "sendonly", inactive = "inactive" }
  local changed = false
  for i, m in ipairs(l.media) do
    local om = o.media[i]
    local want = om and (map[om.direction] or "sendrecv") or m.direction
    if want ~= m.direction then
      m.direction, changed = want, true
    end
  end
  if not changed then return local_sdp end
  return sdp.bump(sdp.build(l))
end

local ANSWER_OPTIONS = { status = true, body = true, content_type = true, headers = true,
  session_expires = true, min_se = true, timeout = true, reason = true, media = true }

-- req:answer([opts]) -> dialog | nil, err, code: 200 (with opts.body etc.), then the ACK
-- opts.session_expires = seconds (and opts.min_se = 90) turns RFC 4028 session timers on
function M.answer(req, opts)
  local fname = "luasip.request:answer"
  if opts ~= nil and type(opts) ~= "table" then error(fname .. ": options must be a table", 2) end
  if req.method ~= "INVITE" then
    error(fname .. ": only an INVITE is answered with a dialog (use req:reply)", 2)
  end
  opts = copy(opts)
  class.check_options(opts, ANSWER_OPTIONS, fname)
  local media = require "luasip.media"
  if opts.media ~= nil then
    if opts.body ~= nil then error(fname .. ": body and media are exclusive", 2) end
    media.call_options(opts.media, fname, 2)
  end
  -- RFC 4028 on the UAS side: 422 below our Min-SE, else the interval and refresher
  local st_interval, st_refresher
  local want = opts.session_expires
  local req_se, req_ref = st_timer.parse(req:header("Session-Expires"))
  if want or req_se then
    local min_se = opts.min_se or st_timer.DEFAULT_MIN_SE
    if req_se and req_se < min_se then
      req:reply(422, "Session Interval Too Small", { headers = { ["Min-SE"] = tostring(min_se) } })
      return nil, "422 Session Interval Too Small", 422
    end
    st_interval = req_se or want
    if want and want < st_interval then st_interval = math.max(want, min_se) end
    local uac_supports = st_timer.has_tag(req:headers("Supported"), "timer")
      or st_timer.has_tag(req:headers("Require"), "timer")
    st_refresher = req_ref or (uac_supports and "uac" or "uas")
    local h = copy(opts.headers)
    h["Session-Expires"] = st_interval .. ";refresher=" .. st_refresher
    if uac_supports then h.Require = "timer" end
    opts.headers = h
  end
  local request = require "luasip.request"
  local dialog = require "luasip.dialog"
  local d, err, code = request.early_dialog(req, true)
  if not d then return nil, err, code end
  local dst = state(d)
  dst.st_min_se = opts.min_se
  -- media: the stream of req:progress, or a new one; our SDP answers the INVITE's offer
  -- (or is the offer, for an INVITE without SDP: the ACK answers)
  local m, offered = media.of(d), false
  if not m and opts.media ~= nil then
    local merr, mcode
    m, merr, mcode = media.open(req.agent, opts.media, fname, 2)
    if not m then
      req:reply(500, "Media Unavailable")
      return nil, merr, mcode
    end
    local body, kind, acode = media.answer(m, req.body)
    if not body then
      media.close(m)
      req:reply(acode or 488)
      return nil, kind, acode
    end
    offered = kind == "offer"
    media.attach(m, d)
  end
  if m then opts.body, opts.content_type = m.local_sdp or media.offer(m), "application/sdp" end
  if m and not m.local_sdp then m.local_sdp, offered = opts.body, true end
  if opts.body and not opts.content_type then opts.content_type = "application/sdp" end
  local status = opts.status or 200
  local ro = { body = opts.body, content_type = opts.content_type, headers = opts.headers }
  local ok, rerr, rcode = req:reply(status, opts.reason, ro)
  if not ok then
    dialog.ended(d, rcode)
    return nil, rerr, rcode
  end
  dialog.confirmed(d)
  local early_local, early_remote = request.early_sdp(req)
  dst.local_sdp = opts.body or early_local or dst.local_sdp
  dst.remote_sdp = req.body or early_remote
  local ack, aerr, acode = req:wait_ack(opts.timeout)
  if not ack then
    -- no ACK: the core sends BYE after 64*T1; a shorter timeout sends it now
    if aerr == "timeout" and opts.timeout then d:send{ method = "BYE" } end
    dialog.ended(d, aerr)
    return nil, aerr, acode
  end
  if ack.body then dst.remote_sdp = ack.body end
  if m and offered then
    local applied, merr, mcode = media.apply(m, m.local_sdp, ack.body)
    if not applied then
      d:bye()
      return nil, merr, mcode
    end
  end
  if st_interval then st_timer.start(d, st_interval, st_refresher == "uas") end
  return d
end

-- agent:invite{...} without auth (luasip.agent adds auth = on top); level: where an
-- argument error points (as for error(); 3 when called by luasip.auth)
function M.invite(agent, opts, level)
  local o = copy(opts)
  o.method, o.dialog = "INVITE", true
  o.auth = nil
  if o.body and not o.content_type then o.content_type = "application/sdp" end
  if opts.session_expires then
    -- RFC 4028 on the UAC side: ask for the interval, say we can refresh
    local h = copy(opts.headers)
    h["Session-Expires"] = tostring(opts.session_expires)
    h["Min-SE"] = tostring(opts.min_se or st_timer.DEFAULT_MIN_SE)
    h.Supported = "timer, 100rel"
    o.headers = h
  end
  o.session_expires, o.min_se, o.st_retried, o.on_provisional, o.on_sent =
    nil, nil, nil, nil, nil
  local tx, err, code = class.call("luasip.agent:invite", level or 3, agent.send, agent, o)
  if not tx then return nil, err, code end
  require("luasip.client_tx").set_on_provisional(tx, opts.on_provisional)
  if opts.on_sent then opts.on_sent(tx) end
  -- an INVITE waits for its final response at most invite_timeout (agent option,
  -- 180 s like a proxy's Timer C): then it is CANCELled and fails with "timeout"
  local res, werr, wcode, wres = tx:wait(opts.timeout or state(agent).invite_timeout)
  if not res and wcode == 422 and wres and opts.session_expires and not opts.st_retried then
    -- 422: try again once with the callee's Min-SE (RFC 4028 7.4)
    local min_se = tonumber(wres:header("Min-SE") or "")
    if min_se and min_se > opts.session_expires then
      local again = copy(opts)
      again.session_expires, again.min_se, again.st_retried = min_se, min_se, true
      return M.invite(agent, again, level)
    end
  end
  if not res then return nil, werr, wcode, wres end
  local d = tx:dialog()
  if not d then return nil, "no dialog for the 2xx", "dialog", res end
  local dst = state(d)
  dst.local_sdp, dst.remote_sdp = opts.body, res.body
  if opts.session_expires then
    local n, r = st_timer.parse(res:header("Session-Expires"))
    -- no Session-Expires in the 2xx: the callee has no timer; we refresh (RFC 4028 7.2)
    st_timer.start(d, n or opts.session_expires, (r or "uac") == "uac")
  end
  return d, res
end

-- invite_media(agent, opts, fname) -> dialog, response | nil, err, code [, response]:
-- agent:invite{ media = } -- a stream, our offer, early media from a 18x with SDP, the
-- stream set from the 2xx's answer (no common codec: BYE and 488)
function M.invite_media(agent, opts, fname)
  local media = require "luasip.media"
  if opts.body ~= nil then error(fname .. ": body and media are exclusive", 3) end
  media.call_options(opts.media, fname, 2)
  local m, merr, mcode = media.open(agent, opts.media, fname, 2)
  if not m then return nil, merr, mcode end
  local o = copy(opts)
  o.media = nil
  o.body, o.content_type = media.offer(m), "application/sdp"
  m.local_sdp = o.body
  local prov = opts.on_provisional
  o.on_provisional = function(res, tx)
    if res.body and res.status > 100 and (res.content_type or ""):lower() == "application/sdp" then
      -- early media: the stream plays and records on the early dialog (the same object the
      -- 2xx confirms)
      if media.apply(m, o.body, res.body) then
        local ed = tx:dialog()
        if ed and not media.of(ed) and not m.dialog then media.attach(m, ed) end
      end
    end
    if prov then return prov(res, tx) end
  end
  local d, res, code, fres
  m.inviting = true
  if o.auth ~= nil then
    d, res, code, fres = require("luasip.auth").send_with_auth(agent, o, M.invite, "INVITE", fname)
  else
    d, res, code, fres = M.invite(agent, o, 3)
  end
  m.inviting = nil
  if not d then
    media.close(m)
    return nil, res, code, fres
  end
  local ok, aerr, acode = media.apply(m, o.body, res.body or m.remote_sdp)
  if not ok then
    media.close(m)
    d:bye()
    return nil, aerr, acode, res
  end
  if m.dialog ~= d then
    if m.dialog then state(m.dialog).media = nil end   -- an early dialog of another fork
    media.attach(m, d)
  end
  return d, res
end

-- refresh(d, req): a re-INVITE or UPDATE nobody listens for: answer with the current
-- session (its version only goes up) and re-arm the session timer
function M.refresh(d, req)
  local dst = state(d)
  local method = req.method
  local headers = st_timer.on_refresh(d, req)
  local media = require "luasip.media"
  if req.body and media.of(d) then
    -- a media call answers from its stream (hold, codec or address changes)
    local ans, err, code = media.refresh(d, req.body)
    if not ans then
      dispatcher_log("info", "re-INVITE refused: " .. tostring(err))
      return req:reply(code or 488)
    end
    dst.local_sdp, dst.remote_sdp = ans, req.body
    return req:reply(200, { headers = headers, body = ans, content_type = "application/sdp" })
  end
  if req.body and not dst.local_sdp then return req:reply(488) end
  dst.remote_sdp = req.body or dst.remote_sdp
  local o = { headers = headers }
  if dst.local_sdp and (method == "INVITE" or req.body) then
    dst.local_sdp = mirror_sdp(dst.local_sdp, req.body)
    o.body, o.content_type = dst.local_sdp, "application/sdp"
  end
  return req:reply(200, o)
end

-- dialog:request("INVITE", ...) got a 2xx: the session it settled
function M.settled(d, local_sdp, remote_sdp)
  local dst = state(d)
  dst.local_sdp = local_sdp or dst.local_sdp
  dst.remote_sdp = remote_sdp or dst.remote_sdp
  if dst.media then require("luasip.media").settled(d, dst.local_sdp, dst.remote_sdp) end
end

return M
