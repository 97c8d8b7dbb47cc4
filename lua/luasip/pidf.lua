-- luasip.pidf: presence documents (PIDF, RFC 3863), built and parsed.  Minimal and
-- tolerant: any namespace prefix, either quote, comments, CDATA and unknown elements
-- are accepted; only tuples (id, basic status, contact, note, timestamp) and the
-- document's notes are read.
--   local body = pidf.build{ entity = "sip:alice@example.com", status = "open" }
--   local doc = pidf.parse(body)   -- doc.status == "open", doc.tuples[1].contact ...
local M = {}

M.content_type = "application/pidf+xml"

local XMLNS = "urn:ietf:params:xml:ns:pidf"

local ESC = { ["&"] = "&amp;", ["<"] = "&lt;", [">"] = "&gt;", ['"'] = "&quot;",
  ["'"] = "&apos;" }

-- escape(s) -> s with the five XML special characters escaped
function M.escape(s)
  return (tostring(s):gsub("[&<>\"']", ESC))
end

local ENTITIES = { amp = "&", lt = "<", gt = ">", quot = '"', apos = "'" }

local function utf8_char(n)
  if n < 0x80 then return string.char(n) end
  if n < 0x800 then return string.char(0xC0 + math.floor(n / 64), 0x80 + n % 64) end
  if n < 0x10000 then
    return string.char(0xE0 + math.floor(n / 4096), 0x80 + math.floor(n / 64) % 64,
      0x80 + n % 64)
  end
  return string.char(0xF0 + math.floor(n / 262144), 0x80 + math.floor(n / 4096) % 64,
    0x80 + math.floor(n / 64) % 64, 0x80 + n % 64)
end

local function unescape(s)
  return (s:gsub("&(#?[%w]+);", function(e)
    if e:sub(1, 2) == "#x" then
      local n = tonumber(e:sub(3), 16)
      return n and utf8_char(n)
    elseif e:sub(1, 1) == "#" then
      local n = tonumber(e:sub(2))
      return n and utf8_char(n)
    end
    return ENTITIES[e]
  end))
end

-- ------------------------------------------------------------------ build

local function tuple_xml(t, i)
  if type(t) ~= "table" then error("luasip.pidf.build: tuples[" .. i .. "] must be a table", 3) end
  local status = t.status or "open"
  if status ~= "open" and status ~= "closed" then
    error('luasip.pidf.build: status must be "open" or "closed"', 3)
  end
  local id = t.id or ("t" .. i)
  local out = { '<tuple id="', M.escape(id), '"><status><basic>', status, "</basic></status>" }
  if t.contact then
    out[#out + 1] = "<contact" .. (t.priority and (' priority="' .. M.escape(t.priority) .. '"')
      or "") .. ">" .. M.escape(t.contact) .. "</contact>"
  end
  if t.note then out[#out + 1] = "<note>" .. M.escape(t.note) .. "</note>" end
  if t.timestamp then out[#out + 1] = "<timestamp>" .. M.escape(t.timestamp) .. "</timestamp>" end
  out[#out + 1] = "</tuple>"
  return table.concat(out)
end

-- build{ entity =, status = "open" | "closed", contact =, note =, id =, timestamp =,
--   tuples = { {id =, status =, contact =, priority =, note =, timestamp =}... },
--   notes = {s...} } -> PIDF document (string).  Without tuples, one tuple is made of
--   status/contact/note/id/timestamp.
function M.build(opts)
  if type(opts) ~= "table" then error("luasip.pidf.build: options table expected", 2) end
  if type(opts.entity) ~= "string" then error("luasip.pidf.build: entity must be a URI", 2) end
  local tuples = opts.tuples
  if tuples == nil then
    tuples = { { id = opts.id, status = opts.status or "open", contact = opts.contact,
      note = opts.note, timestamp = opts.timestamp } }
  elseif type(tuples) ~= "table" then
    error("luasip.pidf.build: tuples must be a list", 2)
  end
  local out = { '<?xml version="1.0" encoding="UTF-8"?>\n<presence xmlns="', XMLNS,
    '" entity="', M.escape(opts.entity), '">' }
  for i, t in ipairs(tuples) do out[#out + 1] = tuple_xml(t, i) end
  for _, n in ipairs(opts.notes or {}) do out[#out + 1] = "<note>" .. M.escape(n) .. "</note>" end
  out[#out + 1] = "</presence>\n"
  return table.concat(out)
end

-- ------------------------------------------------------------------ parse

-- xml(s) -> root element { name = local name, attrs = {}, children = {...}, text = "" }
-- | nil, err.  Not a validating parser: enough for presence documents.
local function parse_xml(s)
  local root = { name = "#document", attrs = {}, children = {}, text = "" }
  local stack, top = { root }, root
  local pos, n = 1, #s
  while pos <= n do
    local lt = s:find("<", pos, true)
    if not lt then
      top.text = top.text .. unescape(s:sub(pos))
      break
    end
    if lt > pos then top.text = top.text .. unescape(s:sub(pos, lt - 1)) end
    if s:sub(lt, lt + 3) == "<!--" then
      local e = s:find("-->", lt + 4, true)
      if not e then return nil, "unterminated comment" end
      pos = e + 3
    elseif s:sub(lt, lt + 8) == "<![CDATA[" then
      local e = s:find("]]>", lt + 9, true)
      if not e then return nil, "unterminated CDATA" end
      top.text = top.text .. s:sub(lt + 9, e - 1)
      pos = e + 3
    elseif s:sub(lt, lt + 1) == "<?" then
      local e = s:find("?>", lt + 2, true)
      if not e then return nil, "unterminated processing instruction" end
      pos = e + 2
    elseif s:sub(lt, lt + 1) == "<!" then
      local e = s:find(">", lt + 2, true)
      if not e then return nil, "unterminated declaration" end
      pos = e + 1
    elseif s:sub(lt, lt + 1) == "</" then
      local name, e = s:match("^</%s*([^%s>]+)%s*>()", lt)
      if not name then return nil, "bad end tag" end
      local lname = name:match(":([^:]+)$") or name
      if #stack < 2 or stack[#stack].name ~= lname then
        return nil, "mismatched </" .. name .. ">"
      end
      stack[#stack] = nil
      top = stack[#stack]
      pos = e
    else
      -- a start tag: attribute values may hold '>' inside quotes
      local i, q = lt + 1, nil
      while i <= n do
        local c = s:sub(i, i)
        if q then
          if c == q then q = nil end
        elseif c == '"' or c == "'" then q = c
        elseif c == ">" then break end
        i = i + 1
      end
      if i > n then return nil, "unterminated tag" end
      local inner = s:sub(lt + 1, i - 1)
      local empty = inner:sub(-1) == "/"
      if empty then inner = inner:sub(1, -2) end
      local name, rest = inner:match("^%s*([^%s/>]+)(.*)$")
      if not name then return nil, "bad tag" end
      local el = { name = name:match(":([^:]+)$") or name, attrs = {}, children = {}, text = "" }
      for k, _, v in rest:gmatch("([^%s=]+)%s*=%s*([\"'])(.-)%2") do
        el.attrs[k:match(":([^:]+)$") or k] = unescape(v)
      end
      top.children[#top.children + 1] = el
      if not empty then
        stack[#stack + 1] = el
        top = el
      end
      pos = i + 1
    end
  end
  if #stack > 1 then return nil, "unclosed <" .. stack[#stack].name .. ">" end
  return root
end

local function child(el, name)
  for _, c in ipairs(el.children) do if c.name == name then return c end end
end

local function trim(s) return s and (s:match("^%s*(.-)%s*$")) end

-- parse(body) -> { entity =, status = "open" | "closed" | nil, tuples = { {id =,
--   status =, contact =, priority =, note =, timestamp =}... }, notes = {s...} }
--   | nil, err.  status is "open" when any tuple is open, "closed" when tuples exist and
--   none is, nil without tuples.
function M.parse(body)
  if type(body) ~= "string" then return nil, "PIDF document expected" end
  local root, err = parse_xml(body)
  if not root then return nil, err end
  local presence = child(root, "presence")
  if not presence then return nil, "no <presence> element" end
  local doc = { entity = presence.attrs.entity, tuples = {}, notes = {} }
  for _, el in ipairs(presence.children) do
    if el.name == "tuple" then
      local st = child(el, "status")
      local basic = st and child(st, "basic")
      local contact = child(el, "contact")
      local note = child(el, "note")
      local ts = child(el, "timestamp")
      local t = { id = el.attrs.id, status = basic and trim(basic.text):lower() or nil,
        contact = contact and trim(contact.text), note = note and trim(note.text),
        priority = contact and tonumber(contact.attrs.priority),
        timestamp = ts and trim(ts.text) }
      doc.tuples[#doc.tuples + 1] = t
      if t.status == "open" then doc.status = "open"
      elseif doc.status == nil and t.status == "closed" then doc.status = "closed" end
    elseif el.name == "note" then
      doc.notes[#doc.notes + 1] = trim(el.text)
    end
  end
  return doc
end

-- merge(entity, bodies) -> one PIDF document with the tuples of every parseable body
-- (tuple ids made unique), for composing several publications of one presentity
function M.merge(entity, bodies)
  if type(entity) ~= "string" then error("luasip.pidf.merge: entity must be a URI", 2) end
  if type(bodies) ~= "table" then error("luasip.pidf.merge: list of documents expected", 2) end
  local tuples, notes, seen = {}, {}, {}
  for _, b in ipairs(bodies) do
    local doc = M.parse(b)
    for _, t in ipairs(doc and doc.tuples or {}) do
      local id = t.id or ("t" .. (#tuples + 1))
      while seen[id] do id = id .. "-" .. (#tuples + 1) end
      seen[id] = true
      tuples[#tuples + 1] = { id = id, status = t.status == "open" and "open" or "closed",
        contact = t.contact, priority = t.priority, note = t.note, timestamp = t.timestamp }
    end
    for _, n in ipairs(doc and doc.notes or {}) do notes[#notes + 1] = n end
  end
  return M.build{ entity = entity, tuples = tuples, notes = notes }
end

return M
