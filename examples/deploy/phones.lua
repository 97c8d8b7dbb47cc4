#!/usr/bin/env lua
--[[ examples/deploy/phones.lua — the checks run.sh test runs against the deployment:
  phones register through Kamailio, MESSAGEs and a call reach users registered via the
  other host; then luasip host A is killed (SIGKILL to its launcher: its workers die with
  it) and Kamailio's OPTIONS probing must take it out: MESSAGEs and a call go through
  the other host, to the same registrations (in Redis).  One line per check:
  "ok <what>" or "FAIL <what>: <why>"; exit status 0 when every check passed.
Usage: lua phones.lua kamailio_host:port phone_address host_a_pid
]]
local sip = require "luasip"
local front, addr, pid_a = "sip:" .. arg[1], arg[2], arg[3]
local failed = 0
local function check(what, ok, why)
  print((ok and "ok " or "FAIL ") .. what .. (ok and "" or (": " .. tostring(why))))
  io.stdout:flush()
  if not ok then failed = failed + 1 end
end

local function phone(user)
  local a = assert(sip.agent{ listen = { "sip:" .. addr .. ":0" } })
  a.data.aor = "sip:" .. user .. "@10.0.0.1"
  a.data.got = 0
  a:on("MESSAGE", function(req) a.data.got = a.data.got + 1; req:reply(200) end)
  a:on("INVITE", function(req)
    local d = req:answer{ body = "v=0\r\n", content_type = "application/sdp" }
    if d then d:wait_end(10) end
  end)
  return a
end

local function register(a)
  return a:request{ method = "REGISTER", uri = front, headers = { From = "<" .. a.data.aor .. ">",
    To = "<" .. a.data.aor .. ">", Contact = "<" .. a:uri(a.data.aor:match("^sip:([^@]+)")) .. ">",
    Expires = "300" } }
end

local function message(from, to)
  return from:request{ method = "MESSAGE", uri = to.data.aor, proxy = front, body = "hi",
    content_type = "text/plain", from = "<" .. from.data.aor .. ">", timeout = 8 }
end

local function call(from, to)
  local d, res = from:invite{ uri = to.data.aor, proxy = front, body = "v=0\r\n",
    from = "<" .. from.data.aor .. ">", timeout = 8 }
  if not d then return nil, res end
  d:bye()
  return true
end

sip.spawn(function()
  local probe = phone("probe")
  -- Kamailio up and a host behind it answering (bounded)
  local up
  for _ = 1, 100 do
    local res = probe:request{ method = "OPTIONS", uri = front, timeout = 1 }
    if res and res.status == 200 then up = true break end
    sip.sleep(0.1)
  end
  check("Kamailio answers OPTIONS through a luasip host", up)
  local alice, bob = phone("alice"), phone("bob")
  local r1, e1 = register(alice)
  local r2, e2 = register(bob)
  check("alice and bob register through Kamailio", r1 and r2, e1 or e2)
  -- Call-IDs are random: 8 MESSAGEs spread over both hosts, each reaching bob
  local n = 0
  for _ = 1, 8 do if message(alice, bob) then n = n + 1 end end
  check("8/8 MESSAGEs reach bob over both hosts", n == 8 and bob.data.got == 8, n .. "/8")
  local ok, err = call(alice, bob)
  check("a call alice -> bob", ok, err)
  -- host A dies: probing takes it out, new requests go to host B
  os.execute("kill -KILL " .. pid_a)
  local t0, streak = sip.now(), 0
  while streak < 10 and sip.now() - t0 < 30 do
    if message(alice, bob) then streak = streak + 1 else streak = 0 end
  end
  check(("10 MESSAGEs in a row after host A died (%.1f s)"):format(sip.now() - t0), streak >= 10)
  n = 0
  for _ = 1, 8 do if message(bob, alice) then n = n + 1 end end
  check("8/8 MESSAGEs bob -> alice, every registration still served", n == 8, n .. "/8")
  ok, err = call(bob, alice)
  check("a call bob -> alice through host B", ok, err)
  sip.stop()
end)
sip.run()
os.exit(failed == 0 and 0 or 1)
