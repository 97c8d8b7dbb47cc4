-- luasip.client_tx: the class luasip.client_tx (csrc/client_tx.c): a request we sent.
--   local tx = agent:send{...};  local res, err, code = tx:wait(5)
-- Owns the events "response" and "tx_closed".  Per-transaction state (class.state):
-- final (the final response), slot (a waiting coroutine), on_provisional, gave_up.

--- The class `luasip.client_tx`: a request the agent sent (`agent:send`), as `tx`.
-- Methods implemented in C (see the README): `tx:cancel`, `tx:status`, `tx:close`,
-- `tx:prack_body`.
-- @classmod luasip.client_tx

local class = require "luasip.class"
local dispatcher = require "luasip.dispatcher"

local state = class.state
local methods, _, C = class.get("luasip.client_tx")

local M = {}

-- set_on_provisional(tx, fn): fn(res, tx) for each 1xx (agent:request, agent:invite)
function M.set_on_provisional(tx, fn)
  if fn then state(tx).on_provisional = fn end
end

-- abort(tx, ...): wakes a coroutine waiting on tx with these values (luasip.dialog)
function M.abort(tx, ...)
  local slot = state(tx).slot
  if slot then dispatcher.fill(slot, ...) end
end

-- final(tx) -> the final response seen, or nil
function M.final(tx)
  return state(tx).final
end

local function dialog_of(tx)
  local d = C.dialog(tx)
  if d then require("luasip.dialog").init(d) end
  return d
end

--- Waits for the final response (waiting call).
-- @function client_tx:wait
-- @number[opt] timeout seconds
-- @return the response, or `nil, message, code [, response]` (code: the status of a
-- final response >= 300, or `"timeout"`)

-- tx:wait([timeout]) -> response | nil, err, code [, response]
function methods.wait(self, timeout)
  local st = state(self)
  local res = st.final
  if not res then
    local slot = dispatcher.new_slot("luasip.client_tx:wait")
    st.slot = slot
    local err, code
    res, err, code = dispatcher.wait(slot, timeout)
    st.slot = nil
    if not res then
      if self.is_invite and self:status() < 200 then
        -- stop ringing; nta finishes the INVITE (487) in the background, and a 200
        -- that crosses the CANCEL is ended with BYE (event "response")
        st.gave_up = true
        self:cancel()
      else
        self:close()
      end
      return nil, err, code
    end
  end
  if res.status >= 300 then
    return nil, tostring(res.status) .. " " .. tostring(res.reason), res.status, res
  end
  if not self.is_invite then
    -- SUBSCRIBE / REFER sent with dialog = true: the 2xx made a dialog
    local d = dialog_of(self)
    if d then state(res).dialog = d end
  end
  return res
end

--- Sets what runs for each provisional (1xx) response.
-- @function client_tx:on_provisional
-- @tparam ?func fn `fn(res, tx)`, or nil
-- @treturn ?func the previous one

-- tx:on_provisional(fn(res, tx) | nil) -> previous: fn runs for each 1xx
function methods.on_provisional(self, fn)
  if fn ~= nil and type(fn) ~= "function" then
    error("luasip.client_tx:on_provisional: function expected", 2)
  end
  local st = state(self)
  local old = st.on_provisional
  st.on_provisional = fn
  return old
end

--- The transaction's dialog (early or confirmed), ready for use.
-- @function client_tx:dialog
-- @return the dialog

-- tx:dialog() -> the transaction's dialog (early or confirmed), ready for use
methods.dialog = dialog_of

-- a client transaction got a response
dispatcher.on_event("response", function(tx, res)
  if not tx or not res then return end
  local st = state(tx)
  local status = res.status
  if status < 200 then
    local fn = st.on_provisional
    if fn then
      local ok, err = pcall(fn, res, tx)
      if not ok then dispatcher.log("error", "on_provisional failed: " .. dispatcher.err_text(err)) end
    end
    return
  end
  st.final = res
  if st.gave_up and status < 300 then
    -- a 2xx crossed our CANCEL (or came after we stopped waiting): the core ACKed it,
    -- nobody wants the call: end it (RFC 3261 15)
    local d = C.dialog(tx)
    if d then
      d:send{ method = "BYE" }
      d:terminate()
    end
    return
  end
  local slot = st.slot
  if slot then dispatcher.fill(slot, res) end
end)

dispatcher.on_event("tx_closed", function(tx)
  local slot = tx and state(tx).slot
  if slot then dispatcher.fill(slot, nil, "agent closed", "closed") end
end)

return M
