-- luasip.embed: the loop driven by a host event loop (cqueues, luv, ...).  The C core
-- hands out one descriptor that is readable whenever luasip has work (a message, a due
-- sofia timer, luasip used from outside its loop); the host polls it and calls
-- step(0).  README: "Embedding".
local core = require "luasip.core"

local M = {}

-- pollfd() -> fd | nil, err, code
function M.pollfd(...)
  if select("#", ...) > 0 then error("luasip.pollfd: no arguments expected", 2) end
  return core.pollfd()
end

-- timeout() -> seconds until the next sofia timer, or nil when none is set
function M.timeout(...)
  if select("#", ...) > 0 then error("luasip.timeout: no arguments expected", 2) end
  return core.timeout()
end

-- A pollable object in cqueues' sense (cqueues.poll reads :pollfd, :events, :timeout);
-- :step() is sip.step(0).
local Pollable = {}
Pollable.__index = Pollable
function Pollable:pollfd() return self.fd end
function Pollable.events() return "r" end
function Pollable.timeout() return core.timeout() end
function Pollable.step() return core.step(0) end

-- pollable() -> object | nil, err, code
function M.pollable(...)
  if select("#", ...) > 0 then error("luasip.pollable: no arguments expected", 2) end
  local fd, err, code = core.pollfd()
  if not fd then return nil, err, code end
  return setmetatable({ fd = fd }, Pollable)
end

return M
