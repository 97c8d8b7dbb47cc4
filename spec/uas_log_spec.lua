local H = require "spec.helper"

-- examples/uas.lua logs values from the network (URIs, bodies): control bytes in them must
-- reach its log escaped, never raw (issue 15 item 5; found again by scripts/fuzz-sip.py).
-- The fuzzer's --replay starts the example with this interpreter, sends each file as one
-- datagram, sends a canary OPTIONS after it and fails when the log holds a raw control byte.
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"

describe("examples/uas.lua log", function()
  it("writes control bytes from the From URI and a MESSAGE body as \\xNN", function()
    local out = os.tmpname()
    os.remove(out)
    local p = H.background({ "python3", "scripts/fuzz-sip.py", "--lua", H.interpreter(),
      "--flavour", FLAVOUR, "--out", out, "--replay",
      "fuzz/seeds/sip/uas-log-ctl-in-from.sip", "fuzz/seeds/sip/uas-log-esc-in-body.sip" }, 30)
    finally(function() p.kill(); os.execute("rm -rf " .. H.shquote(out)) end)
    H.run_until(function() return p.done() end, 30, "fuzz-sip.py --replay")
    local log = p.log()
    assert.equal(0, p.done(), log)
    assert.matches("uas%-log%-ctl%-in%-from%.sip: 200", log)
    assert.matches("uas%-log%-esc%-in%-body%.sip: 200", log)
    assert.not_matches("log holds raw", log)
    -- the escaped forms are in the example's log
    local f = assert(io.open(out .. "/uas.log", "rb"))
    local uas = f:read("*a")
    f:close()
    assert.truthy(uas:find("from sip:alice\\x15@127.0.0.1", 1, true), uas)
    assert.truthy(uas:find("\\x1b[31mred\\x1b[0m\\x0d\nsecond line\\x0dthird\\x07", 1, true), uas)
    assert.falsy(uas:find("[%z\1-\8\11-\31\127]"), uas)
  end)
end)
