-- luasip.response: the class luasip.response (csrc/message.c): read-only responses.
-- res.dialog: the dialog a 2xx to SUBSCRIBE/REFER made (set by luasip.client_tx).
local class = require "luasip.class"

local state = class.state
local _, getters = class.get("luasip.response")

function getters.dialog(self)
  return state(self).dialog
end

return {}
