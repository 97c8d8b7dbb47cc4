local H = require "spec.helper"

-- Smoke of the SIP fuzzer (scripts/fuzz-sip.py; `make fuzz-sip` runs the full 20,000):
-- 1,000 mutated requests from fuzz/seeds/sip/ to examples/uas.lua, run by the interpreter
-- and build/<flavour> of this suite, with a fixed seed.  It exits 0 only when no canary
-- OPTIONS was late or unanswered, no answer stalled the loop over 100 ms, nothing the
-- RFC rejects got a 2xx, the example lived and its log holds no raw control byte.
local FLAVOUR = os.getenv("LUASIP_FLAVOUR") or "5.4"
-- The default seed, not one picked to pass (it found the Max-Forwards that was not a
-- number and got a 2xx: fuzz/findings/new-max-forwards-*.sip).  Inputs are not cut:
-- the agent's max_message_size bounds what a large datagram costs.
local SEED = "1"

-- the seeds the oracle must find rejectable (RFC 3261 requires a 4xx); every other seed,
-- the RFC 4475 messages the RFC calls valid or lets a liberal element accept included,
-- must pass the checker: it may never flag a legal message
local REJECT = {
  ["i15-4-cl-larger-than-body.sip"] = "Content%-Length 10 larger than the body",
  ["i15-4-cl-no-empty-line.sip"] = "Content%-Length 5 larger than the body",
  ["i15-5-8bit-in-request-uri.sip"] = "byte 0xe9 in the Request%-URI",
  ["i15-5-esc-in-request-uri.sip"] = "byte 0x1b in the Request%-URI",
  ["rfc4475-clerr.sip"] = "Content%-Length 9999 larger",
  ["rfc4475-insuf.sip"] = "no to header",
  ["rfc4475-mcl01.sip"] = "Content%-Length values differ",
  ["rfc4475-mismatch01.sip"] = "CSeq method",
  ["rfc4475-mismatch02.sip"] = "CSeq method",
  ["rfc4475-multi01.sip"] = "2 to headers",
  ["rfc4475-ncl.sip"] = "Content%-Length b'%-999' is not a number",
  ["rfc4475-scalar02.sip"] = "CSeq number %d+ above",
}

describe("scripts/fuzz-sip.py checker", function()
  it("flags the seeds RFC 3261 rejects and only those", function()
    local p = assert(io.popen("python3 scripts/fuzz-sip.py --check fuzz/seeds/sip/*.sip"))
    local out = p:read("*a")
    p:close()
    local seen = 0
    for name, verdict in out:gmatch("fuzz/seeds/sip/([^\t\n]+)\t([^\n]*)") do
      seen = seen + 1
      if REJECT[name] then
        assert.matches(REJECT[name], verdict, nil, name)
      else
        assert.equal("legal", verdict, name)
      end
    end
    assert.is_true(seen >= 70, out)
  end)
end)

describe("scripts/fuzz-sip.py smoke", function()
  it("1,000 inputs to examples/uas.lua: nothing flagged", function()
    local out = os.tmpname()
    os.remove(out)
    local p = H.background({ "python3", "scripts/fuzz-sip.py", "--lua", H.interpreter(),
      "--flavour", FLAVOUR, "-n", "1000", "--seed", SEED,
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
