-- luasip.class: how the Lua layer builds the classes of the C core.
-- Each userdata class (luasip.agent, luasip.request, ...) has ONE Lua module that owns its
-- method table and its getters (lua/luasip/<class>.lua); that module assigns each method
-- once.  Per-object state of the Lua layer lives in class.state(obj) (the object's
-- uservalue), never in fields: objects are read-only to their users, who keep their own
-- values in obj.data.  Other modules extend a class only through class.extend (a NEW
-- method name: a name taken raises, so the order of require never changes behaviour) and
-- through the hooks a class calls at documented points (class.hook).
local core = require "luasip.core"

local M = {}

local state = core.state
M.state = state

local function data(self)
  local st = state(self)
  local d = st.data
  if not d then
    d = {}
    st.data = d
  end
  return d
end

-- get(tname) -> methods, getters, cmethods (for the class's own module).  The methods
-- table is reset to the C methods, less the internal ones (names starting with "_"),
-- which stay reachable in cmethods: loading the module twice gives the same class.
function M.get(tname)
  local methods, getters, cmethods = core.class(tname)
  for k in pairs(methods) do methods[k] = nil end
  for k, v in pairs(cmethods) do
    if k:sub(1, 1) ~= "_" then methods[k] = v end
  end
  for k in pairs(getters) do getters[k] = nil end
  getters.data = data
  return methods, getters, cmethods
end

-- extend(tname, name, fn): adds a new method to a class; raises if the name is taken
function M.extend(tname, name, fn)
  if type(name) ~= "string" or type(fn) ~= "function" then
    error("luasip.class.extend: method name and function expected", 2)
  end
  local methods, getters = core.class(tname)
  if methods[name] ~= nil or getters[name] ~= nil then
    error("luasip.class.extend: " .. tname .. " already has '" .. name .. "'", 2)
  end
  methods[name] = fn
end

-- Hooks: hook(tname, point, fn) adds fn to a point a class defines (README lists them);
-- run(tname, point, ...) calls each, in the order added, protected: a failing hook is
-- logged, never breaks the class.
local hooks = {}           -- hooks[tname][point] = { fn... }

function M.hook(tname, point, fn)
  if type(fn) ~= "function" then error("luasip.class.hook: function expected", 2) end
  local per = hooks[tname] or {}
  hooks[tname] = per
  local list = per[point] or {}
  per[point] = list
  list[#list + 1] = fn
  return fn
end

function M.unhook(tname, point, fn)
  local list = hooks[tname] and hooks[tname][point]
  for i = #(list or {}), 1, -1 do
    if list[i] == fn then table.remove(list, i) end
  end
end

local log
function M.run(tname, point, ...)
  local per = hooks[tname]
  local list = per and per[point]
  if not list then return end
  for i = 1, #list do
    local ok, err = pcall(list[i], ...)
    if not ok then
      log = log or require("luasip.dispatcher").log
      log("error", tname .. " hook " .. point .. " failed: " .. tostring(err))
    end
  end
end

-- call(fname, level, f, ...) -> what f returns: calls a C method for a public Lua method and
-- re-raises its argument errors at the caller of that public method, named after it
-- (a C error would name the Lua wrapper's line and an internal function name)
local function restate(fname, err)
  if type(err) ~= "string" then return err end
  err = err:gsub("^[^\n]-:%d+: ", "", 1)
  local n, what = err:match("^bad argument #(%d+) to '[^']*' %((.*)%)$")
  if n then
    -- methods count self as #1
    err = fname .. ": bad argument #" .. (tonumber(n) - (fname:find(":") and 1 or 0))
      .. " (" .. what .. ")"
  elseif err:find("^luasip[%w%.:_]*: ") then
    err = fname .. err:sub((err:find(": ", 1, true)))        -- the public name
  elseif not err:find("^attempt to use a closed") then
    err = fname .. ": " .. err
  end
  return err
end

-- luasip's own Lua files: this file's directory and the façade beside it
local LIB_DIR = debug.getinfo(1, "S").source:match("^@(.*)class%.lua$")
local FACADE = LIB_DIR and LIB_DIR:sub(1, -2) .. ".lua"

-- error level (seen from M.call) of the frame `level` names, moved up past tail-call
-- entries and luasip's own frames: the public functions reach M.call through tail calls,
-- which plain Lua 5.1 counts as stack levels of their own (5.2+ and LuaJIT do not), so a
-- fixed level would point at no line there.
local function caller_level(level)
  local l = level + 2                    -- getinfo counts this function too
  while true do
    local info = debug.getinfo(l, "S")
    if not info then return level + 1 end
    local src = info.source:sub(2)
    local own = info.what == "tail"
      or (LIB_DIR ~= nil and (src:sub(1, #LIB_DIR) == LIB_DIR or src == FACADE))
    if not own then return l - 1 end
    l = l + 1
  end
end

-- level: as for error(), seen from the function that calls M.call.  (C methods return
-- at most four values: no table per call on this path of every request.)
function M.call(fname, level, f, ...)
  local ok, a, b, c, d = pcall(f, ...)
  if not ok then error(restate(fname, a), caller_level(level)) end
  return a, b, c, d
end

-- check_options(opts, known, fname, level): raises on an option key not in known
function M.check_options(opts, known, fname, level)
  for k in pairs(opts) do
    if not known[k] then
      error(fname .. ": unknown option '" .. tostring(k) .. "'", (level or 2) + 1)
    end
  end
end

return M
