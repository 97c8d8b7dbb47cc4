local H = require "spec.helper"

-- The README's "Testing your application" example, as a newcomer would run it: its
-- router.lua and router_spec.lua copied out of the README into an empty directory, and
-- `busted router_spec.lua` run there.
describe("README: Testing your application", function()
  local function block(text, first_line)
    for code in text:gmatch("```lua\n(.-)```") do
      if code:sub(1, #first_line) == first_line then return code end
    end
    error("no ```lua block starting with " .. first_line .. " in README.md")
  end

  it("runs the router example's spec green with busted", function()
    local f = assert(io.open("README.md"))
    local readme = f:read("*a")
    f:close()
    local dir = os.tmpname()
    os.remove(dir)
    assert(os.execute("mkdir -p " .. dir))
    local defer = H.defer_with(function(fn) finally(fn) end)
    defer(function() os.execute("rm -rf " .. H.shquote(dir)) end)
    for name, first in pairs{ ["router.lua"] = "-- router.lua", ["router_spec.lua"] = "-- router_spec.lua" } do
      local out = assert(io.open(dir .. "/" .. name, "w"))
      out:write(block(readme, first))
      out:close()
    end
    -- the paths of an installed luasip: this tree's, absolute
    local pwd = io.popen("pwd"):read("*l")
    local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
    local lpath = pwd .. "/lua/?.lua;" .. pwd .. "/lua/?/init.lua;;"
    local cpath = pwd .. "/build/" .. flavour .. "/?.so;;"
    local cmd = ("cd %s && LUA_PATH=%s LUA_CPATH=%s timeout -s KILL 120 %s /usr/bin/busted "
      .. "-o TAP router_spec.lua 2>&1; echo rc=$?"):format(H.shquote(dir), H.shquote(lpath),
      H.shquote(cpath), H.interpreter())
    local p = io.popen(cmd)
    local out = p:read("*a")
    p:close()
    assert.matches("rc=0%s*$", out)
    assert.matches("ok 1 %- router.lua rings the phone registered as the extension", out)
    assert.matches("ok 2 %- router.lua answers 404", out)
  end)
end)
