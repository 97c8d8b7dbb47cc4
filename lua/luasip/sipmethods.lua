-- luasip.sipmethods: the SIP methods luasip knows, written once.
local M = {
  "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "SUBSCRIBE", "NOTIFY",
  "PUBLISH", "REFER", "INFO", "UPDATE", "PRACK", "MESSAGE",
}

-- known[method] = true
local known = {}
for _, m in ipairs(M) do known[m] = true end

-- methods a dialog answers by default (luasip.dialog)
local in_dialog = { "INVITE", "ACK", "BYE", "CANCEL", "INFO", "NOTIFY", "OPTIONS", "UPDATE" }

-- norm(m, fname, level) -> uppercase method token; raises naming fname
local function norm(m, fname, level)
  if type(m) ~= "string" or not m:match("^[%w%-%.!%%%*_%+`'~]+$") then
    error(fname .. ": method must be a SIP method token", (level or 2) + 1)
  end
  return m:upper()
end

return { list = M, known = known, in_dialog = table.concat(in_dialog, ", "), norm = norm }
