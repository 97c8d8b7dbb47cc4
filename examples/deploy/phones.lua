#!/usr/bin/env lua
--[[ examples/deploy/phones.lua — the checks `run.sh test` runs in the front namespace:
  alice, bob and carol (examples/users.lua, domain pbx.test) register through Kamailio;
  MESSAGEs and calls reach users registered via the other host; Redis is stopped (503 +
  Retry-After meanwhile) and restarted (the time until requests succeed again is printed);
  luasip host A is killed: Kamailio's OPTIONS probing takes it out, new calls go to host
  B, and every registration (in Redis) is still served (the failover time is printed;
  Kamailio's log, in $LUASIP_DEPLOY_DIR, tells when the probes took host A out).
  One line per check: "ok <what>" or "FAIL <what>: <why>", then "measured ..." lines;
  exit status 0 when every check passed.
Usage: lua phones.lua kamailio_host:port phone_address   (run.sh sets LUASIP_DEPLOY_*)
]]
local sip = require "luasip"
local users = assert(loadfile("examples/users.lua"))()
local front, addr = "sip:" .. arg[1], arg[2]
local failed, measured = 0, {}
local function check(what, ok, why)
  print((ok and "ok " or "FAIL ") .. what .. (ok and "" or (": " .. tostring(why))))
  io.stdout:flush()
  if not ok then failed = failed + 1 end
end
local function deploy(what) os.execute("sh examples/deploy/run.sh " .. what) end

-- a phone: answers MESSAGEs and calls, remembers which luasip host (Via) each came through
local function phone(user)
  local a = assert(sip.agent{ listen = { "sip:" .. addr .. ":0" } })
  a.data.aor, a.data.got, a.data.hosts = "sip:" .. user .. "@pbx.test", 0, {}
  a.data.auth = { username = user, password = users[user] }
  local function seen(req)
    local host = req:raw():match("\nVia: SIP/2%.0/UDP 10%.77%.0%.([23]):")
    a.data.hosts[host or "?"], a.data.last = true, host
  end
  a:on("MESSAGE", function(req) seen(req); a.data.got = a.data.got + 1; req:reply(200) end)
  a:on("INVITE", function(req)
    seen(req)
    local d = req:answer{ body = "v=0\r\n", content_type = "application/sdp" }
    if d then d:wait_end(10) end
  end)
  return a
end

local function register(a)
  return a:request{ method = "REGISTER", uri = "sip:pbx.test", proxy = front, auth = a.data.auth,
    from = "<" .. a.data.aor .. ">", headers = { To = "<" .. a.data.aor .. ">",
    Contact = "<" .. a:uri(a.data.aor:match("^sip:([^@]+)")) .. ">", Expires = "300" },
    timeout = 8 }
end

-- message(from, to) -> response | nil, err, code, response
local function message(from, to)
  return from:request{ method = "MESSAGE", uri = to.data.aor, proxy = front, body = "hi",
    content_type = "text/plain", from = "<" .. from.data.aor .. ">", auth = from.data.auth,
    timeout = 8 }
end
local function messages(from, to, n)
  local ok = 0
  for _ = 1, n do if message(from, to) then ok = ok + 1 end end
  return ok
end

local function call(from, to)
  local d, err = from:invite{ uri = to.data.aor, proxy = front, body = "v=0\r\n",
    content_type = "application/sdp", from = "<" .. from.data.aor .. ">",
    auth = from.data.auth, timeout = 8 }
  if not d then return nil, err end
  d:bye()
  return true
end

-- retry(fn, seconds) -> what fn returned first that was true, within seconds
local function retry(fn, seconds)
  local t0 = sip.now()
  repeat
    local r = fn()
    if r then return r end
    sip.sleep(0.1)
  until sip.now() - t0 > seconds
end

sip.spawn(function()
  local probe = phone("probe")
  check("Kamailio answers OPTIONS through a luasip host", retry(function()
    local res = probe:request{ method = "OPTIONS", uri = "sip:pbx.test", proxy = front, timeout = 1 }
    return res and res.status == 200
  end, 15))
  local alice, bob, carol = phone("alice"), phone("bob"), phone("carol")
  local r1, e1 = register(alice)
  local r2, e2 = register(bob)
  local r3, e3 = register(carol)
  check("alice, bob and carol register through Kamailio (digest)", r1 and r2 and r3, e1 or e2 or e3)
  -- Call-IDs are random: 12 MESSAGEs spread over both hosts, each reaching bob
  local n = messages(alice, bob, 12)
  check("12/12 MESSAGEs alice -> bob, through both hosts", n == 12 and bob.data.got == 12
    and bob.data.hosts["2"] and bob.data.hosts["3"], n .. "/12")
  check("a call alice -> bob", call(alice, bob))

  -- Redis stops: requests get 503 + Retry-After; it restarts: they succeed again
  deploy("redis-stop")
  local t_stop = sip.now()
  local busy = retry(function()
    local _, _, code, res = message(carol, alice)
    return code == 503 and res and res:header("Retry-After") and res
  end, 10)
  check("MESSAGE while Redis is down: 503 with Retry-After", busy)
  measured[#measured + 1] = ("Redis outage: 503 with Retry-After %s s, %.2f s after it"
    .. " stopped"):format(busy and busy:header("Retry-After") or "-", sip.now() - t_stop)
  local _, _, rcode = register(carol)
  check("REGISTER while Redis is down: 503", rcode == 503, rcode)
  deploy("redis-start")
  local t_start = sip.now()
  local back = retry(function() return message(carol, alice) end, 15)
  measured[#measured + 1] = ("Redis recovery: %.2f s from its restart to the first MESSAGE"
    .. " served"):format(sip.now() - t_start)
  check("Redis restarted: requests served again, registrations kept", back)

  -- host A dies: probing takes it out (Kamailio's event_route logs it), new requests go
  -- to host B (a request Kamailio still sends to A fails over after 2 s)
  local p = io.popen("sh examples/deploy/run.sh kill-a")
  local killed_at = tonumber(p:read("*a"))
  p:close()
  local t0, streak, first, slow, down = sip.now(), 0, nil, 0, nil
  local function a_down()                -- seconds from the kill to the probes' verdict
    local f = io.open(os.getenv("LUASIP_DEPLOY_DIR") .. "/kamailio.log")
    local at = f and f:read("*a"):match("dispatcher: host sip:10%.77%.0%.2:5060 down at ([%d.]+)")
    if f then f:close() end
    down = down or (at and killed_at and tonumber(at) - killed_at)
    return down
  end
  while (streak < 10 or not a_down()) and sip.now() - t0 < 30 do
    local t = sip.now()
    local res = message(alice, bob)
    if res and sip.now() - t < 1 then
      streak, first = streak + 1, first or t
    else
      streak, first, slow = 0, nil, slow + 1
    end
  end
  check("Kamailio's OPTIONS probes took host A out", down)
  check("10 MESSAGEs in a row answered at once after host A died", streak >= 10)
  measured[#measured + 1] = ("failover: the probes took host A out %.2f s after it was killed;"
    .. " every request answered at once from %.2f s on (%d delayed meanwhile)")
    :format(down or -1, (first or sip.now()) - t0, slow)
  check("8/8 MESSAGEs bob -> alice and carol -> bob: every registration still served",
    messages(bob, alice, 4) + messages(carol, bob, 4) == 8)
  local ok, err = call(bob, alice)
  check("a new call bob -> alice goes through host B", ok and alice.data.last == "3",
    err or alice.data.last)
  for _, m in ipairs(measured) do print("measured " .. m) end
  sip.stop()
end)
sip.run()
os.exit(failed == 0 and 0 or 1)
