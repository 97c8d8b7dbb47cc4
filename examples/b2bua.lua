#!/usr/bin/env lua
--[[ b2bua.lua — a back-to-back user agent: every INVITE it gets is answered by a call of
  its own to a downstream (Request-URI user @ target), with sip.b2bua.  Ringing, early
  media, CANCEL and failures pass through; once answered, BYE, re-INVITE, UPDATE and INFO
  are relayed between the two calls.  Each step is logged.
Usage: lua examples/b2bua.lua [host:port] [target]
  host:port  where to listen (default 127.0.0.1:5060)
  target     host:port of the downstream (default 127.0.0.1:5070), e.g. a `sipp -sn uas`;
             or a full sip: URI that every call goes to
]]
local sip = require "luasip"

local hostport = arg[1] or "127.0.0.1:5060"
local target = arg[2] or "127.0.0.1:5070"
local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-b2bua" })

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

-- the B leg's Request-URI: the caller's user at the downstream
local function downstream(req)
  if target:match("^sips?:") then return target end
  local user = req.ruri.user
  return "sip:" .. (user and user .. "@" or "") .. target
end

local function sized(body)
  return body and (" (" .. #body .. " bytes of body)") or ""
end

local opts = {
  timeout = 60,                      -- ring time before we cancel and answer 480
  headers = { ["X-B2BUA"] = "luasip" },
  -- every request that goes from one leg to the other: initial INVITE, then in-dialog
  on_request = function(req, o, leg)
    log(leg == "a" and "A -> B:" or "B -> A:", req.method .. sized(o.body))
  end,
  -- every response passed back (18x, final, in-dialog)
  on_answer = function(res, o, leg)
    log(leg == "b" and "B:" or "A:", res.status .. " " .. res.reason .. sized(o.body))
  end,
}

app:on("INVITE", function(req)
  local to = downstream(req)
  log("INVITE", req.uri, "from", req.from.uri, "->", to)
  local a, b, code = sip.b2bua(req, to, opts)
  if not a then return log("not bridged:", b, "(" .. tostring(code) .. ")") end
  log("bridged: A", a.remote_tag, "<-> B", b.remote_tag)
  local reason = a:wait_end()
  log("call ended:", reason == "remote bye" and "the caller hung up"
    or reason == "bye" and "the callee hung up" or reason)
end)

app:on("OPTIONS", function(req)
  req:reply(200, { headers = { Allow = app:allow() } })
end)

log("luasip b2bua listening on", app:contact(), "bridging to", target)
sip.run()
