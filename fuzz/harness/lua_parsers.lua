-- The Lua side of the lua_parsers libFuzzer target (fuzz/harness/lua_parsers.c): returns
-- fn(input) -> nil | the message of a broken promise.  The first byte of the input chooses
-- the parser, the rest is its input.  Every parser here is documented to return a value
-- or a fail tuple for any string (README), so a Lua error from one is a finding; the C
-- digest parser must also agree with the Lua one it replaces (the same contract).  Also
-- loaded by spec/libfuzzer_spec.lua, which replays fuzz/findings/lua_parsers/ through it.
local sip = require "luasip"
local core = require "luasip.core"
local refer = require "luasip.refer"
local location = require "luasip.location"

local digest = select(3, core.class("luasip.digest"))

-- refer.lua's local parsers, reached through the upvalues of its public functions
local function find_local(name)
  local seen = {}
  local function search(fn, depth)
    if seen[fn] or depth > 4 then return nil end
    seen[fn] = true
    for i = 1, 200 do
      local k, v = debug.getupvalue(fn, i)
      if not k then break end
      if k == name and type(v) == "function" then return v end
      if type(v) == "function" then
        local found = search(v, depth + 1)
        if found then return found end
      end
    end
  end
  for _, fn in pairs(refer) do
    local found = type(fn) == "function" and search(fn, 0)
    if found then return found end
  end
  error("lua_parsers: refer.lua has no local " .. name)
end
local parse_sipfrag = find_local("parse_sipfrag")
local parse_event = find_local("parse_event")

local CAPS = { address = "127.0.0.1", media = {
  audio = { port = 40000, codecs = { "PCMU/8000", "PCMA/8000", "telephone-event/8000",
    { encoding = "opus", clock_rate = 48000, channels = 2 } } },
  video = { port = 40002, codecs = { "H264/90000", "VP8/90000" }, direction = "recvonly" } } }

local function same(a, b)
  if type(a) ~= "table" or type(b) ~= "table" then return a == b end
  for k, v in pairs(a) do if b[k] ~= v then return false end end
  for k in pairs(b) do if a[k] == nil then return false end end
  return true
end

local function sdp_all(s)
  local t = sip.sdp.parse(s)
  if not t then return end
  sip.sdp.attribute(t, "group")
  for _, m in ipairs(t.media) do
    sip.sdp.codecs(m)
    sip.sdp.attribute(m, "rtcp")
  end
  -- csrc/sdp.c: what parse made, build writes, and that parses to the same text again
  local once = sip.sdp.build(t)
  local back, err = sip.sdp.parse(once)
  if not back then return ("sdp.parse refuses sdp.build's %q: %s"):format(once, err) end
  if sip.sdp.build(back) ~= once then return ("sdp.build of %q is not stable"):format(s) end
end

local targets = {
  sdp_all,
  function(s) sip.sdp.answer(s, CAPS) end,
  function(s)
    sip.sdp.hold(s)
    sip.sdp.unhold(s)
    sip.sdp.bump(s)
  end,
  function(s)
    sip.pidf.parse(s)
    sip.pidf.merge("pres:fuzz@127.0.0.1", { s, s })
  end,
  function(s)                                     -- digest headers: Lua and C agree
    local ls, lp = sip.auth.parse(s)
    local cs, cp = digest.parse(s)
    if ls ~= cs or not same(lp, cp) then
      return ("auth.parse and digest.parse differ on %q: %s / %s"):format(s,
        tostring(ls), tostring(cs))
    end
  end,
  function(s)                                     -- URIs: Refer-To; csrc/uri.c
    refer.parse_refer_to(s)
    local u = location.parse_uri(s)
    local aor = location.aor(s)
    if u and not location.uri_equal(s, s) then
      return ("uri_equal(%q, itself) is false"):format(s)
    end
    if aor and not u then return ("%q has an AOR (%q) but does not parse"):format(s, aor) end
    local half = s:sub(1, math.floor(#s / 2))
    location.uri_equal(s, half)
  end,
  function(s) refer.parse_replaces(s) end,
  function(s)
    parse_sipfrag(s)
    parse_event(s)
  end,
}

return function(input)
  if #input == 0 then return nil end
  local which = input:byte(1) % #targets + 1
  local s = input:sub(2)
  local ok, res = xpcall(function() return targets[which](s) end, debug.traceback)
  if not ok then return ("parser %d raised on %q: %s"):format(which, s, tostring(res)) end
  return res                                      -- a finding's message, or nil
end
