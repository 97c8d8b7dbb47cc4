local H = require "spec.helper"

-- Smoke of the SIP fuzzer (scripts/fuzz-sip.py; `make fuzz-sip` runs the full 20,000):
-- 1,000 mutated requests from fuzz/seeds/sip/ to examples/uas.lua, run by the interpreter
-- and build/<flavour> of this suite, with a fixed seed.  It exits 0 only when no canary
-- OPTIONS was late or unanswered, no answer stalled the loop over 100 ms, nothing the
-- RFC rejects got a 2xx, the example lived and its log holds no raw control byte.
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
-- The default seed, not one picked to pass.  On main at the time of writing it fails on
-- one finding outside issue 15's items 1-3, on purpose: a Max-Forwards that is not a
-- number ("7\xe00") gets a 2xx (build/fuzz-findings has the input; the fix belongs in the
-- core's request checks, beside the Request-URI and Content-Length ones).
local SEED = "1"
-- Waits for issue 15 item 3 (parse time grows with the square of the line count, in
-- sofia's msg_extract; the core is being given a cap): inputs are cut to 8,000 bytes,
-- since a 60 KB datagram of short lines still stalls the loop 0.3-1 s.  Drop the cap
-- (and the argument) once the core bounds what a datagram may cost.
local MAX_SIZE = "8000"

describe("scripts/fuzz-sip.py smoke", function()
  it("1,000 inputs to examples/uas.lua: nothing flagged", function()
    local out = os.tmpname()
    os.remove(out)
    local p = H.background({ "python3", "scripts/fuzz-sip.py", "--lua", H.interpreter(),
      "--flavour", FLAVOUR, "-n", "1000", "--seed", SEED, "--max-size", MAX_SIZE,
      "--max-seconds", "40", "--out", out }, 55)
    finally(function() p.kill(); os.execute("rm -rf " .. H.shquote(out)) end)
    H.run_until(function() return p.done() end, 55, "fuzz-sip.py")
    local f = io.open(out .. "/findings.txt")
    local findings = f and f:read("*a") or ""
    if f then f:close() end
    assert.equal(0, p.done(), p.log() .. "\n" .. findings)
    assert.matches("inputs     1000 %(udp 950, tcp 50%)", p.log())
    assert.matches("canaries   1 sent, 1 answered", p.log())
  end)
end)
