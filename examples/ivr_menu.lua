--[[ ivr_menu.lua — the voice menu of examples/ivr.lua and the voicemail of examples/pbx.lua,
  as functions on a call with media (the dialog req:answer{ media = true } returns).
  Loaded with loadfile (like users.lua), configured once:
    local ivr = assert(loadfile(here .. "/ivr_menu.lua"))(here, log)
    ivr.menu(call)                      -- welcome, menu, 3 tries; returns why it ended
    ivr.voicemail(call, "alice")        -- greeting, beep, record into recordings/alice/
  Prompts: $IVR_PROMPTS (default build/prompts next to examples/, made by `make prompts`);
  recordings: $IVR_RECORDINGS (default recordings/); operator: $IVR_OPERATOR (a SIP URI).
]]
local here, log = ...
local M = {                                  -- settings, read at each use
  prompts = os.getenv("IVR_PROMPTS") or ((here or ".") .. "/../build/prompts"),
  recordings = os.getenv("IVR_RECORDINGS") or "recordings",
  operator = os.getenv("IVR_OPERATOR"),
  timeout = 5,                               -- seconds to wait for a menu choice
}

local function P(name) return M.prompts .. "/" .. name .. ".wav" end

-- record(call, dir, greeting) -> reason, path: greeting, beep, then up to 60 s until #, 2 s
-- of silence or a hangup, into dir/<time>-<n>.wav (8 kHz mono WAV); reason nil: failed
local count = 0
local function record(call, dir, greeting)
  os.execute("mkdir -p '" .. dir:gsub("'", "'\\''") .. "'")
  if call:play(P(greeting), { barge_in = false }) == "hangup" then return "hangup" end
  count = count + 1
  local path = ("%s/%s-%d.wav"):format(dir, os.date("!%Y%m%dT%H%M%S"), count)
  log(call.call_id, "recording", path)
  local why, ms = call:record(path, { max = 60, silence = 2, terminators = "#", beep = true })
  log(call.call_id, "recorded", path, tostring(ms) .. " ms", tostring(why))
  return why, path
end

-- voicemail(call, user) -> reason: a message for user, saved under recordings/<user>/
function M.voicemail(call, user)
  local reason = record(call, M.recordings .. "/" .. user, "not-available")
  if reason and reason ~= "hangup" then call:play(P("message-saved")) end
  return reason
end

-- one action per menu key; each returns "menu" (back to the menu) or why the call ended
local actions = {
  ["1"] = function(call)                     -- echo test until #
    if call:play(P("echo-test"), { barge_in = true }) == "hangup" then return "hangup" end
    log(call.call_id, "echo test")
    return call:echo{ terminators = "#" } == "hangup" and "hangup" or "menu"
  end,
  ["2"] = function(call)                     -- leave a message, hear it back
    local reason, path = record(call, M.recordings, "record-after-beep")
    if reason == "hangup" then return reason end
    if reason then call:play({ P("message-saved"), path }) end
    return "menu"
  end,
  ["3"] = function(call)                     -- up to 4 digits ending with #, said back
    local digits, reason = call:collect{ prompt = P("enter-number"), min = 1, max = 4,
      timeout = M.timeout, inter_digit = 3, terminators = "#" }
    log(call.call_id, "entered", tostring(digits), tostring(reason))
    if reason == "hangup" then return reason end
    if digits then
      call:play(P("you-entered"))
      call:say_digits(digits, { prompts = M.prompts })   -- digits/4.wav, digits/pound.wav
    end
    return "menu"
  end,
  ["0"] = function(call)                     -- blind transfer; BYE once the target answered
    if not M.operator then call:play(P("no-operator")); return "menu" end
    call:play(P("transferring"))
    local status, line = call:refer(M.operator, { timeout = 60 })
    log(call.call_id, "transfer to", M.operator, tostring(status or line))
    if status and status >= 200 and status < 300 then call:bye(); return "transferred" end
    return "menu"
  end,
  ["9"] = function(call) call:play(P("goodbye")); call:bye(); return "bye" end,
}

-- menu(call) -> "bye" | "hangup" | "transferred" | "no input"
function M.menu(call)
  local id, tries = call.call_id, 0
  log(id, "menu: welcome")
  if call:play(P("welcome"), { barge_in = true }) == "hangup" then return "hangup" end
  while tries < 3 do
    local digit, reason = call:collect{ prompt = P("menu"), max = 1, timeout = M.timeout }
    log(id, "menu:", digit and ("digit " .. digit) or tostring(reason))
    if reason == "hangup" then return reason end
    local action = digit and actions[digit]
    if action then
      tries = 0
      local r = action(call)
      log(id, "menu: after " .. digit .. ":", r)
      if r ~= "menu" then return r end
    else
      tries = tries + 1
      local prompt = reason == "timeout" and "no-input" or "invalid"   -- # is no choice either
      if call:play(P(prompt), { barge_in = true }) == "hangup" then return "hangup" end
    end
  end
  call:play(P("goodbye"))
  call:bye()
  return "no input"
end

return M
