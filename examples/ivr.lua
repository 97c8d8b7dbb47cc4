#!/usr/bin/env lua
--[[ ivr.lua — a voice menu (IVR): answers every INVITE with media (G.711, RFC 4733, SIP INFO
  and in-band DTMF) and runs the menu of examples/ivr_menu.lua: welcome, then "for the
  echo test press 1, to leave a message press 2, to enter a number press 3, for the
  operator press 0, to hang up press 9"; one digit, 5 s timeout, 3 tries, then goodbye.
  1: what the caller sends comes back until #.  2: beep, record until #, 2 s of silence or
  60 s into $IVR_RECORDINGS (default recordings/) as 8 kHz mono WAV, played back.  3: up
  to 4 digits ending with #, said back.  0: REFER to $IVR_OPERATOR (when set), BYE once
  the target answered (RFC 5589).  9: goodbye and BYE.  One log line per step.
  Prompts: `make prompts` (flite) into build/prompts, or $IVR_PROMPTS.
Usage: lua examples/ivr.lua [host:port]     (default 127.0.0.1:5080)
]]
local sip = require "luasip"

local here = (arg and arg[0] or ""):match("^(.*)[/\\]") or "."
local hostport = arg and arg[1] or "127.0.0.1:5080"

local function log(...)
  io.stdout:write(os.date("%H:%M:%S "), table.concat({ ... }, " "), "\n")
  io.stdout:flush()
end

local ivr = assert(loadfile(here .. "/ivr_menu.lua"))(here, log)
local app = assert(sip.agent{ listen = { "sip:" .. hostport }, user_agent = "luasip-ivr" })

app:on("INVITE", function(req)
  log(req.call_id, "INVITE from", req.from.uri)
  local call, err = req:answer{ media = true }
  if not call then return log(req.call_id, "not answered:", tostring(err)) end
  log(call.call_id, "call ended:", ivr.menu(call))
end)

log("luasip ivr listening on", app:contact(), "prompts", ivr.prompts,
  "recordings", ivr.recordings, "operator", ivr.operator or "(none)")
sip.run()
