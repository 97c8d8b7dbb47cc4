-- SDP (RFC 8866 / 4566) parse and build, and an RFC 3264 offer/answer helper for
-- endpoints: answer, hold, unhold, bump.  Not sofia's soa: it is a stateful engine bound to
-- nua sessions, while a dialog here only needs "given this offer and these capabilities,
-- what is my answer"; plain tables are easier to inspect and edit in a script.  Parse and
-- build are C (csrc/sdp.c: every offer is parsed and answered, and in Lua patterns that
-- was half of a UAS call's Lua work); the offer/answer logic is Lua, on the same tables.
-- Parsed tables are plain data: build() reads only the fields documented below.
local core = require "luasip.core"

local sdp = {}

local unpack = table.unpack or unpack

-- RFC 3551 static payload types: pt -> encoding, clock rate, channels
local STATIC = {
  ["0"] = { "PCMU", 8000 }, ["3"] = { "GSM", 8000 }, ["4"] = { "G723", 8000 },
  ["5"] = { "DVI4", 8000 }, ["6"] = { "DVI4", 16000 }, ["7"] = { "LPC", 8000 },
  ["8"] = { "PCMA", 8000 }, ["9"] = { "G722", 8000 }, ["10"] = { "L16", 44100, 2 },
  ["11"] = { "L16", 44100 }, ["12"] = { "QCELP", 8000 }, ["13"] = { "CN", 8000 },
  ["14"] = { "MPA", 90000 }, ["15"] = { "G728", 8000 }, ["16"] = { "DVI4", 11025 },
  ["17"] = { "DVI4", 22050 }, ["18"] = { "G729", 8000 }, ["25"] = { "CelB", 90000 },
  ["26"] = { "JPEG", 90000 }, ["28"] = { "nv", 90000 }, ["31"] = { "H261", 90000 },
  ["32"] = { "MPV", 90000 }, ["33"] = { "MP2T", 90000 }, ["34"] = { "H263", 90000 },
}

-- codecs that do not make a stream on their own (an answer needs a real one too)
local AUXILIARY = { ["telephone-event"] = true, cn = true, red = true, ulpfec = true,
  flexfec = true, rtx = true }

local DIRECTIONS = { sendrecv = 3, sendonly = 1, recvonly = 2, inactive = 0 }
local DIRECTION_NAMES = { [3] = "sendrecv", [1] = "sendonly", [2] = "recvonly", [0] = "inactive" }

local function split(s)
  local t = {}
  for w in s:gmatch("%S+") do t[#t + 1] = w end
  return t
end

-- payload-type keyed maps: keys are the format strings ("0", "101"); numbers work too
local pt_meta = { __index = function(t, k)
  if type(k) == "number" then return rawget(t, tostring(k)) end
end }
local function pt_get(map, pt)
  if not map then return nil end
  local v = map[pt]
  if v == nil and tonumber(pt) then v = map[tonumber(pt)] end
  return v
end

-- parse and build ------------------------------------------------------------------

local function num(n)
  if type(n) == "number" and n == math.floor(n) and n < 2 ^ 53 then
    return ("%d"):format(n)
  end
  return tostring(n)
end

local core_parse, core_build = core.sdp_parse, core.sdp_build

-- sdp.parse(str) -> table | nil, err
-- The session: version (0), origin = { username, sess_id, sess_version (strings), nettype,
-- addrtype, address }, name, info, uri, emails, phones, connection, bandwidths, times =
-- { { start, stop, repeats = { { interval, duration, offsets } } } }, zones = { { time,
-- offset } }, key, direction (a session-level a=<direction>), attributes = { { name,
-- value } } (value nil for a flag), media.  A media description: media, port, port_count,
-- proto, formats (strings), info, connection = { nettype, addrtype, address, ttl, count },
-- bandwidths = { { type, bandwidth } }, key, rtpmap = { [pt] = { encoding, clock_rate,
-- channels } }, fmtp = { [pt] = params }, ptime, maxptime, direction (its own, else the
-- session's, else sendrecv), attributes (the a= lines without a field of their own).
function sdp.parse(str)
  if type(str) ~= "string" then
    error("luasip.sdp.parse: string expected, got " .. type(str), 2)
  end
  return core_parse(str, pt_meta)
end

-- sdp.build(table) -> string (CRLF line ends, fields in the RFC 8866 order); errors name
-- the field that is missing or wrong and point at the caller
function sdp.build(t)
  if type(t) ~= "table" then error("luasip.sdp.build: table expected, got " .. type(t), 2) end
  local s = core_build(t)
  return s
end

-- lookups ---------------------------------------------------------------------------

-- sdp.attribute(session_or_media, name) -> value | true | nil, all: the first a=<name>
-- among the attributes list (true for a flag such as a=rtcp-mux), and a list of every value
function sdp.attribute(t, name)
  if type(t) ~= "table" or type(name) ~= "string" then
    error("luasip.sdp.attribute: table and name expected", 2)
  end
  local all = {}
  for _, a in ipairs(t.attributes or {}) do
    if a.name == name then all[#all + 1] = a.value == nil and true or a.value end
  end
  return all[1], all
end

-- sdp.codecs(media) -> list of { pt, encoding, clock_rate, channels, fmtp } in the order
-- of the m= formats; static payload types (RFC 3551) need no a=rtpmap
function sdp.codecs(m)
  if type(m) ~= "table" then error("luasip.sdp.codecs: media table expected", 2) end
  local list = {}
  for _, f in ipairs(m.formats or {}) do
    local r = pt_get(m.rtpmap, f)
    local c
    if r then
      c = { pt = f, encoding = r.encoding, clock_rate = r.clock_rate, channels = r.channels }
    elseif STATIC[f] then
      local st = STATIC[f]
      c = { pt = f, encoding = st[1], clock_rate = st[2], channels = st[3] }
    else
      c = { pt = f }
    end
    c.fmtp = pt_get(m.fmtp, f)
    list[#list + 1] = c
  end
  return list
end

-- offer/answer -------------------------------------------------------------------------

local function parsed(x, fname)
  if type(x) == "table" then return x end
  if type(x) ~= "string" then error(fname .. ": SDP string or table expected, got " .. type(x), 3) end
  return sdp.parse(x)
end

-- decimal string + 1 (sess-version may exceed 2^53)
local function incr(s)
  local digits = { s:byte(1, -1) }
  local i = #digits
  while i >= 1 do
    if digits[i] < 57 then digits[i] = digits[i] + 1 return string.char(unpack(digits)) end
    digits[i] = 48
    i = i - 1
  end
  return "1" .. string.char(unpack(digits))
end

local session_counter = 0
local function new_session_id()
  session_counter = (session_counter + 1) % 1000
  return ("%d%03d%03d"):format(os.time(), session_counter, math.random(0, 999))
end

local function addrtype(address) return address:find(":", 1, true) and "IP6" or "IP4" end

-- capability codecs ("PCMU/8000" or tables) as { encoding, clock_rate, channels, fmtp,
-- lower = the encoding in lower case }; strings parsed once (a script's caps are a few
-- constant strings: the cache is cleared if it ever holds more than 256)
local cap_cache, cap_cached = {}, 0

local function parse_cap(c, fname)
  if type(c) == "table" then
    if type(c.encoding) ~= "string" then error(fname .. ": codec tables need an encoding", 3) end
    return { encoding = c.encoding, clock_rate = c.clock_rate, channels = c.channels,
      fmtp = c.fmtp, lower = c.encoding:lower() }
  end
  local hit = cap_cache[c]
  if hit then return hit end
  if type(c) ~= "string" then error(fname .. ": codecs are strings like \"PCMU/8000\"", 3) end
  local enc, rate, ch = c:match("^([^/]+)/?(%d*)/?(%d*)$")
  if not enc then error(fname .. ": bad codec '" .. c .. "'", 3) end
  hit = { encoding = enc, clock_rate = tonumber(rate), channels = tonumber(ch), lower = enc:lower() }
  if cap_cached >= 256 then cap_cache, cap_cached = {}, 0 end
  cap_cache[c], cap_cached = hit, cap_cached + 1
  return hit
end

-- does capability cap take the offered codec (encoding in lower case: lower)?
local function codec_matches(cap, lower, rate, channels, media)
  if cap.lower ~= lower then return false end
  if cap.clock_rate and cap.clock_rate ~= rate then return false end
  if media == "audio" and cap.channels and cap.channels ~= (channels or 1) then
    return false
  end
  return true
end

local function effective_direction(offer, m)
  local d = DIRECTIONS[m.direction or offer.direction or "sendrecv"]
  local c = m.connection or offer.connection
  -- RFC 2543 hold (RFC 3264 8.4): c=0.0.0.0 means "do not send to me"
  if c and (c.address == "0.0.0.0" or c.address == "::") and d >= 2 then d = d - 2 end
  return d
end

-- sdp.answer(offer, caps) -> answer string | nil, err, code (RFC 3264 section 6)
-- caps = { address =, username =, session_id =, previous = <our last SDP>, name =,
--   media = { audio = { port =, codecs = { "PCMU/8000", ... }, protos = {...},
--   direction =, ptime =, attributes = { {name =, value =} } }, video = {...} } }
function sdp.answer(offer, caps)
  local fname = "luasip.sdp.answer"
  if type(caps) ~= "table" or type(caps.address) ~= "string" or type(caps.media) ~= "table" then
    error(fname .. ": caps table with address and media expected", 2)
  end
  local o, perr = parsed(offer, fname)
  if not o then return nil, "400 Bad Request (bad SDP offer: " .. perr .. ")", 400 end
  local ans = { version = 0, name = caps.name or "-", attributes = {}, media = {},
    connection = { nettype = "IN", addrtype = addrtype(caps.address), address = caps.address },
    times = {} }
  for _, tm in ipairs(o.times or {}) do
    ans.times[#ans.times + 1] = { start = tm.start, stop = tm.stop }
  end
  local used, accepted = {}, 0
  for _, m in ipairs(o.media) do
    local cap = caps.media[m.media]
    -- rtpmap and fmtp keyed by the offer's format strings: build() needs no pt_meta
    local a = { media = m.media, port = 0, proto = m.proto, formats = {}, attributes = {},
      rtpmap = {}, fmtp = {} }
    local protos = cap and cap.protos or { "RTP/AVP" }
    local proto_ok = false
    for _, p in ipairs(protos) do proto_ok = proto_ok or p:upper() == m.proto:upper() end
    if cap and m.port ~= 0 and proto_ok and not used[m.media] then
      if type(cap.port) ~= "number" then error(fname .. ": media." .. m.media .. ".port expected", 2) end
      local want, nwant = {}, 0
      for i, c in ipairs(cap.codecs or {}) do want[i], nwant = parse_cap(c, fname), i end
      local real = false
      -- the offered codecs in the m= order (sdp.codecs without its tables)
      for _, pt in ipairs(m.formats) do
        local enc, rate, ch
        local r = pt_get(m.rtpmap, pt)
        if r then
          enc, rate, ch = r.encoding, r.clock_rate, r.channels
        else
          local st = STATIC[pt]
          if st then enc, rate, ch = st[1], st[2], st[3] end
        end
        local lower = enc and enc:lower()
        for i = 1, lower and nwant or 0 do
          local c = want[i]
          if codec_matches(c, lower, rate, ch, m.media) then
            a.formats[#a.formats + 1] = pt
            a.rtpmap[pt] = { encoding = enc, clock_rate = rate, channels = ch }
            local fmtp = c.fmtp or pt_get(m.fmtp, pt)
            if fmtp then a.fmtp[pt] = fmtp end
            real = real or not AUXILIARY[lower]
            break
          end
        end
      end
      if real then
        used[m.media] = true
        accepted = accepted + 1
        a.port = cap.port
        local mine = DIRECTIONS[cap.direction or "sendrecv"]
        if not mine then error(fname .. ": bad direction " .. tostring(cap.direction), 2) end
        local theirs = effective_direction(o, m)
        -- they send = we receive: swap the two bits, then keep what we allow
        local swapped = (theirs % 2) * 2 + math.floor(theirs / 2)
        local d = 0
        if swapped % 2 == 1 and mine % 2 == 1 then d = d + 1 end
        if swapped >= 2 and mine >= 2 then d = d + 2 end
        a.direction = DIRECTION_NAMES[d]
        a.ptime = cap.ptime
        for _, at in ipairs(cap.attributes or {}) do a.attributes[#a.attributes + 1] = at end
      end
    end
    if a.port == 0 then
      -- rejected (RFC 3264 6): port 0, the offered formats, nothing else
      a.formats, a.rtpmap, a.fmtp = { unpack(m.formats) }, nil, nil
    end
    ans.media[#ans.media + 1] = a
  end
  if accepted == 0 then
    return nil, "488 Not Acceptable Here (no common media or codec)", 488
  end
  local prev
  if caps.previous then
    local perr2
    prev, perr2 = parsed(caps.previous, fname)
    if not prev then error(fname .. ": bad previous SDP: " .. perr2, 2) end
  end
  if prev then
    local po = prev.origin
    ans.origin = { username = po.username, sess_id = po.sess_id, sess_version = po.sess_version,
      nettype = "IN", addrtype = addrtype(caps.address), address = caps.address }
    -- RFC 3264 8: same version when nothing changed, one more otherwise
    local p2 = sdp.parse(sdp.build(prev))
    p2.origin.address, p2.origin.addrtype = ans.origin.address, ans.origin.addrtype
    if sdp.build(p2) ~= sdp.build(sdp.parse(sdp.build(ans))) then
      ans.origin.sess_version = incr(po.sess_version)
    end
  else
    local id = caps.session_id and num(caps.session_id) or new_session_id()
    ans.origin = { username = caps.username or "-", sess_id = id, sess_version = id,
      nettype = "IN", addrtype = addrtype(caps.address), address = caps.address }
  end
  return sdp.build(ans)
end

-- hold / unhold / bump ----------------------------------------------------------------

-- applies fn(direction bits) -> bits to every active stream; bumps the version on change
local function redirect(x, fname, fn)
  local t, err = parsed(x, fname)
  if not t then return nil, err end
  local before = sdp.build(t)
  for _, m in ipairs(t.media) do
    local d = DIRECTIONS[m.direction or t.direction or "sendrecv"]
    if m.port ~= 0 then m.direction = DIRECTION_NAMES[fn(d)] end
  end
  t.direction = nil
  if sdp.build(t) ~= before then t.origin.sess_version = incr(t.origin.sess_version) end
  if type(x) == "string" then return sdp.build(t) end
  return t
end

-- sdp.hold(sdp) -> sdp | nil, err: a new offer putting the peer on hold (RFC 3264 8.4):
-- sendrecv -> sendonly, recvonly -> inactive; the version goes up when something changed
function sdp.hold(x)
  return redirect(x, "luasip.sdp.hold", function(d) return d % 2 end)
end

-- sdp.unhold(sdp) -> sdp | nil, err: the inverse: sendonly -> sendrecv, inactive -> recvonly
function sdp.unhold(x)
  return redirect(x, "luasip.sdp.unhold", function(d) return d < 2 and d + 2 or d end)
end

-- sdp.bump(sdp) -> sdp | nil, err: o= sess-version + 1, for a re-offer; a string comes back
-- with only that field changed
function sdp.bump(x)
  local t, err = parsed(x, "luasip.sdp.bump")
  if not t then return nil, err end
  if type(x) == "table" then
    t.origin.sess_version = incr(t.origin.sess_version)
    return t
  end
  -- v= is the first line, so the o= line follows a line feed
  local i = assert(x:find("\no=", 1, true)) + 1
  local j = x:find("[\r\n]", i) or #x + 1
  local f = split(x:sub(i + 2, j - 1))
  f[3] = incr(f[3])
  return x:sub(1, i - 1) .. "o=" .. table.concat(f, " ") .. x:sub(j)
end

return sdp
