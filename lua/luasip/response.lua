-- luasip.response: the class luasip.response (csrc/message.c): read-only responses.
-- res.dialog: the dialog a 2xx to SUBSCRIBE/REFER made (set by luasip.client_tx).

--- The class `luasip.response`: read-only responses, as `res`.  Fields: `res.status`,
-- `res.reason`, `res.body`, `res.content_type`, `res.data` and `res.dialog` (the
-- dialog a 2xx to SUBSCRIBE or REFER made, or nil).
-- Methods implemented in C (see the README): `res:header`, `res:headers`, `res:raw`.
-- @classmod luasip.response

local class = require "luasip.class"

local state = class.state
local _, getters = class.get("luasip.response")

function getters.dialog(self)
  return state(self).dialog
end

return {}
