local H = require "spec.helper"

-- Issue 15 item 1: sofia 1.12's resolver loops forever inside one call when it cannot
-- connect() to a name server (csrc/dnsconf.c). Inside a network namespace whose only
-- interface is loopback the system's name servers are unreachable: a BYE that needs DNS
-- must fail with 503 and leave the server answering, and a burst of them must leave it
-- answering and idle (issue 11's deaf-after-unresolvable-hosts case). spec/peers/deafdns.py
-- drives it.
local function why_not()
  local ok = os.execute("timeout 5 unshare -n true >/dev/null 2>&1")
  if not (ok == true or ok == 0) then
    return "cannot create a network namespace (unshare -n needs root)"
  end
end
local skip = why_not()
local it_ns = skip and function(name) pending(name .. " -- " .. skip) end or it

describe("the resolver with no reachable name server", function()
  it_ns("fails the BYE of an unACKed 2xx with 503 and keeps answering", function()
    local inner = table.concat({
      "ip link set lo up &&",
      "LUA_PATH=" .. H.shquote("lua/?.lua;lua/?/init.lua;;"),
      "LUA_CPATH=" .. H.shquote("build/" .. (os.getenv("LUASIP_FLAVOUR") or "5.4") .. "/?.so;;"),
      "exec python3 spec/peers/deafdns.py", H.shquote(H.interpreter()) }, " ")
    local p = io.popen(("timeout -k 2 40 unshare -n sh -c %s 2>&1"):format(H.shquote(inner)))
    local out = p:read("*a")
    p:close()
    assert.matches("invite 200", out, 1, true)
    assert.matches("no ACK for 2xx to INVITE deaf1@127.0.0.1: sending BYE", out, 1, true)
    assert.matches("BYE after the unACKed 2xx (deaf1@127.0.0.1) failed: 503", out, 1, true)
    -- then 200 more INVITEs whose Contacts (and some Vias) name hosts only DNS knows:
    -- every one answered, every BYE failed 503, and the process idle afterwards (it
    -- used to sit at ~66 % CPU inside sofia's resolver)
    assert.matches("burst 200/200", out, 1, true)
    assert.equal("201", out:match("byes failed (%d+)"), out)
    local idle = tonumber(out:match("idle cpu ([%d.]+)"))
    assert.is_truthy(idle, out)
    assert.is_true(idle < 20, "CPU while idle: " .. idle .. " %\n" .. out)
    local answered, sent, worst = out:match("options (%d+)/(%d+) max ([%d.]+)")
    assert.is_truthy(answered, out)
    assert.equal(sent, answered, out)
    assert.is_true(tonumber(sent) >= 20, out)
    -- nothing in the log about sofia's resolver socket (it used to print millions of lines)
    assert.is_nil(out:find("sres_server_socket", 1, true), out)
    assert.is_true(tonumber(worst) < 1000, out)
  end)
end)
