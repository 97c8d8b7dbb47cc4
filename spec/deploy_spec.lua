local H = require "spec.helper"

-- examples/deploy: Kamailio's dispatcher in front of two luasip hosts (2 workers each),
-- Redis on a third address, all in a network namespace this spec makes (unshare -n);
-- examples/deploy/phones.lua drives it and kills host A midway.
local function missing()
  local function has(cmd)
    local ok = os.execute("command -v " .. cmd .. " >/dev/null 2>&1")
    return ok == true or ok == 0
  end
  for _, cmd in ipairs{ "kamailio", "redis-server", "unshare", "ip" } do
    if not has(cmd) then return cmd .. " is not installed" end
  end
  local ok = os.execute("timeout 5 unshare -n true >/dev/null 2>&1")
  if not (ok == true or ok == 0) then return "cannot create a network namespace (unshare -n needs root)" end
end

describe("examples/deploy (Kamailio dispatcher, 2 luasip hosts, Redis)", function()
  local why = missing()
  local it_ = why and pending or it
  it_("serves every registration through either host and fails over when one dies" ..
    (why and (" -- " .. why) or ""), function()
    local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
    local p = io.popen(("LUA=%s LUASIP_FLAVOUR=%s timeout -k 2 120 unshare -n sh "
      .. "examples/deploy/run.sh test 2>&1; echo \"exit=$?\"")
      :format(H.shquote(H.interpreter()), H.shquote(flavour)))
    local out = p:read("*a")
    p:close()
    for _, what in ipairs{ "Kamailio answers OPTIONS through a luasip host",
      "alice and bob register through Kamailio", "8/8 MESSAGEs reach bob over both hosts",
      "a call alice %-> bob", "10 MESSAGEs in a row after host A died",
      "8/8 MESSAGEs bob %-> alice, every registration still served",
      "a call bob %-> alice through host B" } do
      assert.truthy(out:find("\nok " .. what), "no 'ok " .. what .. "' in:\n" .. out)
    end
    assert.truthy(out:find("exit=0\n", 1, true), out)
  end)
end)
