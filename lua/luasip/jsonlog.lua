-- luasip.jsonlog: the "json" logger of sip.set_logger -- one JSON object a line on
-- stderr: {"ts":"2024-05-01T12:00:00.123Z","level":"warn","msg":"...","call_id":"..."}
-- (call_id only for a line about a call).  Strings are escaped per RFC 8259; bytes that
-- are not UTF-8 (values from the network) are written as \u00XX.
local core = require "luasip.core"

local ESC = { ['"'] = '\\"', ["\\"] = "\\\\", ["\b"] = "\\b", ["\f"] = "\\f",
  ["\n"] = "\\n", ["\r"] = "\\r", ["\t"] = "\\t" }

local function esc_ctrl(c)
  return ESC[c] or string.format("\\u%04x", c:byte())
end

-- a run of bytes >= 0x80: valid UTF-8 sequences kept, any other byte as \u00XX
local function esc_high(run)
  local out, i, n = {}, 1, #run
  while i <= n do
    local b = run:byte(i)
    local len = b >= 0xF0 and b <= 0xF4 and 4 or b >= 0xE0 and 3 or b >= 0xC2 and b < 0xE0 and 2
      or 0
    local ok = len > 0 and i + len - 1 <= n
    for k = i + 1, ok and i + len - 1 or 0 do
      local cb = run:byte(k)
      if cb < 0x80 or cb > 0xBF then ok = false break end
    end
    if ok then
      out[#out + 1] = run:sub(i, i + len - 1)
      i = i + len
    else
      out[#out + 1] = string.format("\\u%04x", b)
      i = i + 1
    end
  end
  return table.concat(out)
end

local function str(s)
  return '"' .. tostring(s):gsub('[%c"\\]', esc_ctrl):gsub("[\128-\255]+", esc_high) .. '"'
end

local M = {}
M.string = str

-- line(level, msg, call_id) -> the JSON text of one line (no newline)
function M.line(level, msg, call_id)
  local t = core.time()
  local s = math.floor(t)
  local ts = os.date("!%Y-%m-%dT%H:%M:%S", s) .. string.format(".%03dZ", math.floor((t - s) * 1000))
  local out = '{"ts":"' .. ts .. '","level":' .. str(level) .. ',"msg":' .. str(msg)
  if call_id ~= nil then out = out .. ',"call_id":' .. str(call_id) end
  return out .. "}"
end

function M.logger(level, msg, call_id)
  io.stderr:write(M.line(level, msg, call_id), "\n")
end

return M
