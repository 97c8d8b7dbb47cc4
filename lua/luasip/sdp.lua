-- SDP (RFC 8866 / 4566) parse and build, and an RFC 3264 offer/answer helper for
-- endpoints: answer, hold, unhold, bump.  Pure Lua on purpose: sofia's soa is a stateful
-- engine bound to nua sessions, while a dialog here only needs "given this offer and these
-- capabilities, what is my answer"; plain tables are easier to inspect and edit in a
-- script.  Parsed tables are plain data: build() reads only the fields documented below.
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

local function is_uint(s) return s ~= nil and s:match("^%d+$") ~= nil end

-- payload-type keyed maps: keys are the format strings ("0", "101"); numbers work too
local pt_meta = { __index = function(t, k)
  if type(k) == "number" then return rawget(t, tostring(k)) end
end }
local function pt_map() return setmetatable({}, pt_meta) end
local function pt_get(map, pt)
  if not map then return nil end
  local v = map[pt]
  if v == nil and tonumber(pt) then v = map[tonumber(pt)] end
  return v
end

-- parse ---------------------------------------------------------------------------

local function parse_connection(v)
  local f = split(v)
  if #f ~= 3 then return nil, "c= needs <nettype> <addrtype> <address>" end
  local c = { nettype = f[1], addrtype = f[2] }
  local addr, a, b = f[3]:match("^([^/]+)/?([^/]*)/?([^/]*)$")
  if not addr then return nil, "bad c= address" end
  c.address = addr
  if a ~= "" then
    if not is_uint(a) or (b ~= "" and not is_uint(b)) then return nil, "bad c= address suffix" end
    if c.addrtype:upper() == "IP6" then
      if b ~= "" then return nil, "IP6 c= address takes only /<count>" end
      c.count = tonumber(a)
    else
      c.ttl = tonumber(a)
      if b ~= "" then c.count = tonumber(b) end
    end
  end
  return c
end

local function parse_bandwidth(v)
  local t, n = v:match("^([%w%-_%.!%%%*%+`'~]+):(%d+)$")
  if not t then return nil, "b= needs <bwtype>:<bandwidth>" end
  return { type = t, bandwidth = tonumber(n) }
end

local function parse_origin(v)
  local f = split(v)
  if #f ~= 6 then return nil, "o= needs 6 fields" end
  if not is_uint(f[2]) or not is_uint(f[3]) then
    return nil, "o= sess-id and sess-version must be numbers"
  end
  return { username = f[1], sess_id = f[2], sess_version = f[3], nettype = f[4],
    addrtype = f[5], address = f[6] }
end

local TYPED_TIME = "^%-?%d+[dhms]?$"

-- the a= lines that have their own fields in a media table
local function media_attribute(m, name, value)
  if name == "rtpmap" then
    local pt, enc, rate, ch = (value or ""):match("^(%S+)%s+([^/%s]+)/(%d+)/?(%d*)%s*$")
    -- a malformed rtpmap (RFC 4475's esc01 has "a=rtpmap:31 LPC") stays a plain
    -- attribute: attributes not understood are ignored (RFC 8866 5.13)
    if not pt then return nil end
    m.rtpmap[pt] = { encoding = enc, clock_rate = tonumber(rate), channels = tonumber(ch) }
    return true
  elseif name == "fmtp" then
    local pt, params = (value or ""):match("^(%S+)%s+(.-)%s*$")
    if not pt then pt, params = (value or ""):match("^(%S+)$"), "" end
    if not pt then return nil, "a=fmtp needs <format> <parameters>" end
    m.fmtp[pt] = params
    return true
  elseif DIRECTIONS[name] and value == nil then
    m.direction = name
    return true
  elseif (name == "ptime" or name == "maxptime") and value then
    local n = tonumber(value)
    if not n or n <= 0 then return nil, "a=" .. name .. " needs a positive number" end
    m[name] = n
    return true
  end
end

-- sdp.parse(str) -> table | nil, err
function sdp.parse(str)
  if type(str) ~= "string" then
    error("luasip.sdp.parse: string expected, got " .. type(str), 2)
  end
  local s = { attributes = {}, bandwidths = {}, emails = {}, phones = {}, times = {},
    media = {} }
  local cur = s           -- the session, then the current media description
  local lineno, pos = 0, 1
  local saw = {}
  local err
  local function fail(msg) err = ("line %d: %s"):format(lineno, msg) end
  while pos <= #str do
    local e = str:find("\n", pos, true)
    local line = str:sub(pos, (e or #str + 1) - 1)
    pos = (e or #str) + 1
    lineno = lineno + 1
    line = line:gsub("\r$", "")
    -- RFC 8866 9: no NUL or CR inside a line (build could not write it back)
    if line:find("[\r%z]") then fail("NUL or CR inside a line") break end
    if line ~= "" then
      local t, v = line:match("^(%a)=(.*)$")
      if not t then fail("expected <type>=<value>, got '" .. line:sub(1, 40) .. "'") break end
      if not saw.v and t ~= "v" then fail("an SDP starts with v=") break end
      local in_media = cur ~= s
      if t == "v" then
        if saw.v then fail("second v= line") break end
        if v ~= "0" then fail("unsupported version v=" .. v) break end
        s.version = 0
      elseif t == "o" and not in_media then
        if saw.o then fail("second o= line") break end
        local o, oerr = parse_origin(v)
        if not o then fail(oerr) break end
        s.origin = o
      elseif t == "s" and not in_media then
        if saw.s then fail("second s= line") break end
        s.name = v
      elseif t == "i" then
        if cur.info then fail("second i= line") break end
        cur.info = v
      elseif t == "u" and not in_media then
        s.uri = v
      elseif t == "e" and not in_media then
        s.emails[#s.emails + 1] = v
      elseif t == "p" and not in_media then
        s.phones[#s.phones + 1] = v
      elseif t == "c" then
        if cur.connection then
          fail(in_media and "more than one c= in a media description is not supported"
            or "second c= line") break
        end
        local c, cerr = parse_connection(v)
        if not c then fail(cerr) break end
        cur.connection = c
      elseif t == "b" then
        local b, berr = parse_bandwidth(v)
        if not b then fail(berr) break end
        cur.bandwidths[#cur.bandwidths + 1] = b
      elseif t == "t" and not in_media then
        local f = split(v)
        if #f ~= 2 or not is_uint(f[1]) or not is_uint(f[2]) then
          fail("t= needs <start-time> <stop-time>") break
        end
        s.times[#s.times + 1] = { start = tonumber(f[1]), stop = tonumber(f[2]) }
      elseif t == "r" and not in_media then
        local last = s.times[#s.times]
        if not last then fail("r= before any t=") break end
        local f = split(v)
        local ok = #f >= 3
        for _, w in ipairs(f) do ok = ok and w:match(TYPED_TIME) ~= nil end
        if not ok then fail("r= needs <interval> <duration> <offsets>...") break end
        last.repeats = last.repeats or {}
        last.repeats[#last.repeats + 1] = { interval = f[1], duration = f[2],
          offsets = { unpack(f, 3) } }
      elseif t == "z" and not in_media then
        if s.zones then fail("second z= line") break end
        local f = split(v)
        local ok = #f >= 2 and #f % 2 == 0
        for i = 1, #f, 2 do
          ok = ok and is_uint(f[i]) and f[i + 1]:match(TYPED_TIME) ~= nil
        end
        if not ok then fail("z= needs <adjustment time> <offset> pairs") break end
        s.zones = {}
        for i = 1, #f, 2 do s.zones[#s.zones + 1] = { time = f[i], offset = f[i + 1] } end
      elseif t == "k" then
        if cur.key then fail("second k= line") break end
        cur.key = v
      elseif t == "a" then
        local name, value = v:match("^([^:]+):(.*)$")
        if not name then name = v end
        if name == "" or name:find("%s") then fail("bad attribute name in a=" .. v) break end
        local handled, aerr
        if in_media then
          handled, aerr = media_attribute(cur, name, value)
          if aerr then fail(aerr) break end
        elseif DIRECTIONS[name] and value == nil then
          s.direction, handled = name, true
        end
        if not handled then cur.attributes[#cur.attributes + 1] = { name = name, value = value } end
      elseif t == "m" then
        local f = split(v)
        if #f < 3 then fail("m= needs <media> <port> <proto> <fmt>...") break end
        local port, count = f[2]:match("^(%d+)/?(%d*)$")
        if not port or tonumber(port) > 65535 then fail("bad m= port '" .. f[2] .. "'") break end
        cur = { media = f[1], port = tonumber(port), port_count = tonumber(count), proto = f[3],
          formats = { unpack(f, 4) }, bandwidths = {}, attributes = {},
          rtpmap = pt_map(), fmtp = pt_map() }
        s.media[#s.media + 1] = cur
      else
        fail(("unknown or misplaced %s= line"):format(t)) break
      end
      saw[t] = true
    end
  end
  if err then return nil, err end
  if not saw.v then return nil, "line 1: empty SDP" end
  if not s.origin then return nil, "no o= line" end
  for _, m in ipairs(s.media) do
    m.direction = m.direction or s.direction or "sendrecv"
  end
  return s
end

-- build ---------------------------------------------------------------------------

local function num(n)
  if type(n) == "number" and n == math.floor(n) and n < 2 ^ 53 then
    return ("%d"):format(n)
  end
  return tostring(n)
end

local function field(v, what, fname)
  if v == nil then error(("%s: %s missing"):format(fname, what), 3) end
  v = type(v) == "number" and num(v) or v
  if type(v) ~= "string" then error(("%s: %s must be a string"):format(fname, what), 3) end
  return v
end

-- sdp.build(table) -> string (CRLF line ends, fields in the RFC 8866 order)
function sdp.build(t)
  local fname = "luasip.sdp.build"
  if type(t) ~= "table" then error(fname .. ": table expected, got " .. type(t), 2) end
  local out = {}
  local function line(ty, v)
    if v:find("[\r\n%z]") then
      error(("%s: line break or NUL in the %s= line"):format(fname, ty), 3)
    end
    out[#out + 1] = ty .. "=" .. v
  end
  local function connection(c)
    if type(c) ~= "table" then error(fname .. ": connection must be a table", 3) end
    local addr = field(c.address, "connection.address", fname)
    if c.ttl then addr = addr .. "/" .. num(c.ttl) end
    if c.count then addr = addr .. "/" .. num(c.count) end
    line("c", (c.nettype or "IN") .. " " .. (c.addrtype or (addr:find(":") and "IP6" or "IP4"))
      .. " " .. addr)
  end
  local function bandwidths(list)
    for _, b in ipairs(list or {}) do
      line("b", field(b.type, "bandwidth type", fname) .. ":"
        .. field(b.bandwidth, "bandwidth", fname))
    end
  end
  local function attribute(a)
    local name = field(a.name, "attribute name", fname)
    if a.value == nil or a.value == true then line("a", name)
    else line("a", name .. ":" .. field(a.value, "attribute value", fname)) end
  end

  line("v", num(t.version or 0))
  local o = t.origin
  if type(o) ~= "table" then error(fname .. ": origin table expected", 2) end
  local oaddr = field(o.address, "origin.address", fname)
  line("o", table.concat({ o.username or "-", field(o.sess_id, "origin.sess_id", fname),
    field(o.sess_version, "origin.sess_version", fname), o.nettype or "IN",
    o.addrtype or (oaddr:find(":") and "IP6" or "IP4"), oaddr }, " "))
  line("s", t.name ~= nil and field(t.name, "name", fname) or "-")
  if t.info then line("i", field(t.info, "info", fname)) end
  if t.uri then line("u", field(t.uri, "uri", fname)) end
  for _, e in ipairs(t.emails or {}) do line("e", field(e, "email", fname)) end
  for _, p in ipairs(t.phones or {}) do line("p", field(p, "phone", fname)) end
  if t.connection then connection(t.connection) end
  bandwidths(t.bandwidths)
  local times = t.times
  if not times or #times == 0 then times = { { start = 0, stop = 0 } } end
  for _, tm in ipairs(times) do
    line("t", num(tm.start or 0) .. " " .. num(tm.stop or 0))
    for _, r in ipairs(tm.repeats or {}) do
      line("r", table.concat({ field(r.interval, "repeat interval", fname),
        field(r.duration, "repeat duration", fname), unpack(r.offsets or {}) }, " "))
    end
  end
  if t.zones and #t.zones > 0 then
    local z = {}
    for _, zz in ipairs(t.zones) do
      z[#z + 1] = field(zz.time, "zone time", fname) .. " " .. field(zz.offset, "zone offset", fname)
    end
    line("z", table.concat(z, " "))
  end
  if t.key then line("k", field(t.key, "key", fname)) end
  if t.direction then
    if not DIRECTIONS[t.direction] then error(fname .. ": bad direction " .. tostring(t.direction), 2) end
    line("a", t.direction)
  end
  for _, a in ipairs(t.attributes or {}) do attribute(a) end

  for _, m in ipairs(t.media or {}) do
    local formats = m.formats or {}
    local mline = { field(m.media, "media", fname),
      field(m.port, "media port", fname) .. (m.port_count and "/" .. num(m.port_count) or ""),
      m.proto or "RTP/AVP" }
    for _, f in ipairs(formats) do mline[#mline + 1] = field(f, "format", fname) end
    line("m", table.concat(mline, " "))
    if m.info then line("i", field(m.info, "media info", fname)) end
    if m.connection then connection(m.connection) end
    bandwidths(m.bandwidths)
    if m.key then line("k", field(m.key, "media key", fname)) end
    -- rtpmap and fmtp in the order of the formats, then any for formats not listed
    local done_r, done_f = {}, {}
    local function rtpmap_line(pt, r)
      if type(r) ~= "table" then error(fname .. ": rtpmap entries must be tables", 4) end
      line("a", ("rtpmap:%s %s/%s%s"):format(pt, field(r.encoding, "rtpmap encoding", fname),
        field(r.clock_rate, "rtpmap clock_rate", fname), r.channels and "/" .. num(r.channels) or ""))
    end
    local function fmtp_line(pt, p) line("a", "fmtp:" .. pt .. " " .. field(p, "fmtp", fname)) end
    for _, f in ipairs(formats) do
      local r = pt_get(m.rtpmap, f)
      if r and not done_r[f] then rtpmap_line(f, r) end
      local p = pt_get(m.fmtp, f)
      if p and not done_f[f] then fmtp_line(f, p) end
      done_r[f], done_f[f] = true, true
    end
    local rest = {}
    for pt in pairs(m.rtpmap or {}) do
      if not done_r[tostring(pt)] then rest[#rest + 1] = pt end
    end
    table.sort(rest, function(a, b) return tostring(a) < tostring(b) end)
    for _, pt in ipairs(rest) do rtpmap_line(tostring(pt), m.rtpmap[pt]) end
    rest = {}
    for pt in pairs(m.fmtp or {}) do
      if not done_f[tostring(pt)] then rest[#rest + 1] = pt end
    end
    table.sort(rest, function(a, b) return tostring(a) < tostring(b) end)
    for _, pt in ipairs(rest) do fmtp_line(tostring(pt), m.fmtp[pt]) end
    if m.ptime then line("a", "ptime:" .. num(m.ptime)) end
    if m.maxptime then line("a", "maxptime:" .. num(m.maxptime)) end
    for _, a in ipairs(m.attributes or {}) do attribute(a) end
    -- a rejected stream (port 0) needs no direction; sendrecv is what parse() fills in
    if m.direction and not (m.port == 0 and m.direction == "sendrecv") then
      if not DIRECTIONS[m.direction] then error(fname .. ": bad direction " .. tostring(m.direction), 2) end
      line("a", m.direction)
    end
  end
  out[#out + 1] = ""
  return table.concat(out, "\r\n")
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

local function parse_cap(c, fname)
  if type(c) == "table" then
    if type(c.encoding) ~= "string" then error(fname .. ": codec tables need an encoding", 3) end
    return c
  end
  if type(c) ~= "string" then error(fname .. ": codecs are strings like \"PCMU/8000\"", 3) end
  local enc, rate, ch = c:match("^([^/]+)/?(%d*)/?(%d*)$")
  if not enc then error(fname .. ": bad codec '" .. c .. "'", 3) end
  return { encoding = enc, clock_rate = tonumber(rate), channels = tonumber(ch) }
end

local function codec_matches(cap, offered, media)
  if not offered.encoding or cap.encoding:lower() ~= offered.encoding:lower() then return false end
  if cap.clock_rate and cap.clock_rate ~= offered.clock_rate then return false end
  if media == "audio" and cap.channels and cap.channels ~= (offered.channels or 1) then
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
    local a = { media = m.media, port = 0, proto = m.proto, formats = {}, bandwidths = {},
      attributes = {}, rtpmap = pt_map(), fmtp = pt_map() }
    local protos = cap and cap.protos or { "RTP/AVP" }
    local proto_ok = false
    for _, p in ipairs(protos) do proto_ok = proto_ok or p:upper() == m.proto:upper() end
    if cap and m.port ~= 0 and proto_ok and not used[m.media] then
      if type(cap.port) ~= "number" then error(fname .. ": media." .. m.media .. ".port expected", 2) end
      local want = {}
      for i, c in ipairs(cap.codecs or {}) do want[i] = parse_cap(c, fname) end
      local real = false
      for _, offered in ipairs(sdp.codecs(m)) do
        for _, c in ipairs(want) do
          if codec_matches(c, offered, m.media) then
            local pt = offered.pt
            a.formats[#a.formats + 1] = pt
            a.rtpmap[pt] = { encoding = offered.encoding, clock_rate = offered.clock_rate,
              channels = offered.channels }
            local fmtp = c.fmtp or offered.fmtp
            if fmtp then a.fmtp[pt] = fmtp end
            real = real or not AUXILIARY[offered.encoding:lower()]
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
