local H = require "spec.helper"

-- examples/deploy: Kamailio's dispatcher in front of two luasip hosts (examples/pbx.lua,
-- 2 workers each), Redis on a third, each in a network namespace of its own that
-- examples/deploy/run.sh makes (ip netns, veth pairs to a bridge, 10.77.0.0/24 only inside
-- them) and removes; examples/deploy/phones.lua drives it from the front's namespace:
-- registrations, MESSAGEs and calls across hosts, Redis restarted, host A killed.
local function missing()
  local function ok(cmd)
    local r = os.execute(cmd .. " >/dev/null 2>&1")
    return r == true or r == 0
  end
  for _, cmd in ipairs{ "kamailio", "redis-server", "ip" } do
    if not ok("command -v " .. cmd) then return cmd .. " is not installed" end
  end
  local ns = "luasip-dep-probe-" .. math.random(1e6)
  local made = ok(("timeout 10 sh -c 'ip netns add %s && ip -n %s link add p0 type veth peer name p1'")
    :format(ns, ns))
  os.execute("ip netns del " .. ns .. " >/dev/null 2>&1")
  if not made then return "cannot create network namespaces with veth pairs (ip netns needs root)" end
end

describe("examples/deploy (Kamailio dispatcher, 2 luasip hosts, Redis, in namespaces)", function()
  local why = missing()
  local it_ = why and pending or it
  it_("serves every registration through either host, rides out a Redis restart and fails over"
    .. " when a host dies" .. (why and (" -- " .. why) or ""), function()
    local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
    local ns = "luasip-dep-spec" .. math.random(1e6)
    -- run.sh removes its namespaces itself; this is for a run timeout(1) had to SIGKILL
    finally(function() os.execute("LUASIP_DEPLOY_NS=" .. ns .. " sh examples/deploy/run.sh clean") end)
    local p = io.popen(("LUASIP_DEPLOY_NS=%s LUA=%s LUASIP_FLAVOUR=%s timeout -k 2 60 sh "
      .. "examples/deploy/run.sh test 2>&1; echo \"exit=$?\""):format(ns,
      H.shquote(H.interpreter()), H.shquote(flavour)))
    local out = p:read("*a")
    p:close()
    for _, what in ipairs{ "Kamailio answers OPTIONS through a luasip host",
      "alice, bob and carol register through Kamailio",
      "12/12 MESSAGEs alice %-> bob, through both hosts", "a call alice %-> bob",
      "MESSAGE while Redis is down: 503 with Retry%-After", "REGISTER while Redis is down: 503",
      "Redis restarted: requests served again, registrations kept",
      "Kamailio's OPTIONS probes took host A out",
      "10 MESSAGEs in a row answered at once after host A died",
      "8/8 MESSAGEs bob %-> alice and carol %-> bob: every registration still served",
      "a new call bob %-> alice goes through host B" } do
      assert.truthy(out:find("\nok " .. what), "no 'ok " .. what .. "' in:\n" .. out)
    end
    assert.truthy(out:find("exit=0\n", 1, true), out)
    for line in out:gmatch("measured ([^\n]*)") do io.stdout:write("\n  ", line) end
    io.stdout:write("\n")
  end)
end)
