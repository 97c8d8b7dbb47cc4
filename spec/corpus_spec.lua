local H = require "spec.helper"

-- RFC 4475 torture corpus against examples/uas.lua.  Every message of
-- ../shared/corpus/rfc4475 goes out unmodified from 127.0.0.1:5060 to a uas on
-- 127.0.0.1:5062, both inside a private network namespace (`unshare -n`): the corpus'
-- Via sent-by values have no port (answers go to 5060, RFC 3261 18.2.2) or name hosts
-- that must never be resolved for real.  spec/peers/corpus/driver.py starts the uas,
-- sends, ACKs INVITE answers, records every reply and stops the uas; it runs once, bounded
-- by timeout(1), and each file is then judged against the behaviour its manifest.tsv row
-- expects.  Messages whose top Via names TCP go over TCP (nta discards a request whose
-- Via transport differs from the one it arrived on); all others as ONE UDP datagram.

local CORPUS = "../shared/corpus/rfc4475"   -- relative to the repository root (busted's cwd)
local DRIVER = "spec/peers/corpus/driver.py"
local TARGET = "127.0.0.1:5062"
local MAX_SECONDS = 90                      -- the whole run; it takes about 17 s

local function exists(path)
  local f = io.open(path)
  if f then f:close() end
  return f ~= nil
end

local function quiet(cmd)
  local ok = os.execute(cmd .. " >/dev/null 2>&1")
  return ok == true or ok == 0
end

-- why the corpus cannot run here, or nil
local function unavailable()
  if not exists(CORPUS .. "/manifest.tsv") then
    return "RFC 4475 corpus not found at " .. CORPUS .. " (beside the repository)"
  end
  if not quiet("command -v python3") then return "python3 not installed" end
  if not quiet("timeout 5 unshare -n true") then
    return "cannot create a network namespace (unshare -n needs root)"
  end
  return nil
end

-- Expectations, from manifest.tsv's expected_behaviour (the RFC is the oracle).  `want`:
-- the acceptable final statuses, or "drop" (no reply at all).  For may-reject rows both the
-- rejection and the normal answer are accepted.  `known`: behaviour observed where luasip
-- (sofia-sip 1.12 underneath) deviates from the RFC, accepted and named in the test, so a
-- fix shows up as the RFC answer.  `check(replies)`: extra assertions on the answer.
local function contacts(r)
  local list = {}
  for _, h in ipairs(r.headers) do
    if h.name == "contact" or h.name == "m" then list[#list + 1] = h.value end
  end
  return list
end

local function has_header(name)
  return function(r)
    for _, h in ipairs(r.headers) do
      if h.name == name then return end
    end
    error(("%s answer without a %s header"):format(r.status, name))
  end
end

-- the 200 lists one binding, whose URI (inside <>) contains text -- or lacks it (absent)
local function one_contact(text, absent)
  return function(r)
    local list = contacts(r)
    assert.equal(1, #list, "Contacts in the 200: " .. table.concat(list, " | "))
    local uri = list[1]:match("^<([^>]*)>") or list[1]
    if absent then
      assert.is_nil(uri:find(text, 1, true), "binding URI " .. uri)
    else
      assert.is_truthy(uri:find(text, 1, true), "binding URI " .. uri)
    end
  end
end

local EXPECT = {
  -- its To carries a tag: parsed as well-formed, it is a re-INVITE for a dialog the uas
  -- does not have, so RFC 3261 12.2.2 answers 481 (not 400)
  { "wsinv.dat", { 481 },
    "parses a short tortuous INVITE (folding, odd LWS, To tag) and answers 481 for its unknown dialog" },
  { "intmeth.dat", { 501 }, "answers 501 with Allow to an extension method made of every token character",
    known = "drop", why = "sofia's request-line parser rejects '+' and '`' in the method token"
      .. " and discards the message as garbage",
    check = has_header("allow") },
  { "esc01.dat", { 200 }, "accepts % escapes in the Request-URI and From and answers 200" },
  { "escnull.dat", { 200 }, "registers both Contacts with escaped NULs (200 listing %00 and %00%00)",
    check = function(r)
      local list = contacts(r)
      assert.equal(2, #list, table.concat(list, " | "))
      assert.matches("^<sip:%%00@host5%.example%.com>", list[1])
      assert.matches("^<sip:%%00%%00@host5%.example%.com>", list[2])
    end },
  { "esc02.dat", { 501 }, "answers 501 with Allow to method RE%47IST%45R (not REGISTER)",
    check = has_header("allow") },
  { "lwsdisp.dat", { 200 }, "accepts a display name without LWS before < and answers 200" },
  { "longreq.dat", { 200 }, "accepts very long header values and many Via values and answers 200" },
  { "dblreq.dat", { 200 }, "answers the REGISTER 200 and ignores the INVITE-like trailing octets",
    check = function(_, all)
      for _, x in ipairs(all) do assert.equal("REGISTER", x.method, x.line) end
    end },
  { "semiuri.dat", { 200 }, "accepts ; in the Request-URI user part and answers 200" },
  { "transports.dat", { 200 }, "accepts Via values with unknown transports and answers 200" },
  { "mpart01.dat", { 200, 415 }, "frames a multipart MESSAGE with binary parts (200, or 415)" },
  { "unreason.dat", "drop", "drops an unsolicited 200 with a UTF-8 reason phrase" },
  { "noreason.dat", "drop", "drops an unsolicited 100 with an empty reason phrase" },
  { "badinv01.dat", { 400 }, "answers 400 to extra ; and , separators in Via and Contact",
    known = "drop", why = "nta finds the Via unparsable and discards the request: no Via to"
      .. " answer to" },
  { "clerr.dat", { 400 }, "answers 400 to a Content-Length larger than the datagram" },
  { "ncl.dat", { 400 }, "answers 400 to a negative Content-Length" },
  { "scalar02.dat", { 400 }, "answers 400 to a CSeq above 2**32-1" },
  { "scalarlg.dat", "drop", "drops a response with overlarge scalar fields" },
  { "quotbal.dat", { 400 }, "answers 400 to an unterminated quoted display name" },
  { "ltgtruri.dat", { 400 }, "answers 400 to a Request-URI enclosed in <>" },
  { "lwsruri.dat", { 400 }, "answers 400 to LWS embedded in the Request-URI",
    known = "drop", why = "sofia's request-line parser discards the message as garbage" },
  { "lwsstart.dat", { 400, 200 }, "rejects (400) or accepts (200) extra SP in the request line" },
  { "trws.dat", { 400, 200 }, "rejects (400) or accepts (200) trailing SP in the request line" },
  { "escruri.dat", { 400, 200 }, "rejects (400) or accepts (200) escaped headers in the Request-URI" },
  { "baddate.dat", { 400, 200 }, "accepts (200) or rejects (400) a non-GMT Date" },
  { "regbadct.dat", { 400, 200 }, "answers 400 (or registers) a Contact URI with ? outside <>" },
  { "badaspec.dat", { 400, 200 }, "rejects (400) or accepts (200) spaces within an addr-spec" },
  { "baddn.dat", { 400, 200 }, "answers 400 (or 200) to non-token characters in a display name" },
  { "badvers.dat", { 505 }, "answers 505 to SIP/7.0",
    known = "drop", why = "nta builds the 505 but cannot send it: no transport for the"
      .. " request's SIP/7.0/UDP Via ('mreply: send fails')" },
  { "mismatch01.dat", { 400 }, "answers 400 to a CSeq method that differs from the request line" },
  { "mismatch02.dat", { 501, 400 }, "answers 501 (or 400) to an unknown method with a CSeq mismatch" },
  { "bigcode.dat", "drop", "drops a response with a status code above 699" },
  { "badbranch.dat", { 400, 200 }, "answers 400 or processes (200) an OPTIONS with branch=z9hG4bK" },
  { "insuf.dat", { 400 }, "answers 400 to an INVITE without Call-ID, From and To" },
  { "unkscm.dat", { 416 }, "answers 416 to an unknown Request-URI scheme" },
  { "novelsc.dat", { 416, 404 }, "answers 416 (or 404) to an im: Request-URI" },
  { "unksm2.dat", { 400 }, "rejects a REGISTER whose To is not a SIP URI with 400" },
  { "bext01.dat", { 420 }, "answers 420 with Unsupported to an unknown Require option",
    known = "drop", why = "its Via names TLS; with no TLS transport the datagram arrives over"
      .. " UDP and nta discards a Via/transport mismatch",
    check = function(r)
      has_header("unsupported")(r)
    end },
  { "invut.dat", { 415 }, "answers 415 with Accept to an INVITE with an unknown Content-Type",
    check = has_header("accept") },
  { "regaut01.dat", { 200, 401, 405 }, "registers (200) despite an unknown Authorization scheme" },
  { "multi01.dat", { 400 }, "answers 400 to several Call-ID/To/From/Max-Forwards/CSeq values" },
  { "mcl01.dat", { 400 }, "answers 400 to conflicting Content-Length values" },
  { "bcast.dat", "drop", "drops an unsolicited 200 with a broadcast Via" },
  { "zeromf.dat", { 200 }, "answers an OPTIONS with Max-Forwards: 0 with 200 (as an endpoint)" },
  { "cparam01.dat", { 200 }, "registers a Contact parameter as a contact-param, not a URI parameter",
    check = one_contact(";unknownparam", true) },
  { "cparam02.dat", { 200 }, "registers a URI parameter inside <> as part of the binding URI",
    check = one_contact(";unknownparam") },
  { "regescrt.dat", { 200 }, "registers a Contact URI keeping its escaped Route header",
    check = one_contact("?Route=%3Csip:sip.example.com%3E") },
  { "sdp01.dat", { 406, 400 }, "answers 406 with Warning 399 (or 400) when Accept excludes SDP",
    check = function(r)
      if r.status == 406 then has_header("warning")(r) end
    end },
  { "inv2543.dat", { 200 }, "accepts an RFC 2543 INVITE (no branch, tag, Content-Length) with 200" },
  { "test.dat", "drop", "survives the unreferenced test.dat (no SIP-Version): no answer" },
}

-- ----------------------------------------------------------------- running the corpus

local results, run_error

-- parse the driver's output into results[file] = { transport, replies = {...} }
local function parse(text)
  local res, last = { ["@alive"] = false }, nil
  for line in text:gmatch("[^\n]+") do
    local kind, a, b, c = line:match("^(%u)\t([^\t]*)\t?([^\t]*)\t?(.*)$")
    if kind == "F" then
      res[a] = res[a] or { replies = {} }
      res[a].transport = b
    elseif kind == "R" then
      res[a] = res[a] or { replies = {} }
      last = { method = b, line = c, status = tonumber(c:match("^SIP/2%.0 (%d%d%d)")),
        headers = {} }
      table.insert(res[a].replies, last)
    elseif kind == "H" and last then
      table.insert(last.headers, { name = b, value = c })
    elseif kind == "P" then
      res["@probe"] = a
    elseif kind == "A" then
      res["@alive"] = a == "1"
    end
  end
  return res
end

local function run_corpus()
  if results or run_error then return end
  local out, log = os.tmpname(), os.tmpname()
  local flavour = os.getenv("LUASIP_FLAVOUR") or "5.4"
  local inner = table.concat({
    "ip link set lo up &&",
    "LUA_PATH=" .. H.shquote("lua/?.lua;lua/?/init.lua;;"),
    "LUA_CPATH=" .. H.shquote("build/" .. flavour .. "/?.so;;"),
    "exec python3", DRIVER, "--corpus", H.shquote(CORPUS), "--target", TARGET,
    "--out", H.shquote(out), "--log", H.shquote(log),
    "--", H.shquote(H.interpreter()), "examples/uas.lua", TARGET }, " ")
  local cmd = ("timeout -k 5 %d unshare -n sh -c %s 2>&1"):format(MAX_SECONDS, H.shquote(inner))
  local p = io.popen(cmd)
  local msg = p:read("*a")
  p:close()
  local f = io.open(out)
  local text = f and f:read("*a") or ""
  if f then f:close() end
  if text:find("\nA\t") or text:find("^A\t") then
    results = parse(text)
  else
    local lf = io.open(log)
    local uas_log = lf and lf:read("*a") or ""
    if lf then lf:close() end
    run_error = ("corpus driver failed: %s\n-- uas log (start):\n%s"):format(msg,
      uas_log:sub(1, 4000))
  end
  os.remove(out)
  os.remove(log)
end

local function got()
  run_corpus()
  if run_error then error(run_error, 2) end
  return results
end

local function describe_replies(list)
  if #list == 0 then return "(no reply)" end
  local s = {}
  for i, r in ipairs(list) do s[i] = r.line .. " [" .. r.method .. "]" end
  return table.concat(s, " | ")
end

local function judge(e)
  local file, want, known, check = e[1], e[2], e.known, e.check
  local r = got()[file]
  assert.is_table(r, file .. " was not sent")
  local replies = r.replies
  local finals = {}
  for _, x in ipairs(replies) do
    if x.status and x.status >= 200 then finals[#finals + 1] = x end
  end
  local seen = describe_replies(replies)
  if #replies == 0 and (want == "drop" or known == "drop") then return end
  assert.is_true(want ~= "drop", file .. " must be dropped, got: " .. seen)
  assert.is_true(#finals > 0, file .. ": no final answer, got: " .. seen)
  -- retransmissions aside, one final answer
  for _, x in ipairs(finals) do
    assert.equal(finals[1].status, x.status, file .. " answered twice: " .. seen)
  end
  local ok = false
  for _, s in ipairs(want) do ok = ok or finals[1].status == s end
  assert.is_true(ok, ("%s: expected %s, got: %s"):format(file, table.concat(want, " or "), seen))
  if check then check(finals[1], replies) end
end

-- ----------------------------------------------------------------- the specs

local why_not = unavailable()
local it_corpus = why_not and function(name) pending(name .. " -- " .. why_not) end or it

describe("examples/uas.lua under the RFC 4475 torture corpus", function()
  it_corpus("has an expectation for every manifest.tsv row and every .dat file", function()
    local rows, n = {}, 0
    for line in io.lines(CORPUS .. "/manifest.tsv") do
      local file = line:match("^([%w_%-]+%.dat)\t")
      if file then rows[file], n = true, n + 1 end
    end
    assert.equal(50, n)
    local seen = {}
    for _, e in ipairs(EXPECT) do
      assert.is_true(rows[e[1]], e[1] .. " is not in manifest.tsv")
      assert.is_nil(seen[e[1]], e[1] .. " listed twice")
      seen[e[1]] = true
    end
    for file in pairs(rows) do
      assert.is_true(seen[file], file .. " has no expectation")
      assert.is_true(exists(CORPUS .. "/" .. file), file .. " missing from the corpus")
    end
  end)

  for _, e in ipairs(EXPECT) do
    local name = e[1] .. ": " .. e[3]
    if e.known then
      name = name .. " (known deviation: " .. e.known .. ", " .. e.why .. ")"
    end
    it_corpus(name, function() judge(e) end)
  end

  it_corpus("survives the whole corpus: the uas still runs and answers an OPTIONS 200", function()
    local r = got()
    assert.is_true(r["@alive"], "the uas exited during the corpus")
    assert.equal("SIP/2.0 200 OK", r["@probe"])
  end)
end)
