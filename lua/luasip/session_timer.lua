-- luasip.session_timer: session timers (RFC 4028) for dialogs.  The refresher re-sends
-- UPDATE (or re-INVITE) every interval/2; the other side sends BYE when no refresh came
-- for interval - min(32, interval/3) seconds.  State lives in the dialog's state table:
-- st_timer, st_method, st_min_se, session_expires, session_refresher.
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local state = class.state

local M = {}

M.DEFAULT_MIN_SE = 90

-- parse(value) -> interval, refresher ("uac"/"uas"/nil) of a Session-Expires value
function M.parse(v)
  if not v then return nil end
  local n = tonumber(v:match("^%s*(%d+)"))
  local r = v:match(";%s*refresher%s*=%s*(%a+)")
  return n, r and r:lower()
end

function M.has_tag(list, tag)
  for _, v in ipairs(list) do
    for t in v:gmatch("[^,%s]+") do if t:lower() == tag then return true end end
  end
  return false
end

function M.stop(d)
  local st = state(d)
  if st.st_timer then st.st_timer:cancel() end
  st.st_timer = nil
end

local refresh, expire

-- start(d, interval, we_refresh): (re)arm the timer; we_refresh: we send the refreshes
function M.start(d, interval, we_refresh)
  M.stop(d)
  local st = state(d)
  if not interval or st.ended then return end
  st.session_expires = interval
  st.session_refresher = we_refresh and d.role or (d.role == "uac" and "uas" or "uac")
  if we_refresh then
    st.st_timer = dispatcher.timer(interval / 2, function() refresh(d) end)
  else
    st.st_timer = dispatcher.timer(interval - math.min(32, interval / 3),
      function() expire(d) end)
  end
end

local function se_header(d)
  local st = state(d)
  return st.session_expires .. ";refresher=" .. st.session_refresher
end

expire = function(d)
  local st = state(d)
  st.st_timer = nil
  if st.ended then return end
  dispatcher.log("info", "session timer expired: BYE")
  d:send{ method = "BYE" }
  require("luasip.dialog").ended(d, "session expired")
end

refresh = function(d)
  local st = state(d)
  st.st_timer = nil
  if st.ended then return end
  local method = st.st_method or "UPDATE"
  local o = { headers = { ["Session-Expires"] = se_header(d), Supported = "timer" } }
  if method == "INVITE" and st.local_sdp then
    o.body, o.content_type = st.local_sdp, "application/sdp"
  end
  local res, _, code = d:request(method, o)
  if not res then
    if code == 481 or code == 408 or code == "timeout" then
      return require("luasip.dialog").ended(d, "refresh failed")
    end
    -- 405/501 to UPDATE: fall back to re-INVITE next time; retry soon otherwise
    if method == "UPDATE" and (code == 405 or code == 501) then st.st_method = "INVITE" end
    return M.start(d, st.session_expires, true)
  end
  local n, r = M.parse(res:header("Session-Expires"))
  if n then return M.start(d, n, r == d.role) end
  M.start(d, st.session_expires, true)
end

-- on_refresh(d, req) -> headers for our 2xx | nil: a refresh arrived (re-INVITE/UPDATE
-- from the peer): what our 2xx says, and re-arm
function M.on_refresh(d, req)
  local st = state(d)
  if not st.session_expires then return nil end
  local n, r = M.parse(req:header("Session-Expires"))
  n = n or st.session_expires
  if n < (st.st_min_se or M.DEFAULT_MIN_SE) then n = st.session_expires end
  local them = d.role == "uac" and "uas" or "uac"
  r = r or them
  M.start(d, n, r == d.role)
  return { ["Session-Expires"] = se_header(d), Require = "timer" }
end

return M
