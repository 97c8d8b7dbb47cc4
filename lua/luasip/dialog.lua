-- luasip.dialog: dialogs for INVITE (RFC 3261 12-15) on top of the C legs (csrc/dialog.c).
--   UAS: local d = req:answer{ body = sdp }          -- 200, waits for the ACK
--   UAC: local d, res = agent:invite{ uri = ..., body = sdp }
--   d:request("INFO", {...}), d:on("INFO", fn), d:bye(), d:wait_end()
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

local M = {}

local dialog_methods = core.methods("luasip.dialog")
local req_methods = core.methods("luasip.request")
local agent_methods = core.methods("luasip.agent")

local function ended(d, reason)
  if d._ended then return end
  d._ended = reason or "terminated"
  d:terminate()
  local slot = d._end_slot
  if slot then dispatcher.fill(slot, d._ended) end
  -- anything waiting on an in-dialog transaction learns the dialog is gone
  for tx in pairs(d._pending or {}) do
    if tx._slot then dispatcher.fill(tx._slot, nil, "terminated", "terminated") end
  end
end

local function init(d)
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  return d
end
M.init = init

-- req:dialog() -> dialog | nil, err, code: the dialog a SUBSCRIBE or REFER creates (the
-- caller then answers 2xx); INVITEs use req:answer
function req_methods.dialog(self)
  if self.method ~= "SUBSCRIBE" and self.method ~= "REFER" then
    error("luasip.request:dialog: only SUBSCRIBE and REFER (INVITE: req:answer)", 2)
  end
  local d, err, code = self:_dialog()
  if not d then return nil, err, code end
  return init(d)
end

-- req:answer([opts]) -> dialog | nil, err, code: 200 (with opts.body etc.), then the ACK
function req_methods.answer(self, opts)
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.request:answer: options must be a table", 2)
  end
  opts = opts or {}
  local d, err, code = self:_dialog()
  if not d then return nil, err, code end
  d._handlers = {}
  d._pending = setmetatable({}, { __mode = "k" })
  local ok, rerr, rcode = self:reply(opts.status or 200, opts)
  if not ok then
    ended(d, rcode)
    return nil, rerr, rcode
  end
  d.local_sdp = opts.body
  d.remote_sdp = self.body
  local ack, aerr, acode = self:wait_ack(opts.timeout)
  if not ack then
    -- no ACK: the core sends BYE after 64*T1; a shorter timeout sends it now
    if aerr == "timeout" and opts.timeout then d:send{ method = "BYE" } end
    ended(d, aerr)
    return nil, aerr, acode
  end
  if ack.body then d.remote_sdp = ack.body end
  return d
end

-- agent:invite{ uri=, from=, to=, headers=, body=, content_type=, timeout=,
--   on_provisional= } -> dialog, response | nil, err, code [, response]
function agent_methods.invite(self, opts)
  if type(opts) ~= "table" then error("luasip.agent:invite: options table expected", 2) end
  dispatcher.current("luasip.agent:invite")
  local o = {}
  for k, v in pairs(opts) do o[k] = v end
  o.method, o.dialog = "INVITE", true
  if o.body and not o.content_type then o.content_type = "application/sdp" end
  local tx, err, code = self:send(o)
  if not tx then return nil, err, code end
  tx._on_provisional = opts.on_provisional
  if opts.on_sent then opts.on_sent(tx) end
  local res, werr, wcode, wres = tx:wait(opts.timeout)
  if not res then return nil, werr, wcode, wres end
  local d = tx:dialog()
  if not d then return nil, "no dialog for the 2xx", "dialog", res end
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  d.local_sdp, d.remote_sdp = opts.body, res.body
  return d, res
end

-- dialog:request(method [, opts]) -> response | nil, err, code [, response]
function dialog_methods.request(self, method, opts)
  if type(method) ~= "string" then error("luasip.dialog:request: method must be a string", 2) end
  if opts ~= nil and type(opts) ~= "table" then
    error("luasip.dialog:request: options must be a table", 2)
  end
  dispatcher.current("luasip.dialog:request")
  if self._ended then return nil, "dialog terminated", "terminated" end
  local o = {}
  for k, v in pairs(opts or {}) do o[k] = v end
  o.method = method:upper()
  local tx, err, code = self:send(o)
  if not tx then return nil, err, code end
  self._pending[tx] = true
  local res, rerr, rcode, rres = tx:wait(o.timeout)
  self._pending[tx] = nil
  if res and o.method == "INVITE" then
    self.local_sdp = o.body or self.local_sdp
    self.remote_sdp = res.body or self.remote_sdp
  end
  return res, rerr, rcode, rres
end

-- dialog:on(method, fn(req, dialog) | nil) -> previous
function dialog_methods.on(self, method, fn)
  if type(method) ~= "string" then error("luasip.dialog:on: method must be a string", 2) end
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.dialog:on: handler must be a function or nil", 2)
  end
  method = method:upper()
  local old = self._handlers[method]
  self._handlers[method] = fn
  return old
end

-- dialog:bye() -> true | nil, err, code: ends the dialog (BYE, then terminated)
function dialog_methods.bye(self)
  if self._ended then return nil, "dialog terminated", "terminated" end
  local tx, err, code = self:send{ method = "BYE" }
  ended(self, "bye")
  if not tx then return nil, err, code end
  local res, rerr, rcode = tx:wait()
  if not res and rcode ~= 481 and rcode ~= 408 then return nil, rerr, rcode end
  return true
end

-- dialog:wait_end([timeout]) -> reason ("bye", "remote bye", ...) | nil, "timeout"
function dialog_methods.wait_end(self, timeout)
  if self._ended then return self._ended end
  local slot = dispatcher.new_slot("luasip.dialog:wait_end")
  self._end_slot = slot
  return dispatcher.wait(slot, timeout)
end

dispatcher.events.dialog_closed = function(d)
  if d then ended(d, "closed") end
end

-- in-dialog requests from the peer
dispatcher.events.dialog_request = function(d, req)
  if not d or not req then return end
  d:_keep()
  d._handlers = d._handlers or {}
  d._pending = d._pending or setmetatable({}, { __mode = "k" })
  req.dialog = d
  local method = req.method
  local h = d._handlers[method]
  if method == "BYE" then
    req:reply(200)
    ended(d, "remote bye")
    if h then dispatcher.spawn_for(req, h, req, d) end
    return
  end
  if h then return dispatcher.spawn_for(req, h, req, d) end
  if method == "INFO" or method == "NOTIFY" or method == "OPTIONS" then
    return req:reply(200)
  end
  if method == "INVITE" or method == "UPDATE" then
    -- a refresh without a listener: answer with the current session
    if req.body and not d.local_sdp then return req:reply(488) end
    d.remote_sdp = req.body or d.remote_sdp
    return req:reply(200, d.local_sdp and { body = d.local_sdp, content_type = "application/sdp" })
  end
  req:reply(405, { headers = { Allow = "INVITE, ACK, BYE, CANCEL, INFO, NOTIFY, OPTIONS, UPDATE" } })
end

return M
