-- luasip.registrar: a REGISTER handler (RFC 3261 10.3, Path of RFC 3327) on top of a
-- location service (luasip.location) and its store.
--   local reg, loc = sip.registrar{ min_expires = 60 }
--   app:on("REGISTER", reg)
--   ... loc:lookup("sip:alice@example.com") -> targets, highest q first
-- The handler answers without yielding when its store does not yield (the memory store),
-- so the 200 goes out statelessly (DESIGN D9).
local location = require "luasip.location"
local outage = require "luasip.store.outage"

local M = {}

-- Splits header values on the commas that are outside <...> and "...".
local function split_list(values)
  local out = {}
  for _, v in ipairs(values) do
    local depth, quoted, start, i = 0, false, 1, 1
    while i <= #v do
      local c = v:sub(i, i)
      if quoted then
        if c == '"' then quoted = false elseif c == "\\" then i = i + 1 end
      elseif c == '"' then quoted = true
      elseif c == "<" then depth = depth + 1
      elseif c == ">" then depth = depth - 1
      elseif c == "," and depth == 0 then
        local item = v:sub(start, i - 1):match("^%s*(.-)%s*$")
        if item ~= "" then out[#out + 1] = item end
        start = i + 1
      end
      i = i + 1
    end
    local last = v:sub(start):match("^%s*(.-)%s*$")
    if last ~= "" then out[#out + 1] = last end
  end
  return out
end

-- (header(), nil when absent, before the lists: most REGISTERs have no Supported or Path)
local function supports(req, tag)
  if not req:header("Supported") then return false end
  for _, t in ipairs(split_list(req:headers("Supported"))) do
    if t:lower() == tag then return true end
  end
  return false
end

-- (formatted once per second: every 200 of a second carries the same Date)
local date_second, date_text
local function http_date()
  local t = os.time()
  if t ~= date_second then
    date_second, date_text = t, os.date("!%a, %d %b %Y %H:%M:%S GMT", t)
  end
  return date_text
end

local function fmt_q(q)
  local s = ("%.3f"):format(q):gsub("0+$", ""):gsub("%.$", "")
  return s
end

-- Contact value of a binding for the 200: <uri>;expires=N[;q=][;+sip.instance=][;reg-id=]
local function contact_value(b)
  local v = "<" .. b.uri .. ">;expires=" .. b.expires
  if b.q then v = v .. ";q=" .. fmt_q(b.q) end
  if b.instance then v = v .. ';+sip.instance="<' .. b.instance .. '>"' end
  if b.reg_id then v = v .. ";reg-id=" .. b.reg_id end
  return v
end

local function unquote_instance(v)
  if type(v) ~= "string" then return nil end
  return v:match('^"<(.*)>"$') or v:match('^"(.*)"$') or v
end

local function check_seconds(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "number" or v < 0 or v % 1 ~= 0 then
    error("luasip.registrar: " .. name .. " must be a whole number of seconds >= 0", 3)
  end
  return v
end

local function check_fn(opts, name, default)
  local v = opts[name]
  if v == nil then return default end
  if type(v) ~= "function" then error("luasip.registrar: " .. name .. " must be a function", 3) end
  return v
end

local function allow() return true end
local function deny() return false end

-- Reads the Contact header fields of req into changes: { uri, expires, q, instance,
-- reg_id, params }.  -> changes | nil, status, reason, headers
local function read_contacts(req, contacts, cfg)
  local changes, too_brief = {}, false
  local req_expires = req.expires
  for _, c in ipairs(contacts) do
    local params = c.params or {}
    local e = params.expires
    if e ~= nil then
      if type(e) ~= "string" or not e:match("^%d+$") then
        return nil, 400, "Invalid Contact expires"
      end
      e = tonumber(e)
    elseif req_expires then
      e = req_expires
    else
      e = cfg.default_expires
    end
    -- 10.3 step 7: 423 iff 0 < expires < 1 hour and below the configured minimum
    if e > 0 and e < 3600 and e < cfg.min_expires then too_brief = true end
    if e > cfg.max_expires then e = cfg.max_expires end
    local q = params.q
    if q ~= nil then
      q = type(q) == "string" and q:match("^%d[%.%d]*$") and tonumber(q)
      if not q or q > 1 then return nil, 400, "Invalid Contact q" end
    end
    local extra = {}
    for k, v in pairs(params) do
      if k ~= "expires" and k ~= "q" then extra[k] = v end
    end
    changes[#changes + 1] = { uri = c.uri, expires = e, q = q,
      instance = unquote_instance(params["+sip.instance"]),
      reg_id = params["reg-id"] and tonumber(params["reg-id"]) or nil, params = extra }
  end
  if too_brief then
    return nil, 423, "Interval Too Brief", { ["Min-Expires"] = tostring(cfg.min_expires) }
  end
  return changes
end

-- registrar{ realm =, domains = {host...}, min_expires = 60, max_expires = 86400,
--   default_expires = 3600, store =, location =, authorize = fn(req, aor) -> true | nil,
--   third_party = fn(req, from_aor, to_aor, identity) -> boolean, nat = false }
--   -> handler, location
-- Each binding keeps where its REGISTER came from (received: address, port, transport);
-- nat = true sends requests for every binding there (the "fix NATed contact" policy),
-- else only TCP/TLS ones (their connection) and RFC 5626 outbound ones (Supported:
-- outbound, +sip.instance and reg-id: one binding per instance and reg-id, the newest
-- flow replacing the old).
-- realm is checked and kept for digest authentication (not used yet); without domains
-- every domain is served; authorize may answer req itself (a 401 challenge).
function M.new(opts)
  opts = opts or {}
  if type(opts) ~= "table" then error("luasip.registrar: options table expected", 2) end
  local cfg = {
    min_expires = check_seconds(opts, "min_expires", 60),
    max_expires = check_seconds(opts, "max_expires", 86400),
    default_expires = check_seconds(opts, "default_expires", 3600),
  }
  if cfg.min_expires > cfg.max_expires then
    error("luasip.registrar: min_expires is above max_expires", 2)
  end
  if cfg.default_expires == 0 then error("luasip.registrar: default_expires must be > 0", 2) end
  if opts.realm ~= nil and type(opts.realm) ~= "string" then
    error("luasip.registrar: realm must be a string", 2)
  end
  local domains
  if opts.domains ~= nil then
    if type(opts.domains) ~= "table" then
      error("luasip.registrar: domains must be a list of host names", 2)
    end
    domains = {}
    for _, d in ipairs(opts.domains) do
      if type(d) ~= "string" then error("luasip.registrar: domains must be strings", 2) end
      domains[d:lower()] = true
    end
  end
  if opts.nat ~= nil and type(opts.nat) ~= "boolean" then
    error("luasip.registrar: nat must be a boolean", 2)
  end
  local nat = opts.nat or nil
  local authorize = check_fn(opts, "authorize", allow)
  local third_party = check_fn(opts, "third_party", deny)
  local loc = opts.location
  if loc == nil then
    loc = location.new{ store = opts.store }
  elseif type(loc) ~= "table" or type(loc.update) ~= "function" then
    error("luasip.registrar: location must be a luasip location", 2)
  end

  local function handler(req)
    -- step 5 (parsed first: the hooks get the AOR): AOR = To URI, canonical
    local to = req.to                  -- (each field read is a call into the core)
    local to_aor = location.aor(to and to.uri)
    if not to_aor then return req:reply(400, "To Must Be A SIP Or SIPS URI") end
    -- steps 3 and 4: authentication and authorisation (the hook may answer itself)
    local identity = authorize(req, to_aor)
    if req:answered() then return end
    if not identity then return req:reply(403, "Forbidden") end
    local from = req.from
    local from_aor = location.aor(from and from.uri)
    if from_aor ~= to_aor and not third_party(req, from_aor, to_aor, identity) then
      return req:reply(403, "Third-Party Registration Forbidden")
    end
    if domains and not domains[location.parse_uri(to_aor).host] then
      return req:reply(404, "Not Found")
    end

    -- step 6: Contact
    local contacts = req.contact or {}
    local star, changes = false, nil
    for _, c in ipairs(contacts) do if c.star then star = true end end
    if star then
      if #contacts > 1 or req.expires ~= 0 then
        return req:reply(400, "Invalid Contact *")
      end
    elseif #contacts > 0 then
      local status, reason, headers
      changes, status, reason, headers = read_contacts(req, contacts, cfg)
      if not changes then return req:reply(status, reason, { headers = headers }) end
    end

    local call_id, cseq = req.call_id, req.cseq
    local path = req:header("Path") and split_list(req:headers("Path"))
    if path and #path == 0 then path = nil end
    -- RFC 5630: a sips: Contact is reached over TLS; the UA's own hop (no Path: no edge
    -- proxy in between) shows whether it speaks TLS
    if changes and not path and req.transport ~= "tls" then
      for _, ch in ipairs(changes) do
        if ch.expires > 0 and ch.uri:sub(1, 5):lower() == "sips:" then
          return req:reply(400, "SIPS Contact Needs TLS")
        end
      end
    end
    -- RFC 5626 6: outbound applies to Contacts with +sip.instance and reg-id when the UA
    -- supports it; the first hop (the edge proxy of the Path, or us) must too
    local outbound = changes and supports(req, "outbound") or false
    if outbound then
      local any = false
      for _, ch in ipairs(changes) do
        if ch.instance and ch.reg_id and ch.expires > 0 then any = true end
      end
      outbound = any
      if any and path and not path[1]:match(";%s*ob[;>%s=]") then
        return req:reply(439, "First Hop Lacks Outbound Support")
      end
    end
    local bindings, err, code
    if star then
      bindings, err, code = loc:update(to_aor, function(list)
        for _, b in ipairs(list) do
          if b.call_id == call_id and cseq <= b.cseq then
            return nil, "Out Of Order REGISTER", 500
          end
        end
        return {}
      end)
    elseif changes then
      local source = req.source
      local received = location.flow_uri(source)
      local user_agent = req:header("User-Agent")
      -- step 7: all or nothing; the CSeq rule compares with the bindings as they were
      bindings, err, code = loc:update(to_aor, function(list, now)
        local out, fresh = {}, {}
        for i, b in ipairs(list) do out[i] = b end
        for _, ch in ipairs(changes) do
          local idx
          local ob = outbound and ch.instance and ch.reg_id and true or nil
          for i, b in ipairs(out) do
            -- RFC 5626 6: the same instance and reg-id is the same binding (a new flow)
            if ob and b.ob and b.instance == ch.instance and b.reg_id == ch.reg_id
              or location.uri_equal(b.uri, ch.uri) then
              idx = i
              break
            end
          end
          local old = idx and out[idx]
          if old and not fresh[old] and old.call_id == call_id and cseq <= old.cseq then
            return nil, "Out Of Order REGISTER", 500
          end
          if ch.expires == 0 then
            if idx then table.remove(out, idx) end
          else
            local b = { uri = ch.uri, q = ch.q, expires_at = now + ch.expires,
              call_id = call_id, cseq = cseq, path = path, source = source,
              user_agent = user_agent, instance = ch.instance, reg_id = ch.reg_id,
              params = ch.params, registered_at = old and old.registered_at or now,
              updated_at = now, received = received, ob = ob, nat = nat }
            fresh[b] = true
            if idx then out[idx] = b else out[#out + 1] = b end
          end
        end
        return out
      end)
    else
      bindings, err, code = loc:bindings(to_aor)   -- a fetch (10.2.3)
    end
    if not bindings then
      if type(code) == "number" then return req:reply(code, err) end
      return outage.reply(req, "Location", to_aor .. ": " .. tostring(err), code)
    end

    -- step 8: every current binding with what it has left; Path echoed (RFC 3327 5.3)
    local headers = { Date = http_date() }
    if #bindings > 0 then
      local list = {}
      for i, b in ipairs(bindings) do list[i] = contact_value(b) end
      headers.Contact = list
    end
    if path and changes and supports(req, "path") then headers.Path = path end
    if outbound then headers.Require = "outbound" end
    return req:reply(200, "OK", { headers = headers })
  end

  return handler, loc
end

M.split_list = split_list

return M
