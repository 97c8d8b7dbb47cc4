-- luasip.proxy: req:proxy(targets, opts) on the C proxy engine (csrc/proxy.c), and the
-- class luasip.proxy (one proxied request's branches).  Owns the events "proxy_response"
-- "proxy_final" and "proxy_hold".  Per-proxy state (class.state): req, on_response,
-- final_seen, final, slot, rewrite, held (responses held for rewrite), rewriting.
--   local res, err, code = req:proxy({ "sip:bob@127.0.0.1:5070" }, { record_route = true })
local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"
local dns = require "luasip.dns"

local state = class.state
local _, _, PROXY = class.get("luasip.proxy")
local _, _, REQ = require("luasip.core").class("luasip.request")

local M = {}

-- targets: a URI, a list of URIs, or a list of { uri =, path = {...} | route = "...",
-- flow = "sip:address:port;transport=" (the next hop: where the target registered from),
-- ob = true (an RFC 5626 flow: no branch when it is gone) } (what location:lookup returns)
local function normalize(targets)
  if type(targets) == "string" then return targets end     -- the core takes one URI as is
  if type(targets) ~= "table" or #targets == 0 then
    error("luasip.request:proxy: targets must be a URI or a non-empty list", 3)
  end
  local list = {}
  for i, t in ipairs(targets) do
    if type(t) == "string" then
      list[i] = { uri = t }
    elseif type(t) == "table" and type(t.uri) == "string" then
      local route = t.route
      if type(t.path) == "table" and #t.path > 0 then route = table.concat(t.path, ", ") end
      list[i] = { uri = t.uri, route = route, flow = t.flow, ob = t.ob }
    else
      error("luasip.request:proxy: target " .. i .. " must be a URI or { uri = }", 3)
    end
  end
  return list
end

-- req:proxy(targets [, { record_route = true | "flow token" (the user part of ours),
--   forking = "parallel" | "sequential",
--   timeout = branch seconds (Timer C, 180), on_response = fn(res),
--   headers = { Name = "value" | {values} (added) | false (removed) },
--   follow_redirects = true (3xx Contacts become new branches), stateless = true
--   (forward the first target without a transaction: req:forward), body =,
--   content_type = (the branches' body instead of the request's), rewrite = fn(res) ->
--   body | nil (a waiting function: the new body of each response with a body) }])
--   -> response (the 2xx forwarded) | nil, err, code [, response]
local NO_OPTIONS = {}
local PROXY_OPTIONS = { record_route = true, forking = true, timeout = true,
  on_response = true, headers = true, follow_redirects = true, stateless = true, body = true,
  content_type = true, rewrite = true }

function M.proxy(self, targets, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.request:proxy: options must be a table", 2)
  end
  if opts then class.check_options(opts, PROXY_OPTIONS, "luasip.request:proxy") end
  opts = opts or NO_OPTIONS
  local list = normalize(targets)
  if opts.forking ~= nil and opts.forking ~= "parallel" and opts.forking ~= "sequential" then
    error('luasip.request:proxy: forking must be "parallel" or "sequential"', 2)
  end
  if opts.on_response ~= nil and type(opts.on_response) ~= "function" then
    error("luasip.request:proxy: on_response must be a function", 2)
  end
  if opts.headers ~= nil and type(opts.headers) ~= "table" then
    error("luasip.request:proxy: headers must be a table", 2)
  end
  if opts.rewrite ~= nil and type(opts.rewrite) ~= "function" then
    error("luasip.request:proxy: rewrite must be a function", 2)
  end
  if opts.body ~= nil and type(opts.body) ~= "string" then
    error("luasip.request:proxy: body must be a string", 2)
  end
  if opts.content_type ~= nil and type(opts.content_type) ~= "string" then
    error("luasip.request:proxy: content_type must be a string", 2)
  end
  local body = nil
  if opts.body or opts.content_type then
    body = { body = opts.body or self.body or "", content_type = opts.content_type }
  end
  local add, remove = NO_OPTIONS, NO_OPTIONS     -- (read only by the core)
  if opts.headers then
    add, remove = {}, {}
    for name, v in pairs(opts.headers) do
      if v == false then remove[#remove + 1] = name else add[name] = v end
    end
  end
  -- RFC 3261 16.3 step 3
  if self.max_forwards == 0 then
    self:reply(483, "Too Many Hops")
    return nil, "483 Too Many Hops", 483
  end
  if opts.stateless then
    -- RFC 3261 16.11: no transaction, one target, nothing waits
    return self:forward(type(list) == "string" and list or list[1].uri)
  end
  dispatcher.current("luasip.request:proxy")
  -- RFC 3263 4.3: one sip: URI with a host name goes to its targets in turn, on to the
  -- next only after a 503 or a timeout (lua/luasip/dns.lua); one that does not resolve: 503
  local failover = nil
  local one = type(list) == "string" and list
    or (#list == 1 and not list[1].route and not list[1].flow and list[1].uri)
  if one then
    local why
    failover, why = dns.proxy_targets(self, one)
    if failover == nil then
      if not self:answered() then self:reply(503, "Cannot Resolve Target") end
      return nil, why, 503
    end
    if failover then list = failover end
  end
  failover = failover or nil
  local p, err, code = class.call("luasip.request:proxy", 2, REQ._proxy, self, list,
    opts.record_route, failover and true or opts.forking == "sequential", opts.timeout,
    opts.on_response ~= nil or failover ~= nil, add, remove, opts.follow_redirects, body,
    opts.rewrite ~= nil, failover ~= nil)
  if not p then
    if code == "loop" then
      self:reply(482, "Loop Detected")
      return nil, "482 Loop Detected", 482
    end
    if code == "tls" then
      -- RFC 5630: a sips: request with no TLS route to any target
      dispatcher.log("info", "req:proxy: " .. err, self.call_id)
      self:reply(480, "No TLS Route For SIPS Request")
      return nil, "480 No TLS Route For SIPS Request", 480
    end
    return nil, err, code
  end
  local pst = state(p)
  pst.req = self                     -- the request outlives its proxy
  pst.on_response = opts.on_response
  pst.failover = failover
  pst.rewrite = opts.rewrite
  local res
  if pst.final_seen then
    res = pst.final
  else
    local slot = dispatcher.new_slot("luasip.request:proxy")
    slot.guarded = true              -- the engine answers the request: no handler deadline
    pst.slot = slot
    res = dispatcher.wait(slot)
  end
  if not res then
    if self:cancelled() then return nil, "cancelled", "cancelled" end
    if not self:answered() then self:reply(408, "No Response From Targets") end
    return nil, "408 No Response From Targets", 408
  end
  if res.status >= 300 then
    return nil, tostring(res.status) .. " " .. tostring(res.reason), res.status, res
  end
  return res
end

dispatcher.on_event("proxy_response", function(p, res)
  local pst = p and state(p)
  if pst and pst.failover and res and res.status == 503 then
    -- a target busy for Retry-After seconds is skipped meanwhile (RFC 3263 4.3); which
    -- target: the branch number our Via carries (csrc/proxy.c: one branch per target)
    local n = tonumber((res:header("Via") or ""):match("branch=z9hG4bK%x+%.(%d+)") or "")
    local t = n and pst.failover[n + 1]
    if t then dns.busy(t.target, res) end
  end
  local fn = pst and pst.on_response
  if fn and res then
    local ok, err = pcall(fn, res)
    if not ok then dispatcher.log("error", "on_response failed: " .. tostring(err)) end
  end
end)

-- A response held for the rewrite hook: one coroutine per proxy rewrites them in the
-- order they came and releases each (its new body, or unchanged when the hook returns
-- nil or fails); the core sends them on upstream in that order.
local function rewriter(p, pst)
  local queue = pst.held
  while queue.first <= queue.last do
    local res = queue[queue.first]
    queue[queue.first] = nil
    queue.first = queue.first + 1
    local new
    if res and res.body and res.body ~= "" then
      local ok, b = dispatcher.pcall(pst.rewrite, res)
      if not ok then
        dispatcher.log("error", "proxy rewrite failed: " .. tostring(b), res.call_id)
      elseif b ~= nil and type(b) ~= "string" then
        dispatcher.log("error", "proxy rewrite returned a " .. type(b) .. ", not a body",
          res.call_id)
      else
        new = b
      end
    end
    PROXY._release(p, new and { body = new } or nil)
  end
  pst.rewriting = false
end

dispatcher.on_event("proxy_hold", function(p, res)
  if not p then return end
  local pst = state(p)
  local queue = pst.held
  if not queue then
    queue = { first = 1, last = 0 }
    pst.held = queue
  end
  queue.last = queue.last + 1
  queue[queue.last] = res or false
  if not pst.rewriting then
    pst.rewriting = true
    dispatcher.spawn(rewriter, p, pst)
  end
end)

dispatcher.on_event("proxy_final", function(p, res)
  if not p then return end
  local pst = state(p)
  pst.final_seen = true
  pst.final = res
  if pst.slot then dispatcher.fill(pst.slot, res or false) end
end)

return M
