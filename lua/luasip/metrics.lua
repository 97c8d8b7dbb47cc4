-- luasip.metrics: the Prometheus page (text exposition format 0.0.4) and the registry
-- applications add their own metrics to.  The C core counts messages where they are
-- received and sent (csrc/metrics.c) and serves the page over HTTP on the luasip loop;
-- this module adds the application's counters, gauges and histograms and the figures
-- the Lua layer knows (registrations, subscriptions).
--   local m = assert(sip.metrics{ listen = "127.0.0.1:9100" })   -- m.port, m:close()
--   local calls = sip.metrics.counter{ name = "app_calls_total", help = "Calls.",
--                                      labels = { "route" } }
--   calls:inc(1, { route = "voicemail" })
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

local unpack = table.unpack or unpack

local M = {}

local NAME = "^[%a_:][%w_:]*$"
local LABEL = "^[%a_][%w_]*$"
local DEFAULT_BUCKETS = { 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10 }

local families, order = {}, {}   -- name -> family; names in registration order

-- ------------------------------------------------------------------ formatting

local function num(v)
  if v ~= v then return "NaN" end
  if v == math.huge then return "+Inf" end
  if v == -math.huge then return "-Inf" end
  if v % 1 == 0 and v > -2^53 and v < 2^53 then return string.format("%d", v) end
  return string.format("%.17g", v)
end

local LABEL_ESC = { ["\\"] = "\\\\", ['"'] = '\\"', ["\n"] = "\\n" }
local function label_value(s) return (s:gsub('[\\"\n]', LABEL_ESC)) end
local function help_text(s) return (s:gsub("[\\\n]", LABEL_ESC)) end

-- '{a="x",b="y"' for the label values of a child (no closing brace), or nil
local function label_text(fam, values, extra)
  local parts = {}
  for i, l in ipairs(fam.label_names) do parts[i] = l .. '="' .. label_value(values[i]) .. '"' end
  if extra then parts[#parts + 1] = extra end
  if #parts == 0 then return "" end
  return "{" .. table.concat(parts, ",") .. "}"
end

local function render_family(fam, out)
  out[#out + 1] = "# HELP " .. fam.name .. " " .. help_text(fam.help) .. "\n"
  out[#out + 1] = "# TYPE " .. fam.name .. " " .. fam.kind .. "\n"
  for _, key in ipairs(fam.keys) do
    local child = fam.children[key]
    if fam.kind == "histogram" then
      local cum = 0
      for i, le in ipairs(fam.buckets) do
        cum = cum + child.counts[i]
        out[#out + 1] = fam.name .. "_bucket"
          .. label_text(fam, child.values, 'le="' .. num(le) .. '"') .. " " .. num(cum) .. "\n"
      end
      out[#out + 1] = fam.name .. "_bucket" .. label_text(fam, child.values, 'le="+Inf"')
        .. " " .. num(child.count) .. "\n"
      local lt = label_text(fam, child.values)
      out[#out + 1] = fam.name .. "_sum" .. lt .. " " .. num(child.sum) .. "\n"
      out[#out + 1] = fam.name .. "_count" .. lt .. " " .. num(child.count) .. "\n"
    else
      out[#out + 1] = fam.name .. label_text(fam, child.values) .. " " .. num(child.value) .. "\n"
    end
  end
end

-- ------------------------------------------------------------------ the Lua layer's figures

-- registrations: AORs with bindings in every location (stores that answer without
-- waiting: a Redis store needs a coroutine and is left out); subscriptions: the
-- subscriptions of every notifier
local function lua_figures(out)
  local regs, subs = 0, 0
  local location = package.loaded["luasip.location"]
  for loc in pairs(location and location.instances or {}) do
    local ok, list = pcall(loc.aors, loc)
    if ok and type(list) == "table" then regs = regs + #list end
  end
  local events = package.loaded["luasip.events"]
  for n in pairs(events and events.instances or {}) do subs = subs + (n.count or 0) end
  out[#out + 1] = "# HELP luasip_registrations Address-of-records with bindings in the "
    .. "locations of the process.\n# TYPE luasip_registrations gauge\n"
    .. "luasip_registrations " .. regs .. "\n"
  out[#out + 1] = "# HELP luasip_subscriptions Subscriptions held by the notifiers of "
    .. "the process.\n# TYPE luasip_subscriptions gauge\n"
    .. "luasip_subscriptions " .. subs .. "\n"
end

-- The Lua part of the page: the Lua layer's figures, then the application's metrics.
local function extra_text()
  local out = {}
  lua_figures(out)
  for _, name in ipairs(order) do render_family(families[name], out) end
  return table.concat(out)
end

-- text() -> the whole page, as the HTTP server serves it
function M.text()
  return core.metrics_text() .. extra_text()
end

-- the HTTP server asks for the Lua part of each page it serves
dispatcher.on_event("metrics_page", function(srv)
  local ok, text = pcall(extra_text)
  if ok then
    core.metrics_extra(srv, text)
  else
    dispatcher.log("error", "metrics: the page's Lua part failed: " .. tostring(text))
  end
end)

-- ------------------------------------------------------------------ the registry

local Family = {}
Family.__index = Family

-- the child of fam for the label table given to fname (created on first use)
local function child_of(fam, labels, fname)
  local names = fam.label_names
  if #names == 0 then
    if labels ~= nil and (type(labels) ~= "table" or next(labels) ~= nil) then
      error(fname .. ": " .. fam.name .. " has no labels", 3)
    end
    return fam.children[""] or fam:_child("", {})
  end
  if type(labels) ~= "table" then
    error(fname .. ": labels must be a table (" .. table.concat(names, ", ") .. ")", 3)
  end
  local values = {}
  for i, l in ipairs(names) do
    local v = labels[l]
    local tv = type(v)
    if tv == "number" then
      v = num(v)
    elseif tv ~= "string" then
      error(fname .. ": label " .. l .. " of " .. fam.name .. " must be a string, got " .. tv, 3)
    end
    values[i] = v
  end
  for k in pairs(labels) do
    if not fam.label_set[k] then
      error(fname .. ": " .. fam.name .. " has no label " .. tostring(k), 3)
    end
  end
  local key = table.concat(values, "\0")
  return fam.children[key] or fam:_child(key, values)
end

function Family:_child(key, values)
  local child = { values = values, value = 0 }
  if self.kind == "histogram" then
    child.counts, child.sum, child.count = {}, 0, 0
    for i = 1, #self.buckets do child.counts[i] = 0 end
  end
  self.children[key] = child
  self.keys[#self.keys + 1] = key
  return child
end

local function amount(v, fname, positive)
  if v == nil then return 1 end
  if type(v) ~= "number" or v ~= v then error(fname .. ": value must be a number", 3) end
  if positive and v < 0 then error(fname .. ": a counter only goes up (value < 0)", 3) end
  return v
end

local function method_of(fam, fname, kinds)
  if not kinds[fam.kind] then
    error(fname .. ": not available on a " .. fam.kind, 3)
  end
end

local INC = { counter = true, gauge = true }
local GAUGE = { gauge = true }
local HIST = { histogram = true }

-- counter:inc([v [, labels]]), gauge:inc([v [, labels]])
function Family:inc(v, labels)
  local fname = "luasip.metrics." .. self.kind .. ":inc"
  method_of(self, fname, INC)
  v = amount(v, fname, self.kind == "counter")
  local c = child_of(self, labels, fname)
  c.value = c.value + v
end

-- gauge:dec([v [, labels]])
function Family:dec(v, labels)
  local fname = "luasip.metrics.gauge:dec"
  method_of(self, fname, GAUGE)
  v = amount(v, fname)
  local c = child_of(self, labels, fname)
  c.value = c.value - v
end

-- gauge:set(v [, labels])
function Family:set(v, labels)
  local fname = "luasip.metrics.gauge:set"
  method_of(self, fname, GAUGE)
  if type(v) ~= "number" then error(fname .. ": value must be a number", 2) end
  child_of(self, labels, fname).value = v
end

-- histogram:observe(v [, labels])
function Family:observe(v, labels)
  local fname = "luasip.metrics.histogram:observe"
  method_of(self, fname, HIST)
  if type(v) ~= "number" or v ~= v then error(fname .. ": value must be a number", 2) end
  local c = child_of(self, labels, fname)
  local b = self.buckets
  for i = 1, #b do
    if v <= b[i] then
      c.counts[i] = c.counts[i] + 1
      break
    end
  end
  c.sum, c.count = c.sum + v, c.count + 1
end

-- metric:value([labels]) -> current value (counter, gauge) or count, sum (histogram)
function Family:value(labels)
  local c = child_of(self, labels, "luasip.metrics." .. self.kind .. ":value")
  if self.kind == "histogram" then return c.count, c.sum end
  return c.value
end

-- metric:labels(labels) -> the child for those label values: child:inc(v), :dec, :set,
-- :observe without the label lookup (for hot paths)
function Family:labels(labels)
  local fam = self
  local c = child_of(self, labels, "luasip.metrics." .. self.kind .. ":labels")
  local values = {}
  for i, l in ipairs(fam.label_names) do values[l] = c.values[i] end
  return {
    inc = function(_, v) return fam:inc(v, values) end,
    dec = function(_, v) return fam:dec(v, values) end,
    set = function(_, v) return fam:set(v, values) end,
    observe = function(_, v) return fam:observe(v, values) end,
    value = function() return fam:value(values) end,
  }
end

-- metric:reset() -> forgets every label set (counters restart from 0)
function Family:reset()
  self.children, self.keys = {}, {}
end

local OPTIONS = { name = true, help = true, labels = true, buckets = true }

local function new_family(kind, opts)
  local fname = "luasip.metrics." .. kind
  if type(opts) ~= "table" then error(fname .. ": options table expected", 3) end
  for k in pairs(opts) do
    if not OPTIONS[k] or (k == "buckets" and kind ~= "histogram") then
      error(fname .. ": unknown option '" .. tostring(k) .. "'", 3)
    end
  end
  local name, help = opts.name, opts.help
  if type(name) ~= "string" or not name:match(NAME) then
    error(fname .. ": name must match [a-zA-Z_:][a-zA-Z0-9_:]*", 3)
  end
  if name:match("^luasip_") or name:match("^process_") then
    error(fname .. ": names luasip_* and process_* are the library's", 3)
  end
  if help ~= nil and type(help) ~= "string" then error(fname .. ": help must be a string", 3) end
  local labels = opts.labels or {}
  if type(labels) ~= "table" then error(fname .. ": labels must be a list of names", 3) end
  local label_set = {}
  for i, l in ipairs(labels) do
    if type(l) ~= "string" or not l:match(LABEL) or l:match("^__") then
      error(fname .. ": label " .. i .. " must be a name matching [a-zA-Z_][a-zA-Z0-9_]* "
        .. "(not starting with __)", 3)
    end
    if label_set[l] then error(fname .. ": label " .. l .. " given twice", 3) end
    if kind == "histogram" and l == "le" then error(fname .. ": label le is reserved", 3) end
    label_set[l] = true
  end
  local buckets
  if kind == "histogram" then
    buckets = opts.buckets or DEFAULT_BUCKETS
    if type(buckets) ~= "table" or #buckets == 0 then
      error(fname .. ": buckets must be a non-empty list of numbers", 3)
    end
    for i, b in ipairs(buckets) do
      if type(b) ~= "number" or b ~= b or (i > 1 and b <= buckets[i - 1]) then
        error(fname .. ": buckets must be increasing numbers", 3)
      end
    end
    if buckets[#buckets] == math.huge then
      buckets = { unpack(buckets, 1, #buckets - 1) }
    end
  end
  local old = families[name]
  if old then
    -- the same definition again (a module reloaded) gets the same metric
    if old.kind == kind and table.concat(old.label_names, ",") == table.concat(labels, ",") then
      return old
    end
    error(fname .. ": " .. name .. " is already registered as a " .. old.kind
      .. " with other labels", 3)
  end
  for _, suffix in ipairs{ "_bucket", "_sum", "_count" } do
    local base = name:sub(1, -#suffix - 1)
    if name:sub(-#suffix) == suffix and families[base] and families[base].kind == "histogram" then
      error(fname .. ": " .. name .. " clashes with histogram " .. base, 3)
    end
  end
  local fam = setmetatable({
    kind = kind, name = name, help = help or name,
    label_names = { unpack(labels) },
    label_set = label_set, buckets = buckets, children = {}, keys = {},
  }, Family)
  families[name] = fam
  order[#order + 1] = name
  return fam
end

-- counter{ name =, help =, labels = { ... } } -> counter
function M.counter(opts) return new_family("counter", opts) end
-- gauge{ name =, help =, labels = { ... } } -> gauge
function M.gauge(opts) return new_family("gauge", opts) end
-- histogram{ name =, help =, labels = { ... }, buckets = { ... } } -> histogram
function M.histogram(opts) return new_family("histogram", opts) end

-- unregister(metric_or_name): removes a metric from the page
function M.unregister(m)
  local name = type(m) == "table" and m.name or m
  if type(name) ~= "string" then error("luasip.metrics.unregister: metric or name expected", 2) end
  if families[name] then
    families[name] = nil
    for i, n in ipairs(order) do
      if n == name then table.remove(order, i) break end
    end
  end
end

-- ------------------------------------------------------------------ the server

local now = core.now
local handler_done = core.metrics_handler

-- enable(): handler durations and errors are measured from now on (also done by listen)
function M.enable()
  dispatcher.set_handler_metrics(now, handler_done)
end

local LISTEN_OPTIONS = { listen = true, path = true, timeout = true }

-- metrics{ listen = "host:port", path = "/metrics", timeout = 5 } -> server | nil, err, code
-- server.port (the bound one: port 0 asks the system), server.host, server.url,
-- server:close()
local function listen(_, opts)
  local fname = "luasip.metrics"
  if type(opts) ~= "table" then error(fname .. ": options table expected", 2) end
  for k in pairs(opts) do
    if not LISTEN_OPTIONS[k] then error(fname .. ": unknown option '" .. tostring(k) .. "'", 2) end
  end
  local addr = opts.listen
  if type(addr) ~= "string" then error(fname .. ": listen must be \"host:port\"", 2) end
  local host, port = addr:match("^%[([%x:%.]+)%]:(%d+)$")
  if not host then host, port = addr:match("^([%d%.]+):(%d+)$") end
  port = tonumber(port)
  if not host or port > 65535 then
    error(fname .. ": listen must be \"host:port\" (IPv4, or [IPv6]), got " .. addr, 2)
  end
  local path = opts.path or "/metrics"
  if type(path) ~= "string" or not path:match("^/[%w%-%._~/]*$") then
    error(fname .. ": path must be a URL path (\"/metrics\")", 2)
  end
  local timeout = opts.timeout or 5
  if type(timeout) ~= "number" or timeout <= 0 or timeout > 3600 then
    error(fname .. ": timeout must be a number of seconds (0-3600]", 2)
  end
  M.enable()
  return core.metrics_listen(host, port, path, timeout)
end

return setmetatable(M, { __call = listen })
