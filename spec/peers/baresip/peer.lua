-- baresip (Debian's baresip-core, 1.0.0) as a headless SIP phone for specs: each phone
-- runs in its own temporary config directory on 127.0.0.1 (inside a private network
-- namespace from B.netns when given one), plays a generated tone, discards what it hears,
-- and is driven through its ctrl_tcp module by ctrl.py (a one-connection netstring-JSON
-- client whose output -- one line per message -- is the log parsed here).  Everything is
-- bounded by timeout(1); stop each phone with phone.stop() in the test's `finally`.
local H = require "spec.helper"

local B = {}

local HERE = "spec/peers/baresip/"

local function sh(cmd)
  local p = io.popen(cmd)
  local out = p:read("*a")
  p:close()
  return out
end

local function ok(cmd)
  local r = os.execute("{ " .. cmd .. "; } >/dev/null 2>&1")
  return r == true or r == 0
end

-- the directory holding baresip's modules (Debian sets no default module_path)
function B.module_path()
  local g711 = sh("dpkg -L baresip-core 2>/dev/null | grep '/g711\\.so$' | head -n 1")
  local dir = g711:match("^(.*)/g711%.so")
  if dir then return dir end
  for _, d in ipairs{ "/usr/lib/baresip/modules", "/usr/local/lib/baresip/modules" } do
    if io.open(d .. "/g711.so") then return d end
  end
end

-- available() -> true | false, why not
function B.available()
  if not ok("command -v baresip") then return false, "baresip is not installed" end
  if not ok("command -v python3") then return false, "python3 is not installed" end
  local dir = B.module_path()
  if not dir then return false, "baresip modules (g711.so) not found" end
  for _, m in ipairs{ "aufile", "aubridge", "menu", "ctrl_tcp", "account" } do
    if not io.open(dir .. "/" .. m .. ".so") then
      return false, "baresip module " .. m .. ".so not found in " .. dir
    end
  end
  return true
end

-- tone(path, seconds): writes a 400 Hz tone as 8 kHz mono 16-bit PCM WAV (aufile ends the
-- call when the file ends, so make it longer than the call)
function B.tone(path, seconds)
  require("luasip.testing").tone_wav(path, 400, seconds * 1000, -14.7)   -- (amplitude ~6000)
end

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

-- netns(max_seconds) -> ns: a private network namespace with only `lo` up, held by a
-- sleeping process (unshare -n, or -rn when not root); ns.wrap(argv) -> argv run inside it
-- (nsenter), ns.stop().  baresip 1.0.0 binds its RTP/RTCP and DNS sockets to 0.0.0.0
-- whatever the config says; in the namespace nothing but loopback exists.  Without
-- namespaces (or with LUASIP_NETNS=0) ns.isolated is false and ns.wrap returns argv as is.
function B.netns(max_seconds)
  local ns = { isolated = false }
  function ns.wrap(argv) return argv end
  function ns.stop() end
  if os.getenv("LUASIP_NETNS") == "0"
    or not ok("command -v unshare && command -v nsenter && command -v ip") then
    return ns
  end
  local root = sh("id -u"):match("^0%s") ~= nil
  local pidfile = os.tmpname()
  local holder = H.background({ "unshare", root and "-n" or "-rn", "sh", "-c",
    'ip link set lo up && echo $$ > "$0" && exec sleep ' .. max_seconds, pidfile },
    max_seconds)
  local pid
  H.run_until(function()
    local f = io.open(pidfile)
    pid = f and f:read("*l")
    if f then f:close() end
    return pid or holder.done()
  end, 10, "network namespace")
  if not pid then                       -- no namespaces here: use the host's loopback
    holder.kill()
    os.remove(pidfile)
    return ns
  end
  ns.isolated = true
  function ns.wrap(argv)
    local t = { "nsenter", "-t", pid, "-n" }
    if not root then t[#t + 1] = "-U"; t[#t + 1] = "--preserve-credentials" end
    t[#t + 1] = "--"
    for _, w in ipairs(argv) do t[#t + 1] = w end
    return t
  end
  function ns.stop()
    holder.kill()
    os.remove(pidfile)
  end
  return ns
end

-- account(user, password, registrar "host:port[;transport=]" [, answermode = "auto"
-- [, domain = "127.0.0.1"]]) -> an account line
function B.account(user, password, registrar, answermode, domain)
  return ('<sip:%s@%s>;auth_pass=%s;outbound="sip:%s";regint=300;answermode=%s')
    :format(user, domain or "127.0.0.1", password, registrar, answermode or "auto")
end

-- the string value of key in a one-line JSON object (baresip's flat events), unescaped
local function field(json, key)
  local _, e = json:find('"' .. key .. '"%s*:%s*"')
  if not e then return nil end
  local out, i = {}, e + 1
  while i <= #json do
    local c = json:sub(i, i)
    if c == '"' then return table.concat(out) end
    if c == "\\" then
      local n = json:sub(i + 1, i + 1)
      if n == "u" then
        local cp = tonumber(json:sub(i + 2, i + 5), 16) or 63
        out[#out + 1] = cp < 128 and string.char(cp) or "?"
        i = i + 6
      else
        out[#out + 1] = ({ n = "\n", t = "\t", r = "\r", b = "\b", f = "\f" })[n] or n
        i = i + 2
      end
    else
      out[#out + 1] = c
      i = i + 1
    end
  end
end

local function flag(json, key)
  return json:match('"' .. key .. '"%s*:%s*true') ~= nil
end

-- start{ name = "alice", max_seconds = 60, trace = false, ns = B.netns(...),
--   source = "x.wav" (what the phone sends: an 8 kHz WAV; default a 400 Hz tone, 30 s),
--   record = true (module sndfile: each call's audio in phone.recordings()),
--   address = "127.0.0.1" (its SIP and media address), config = { more config lines } }
--   -> phone:
-- baresip started with no account (add one with phone.command("uanew", B.account(...)) to
-- see its REGISTER_OK event) and ctrl.py connecting to its ctrl_tcp port, both inside ns
-- if given; register phone.stop for `finally`, then call phone.ready().  trace = true logs
-- every SIP message (baresip -s); context() -> more text for failure reports.
--   phone.command(cmd [, params]) -> data of the ok response (fails on error/timeout)
--   phone.wait_event(type [, timeout=10, pred(ev)]) -> the first such event {type, param,
--     aor, direction, peeruri, id, json} not returned by an earlier wait_event
--   phone.events([type]) -> every event so far; phone.report() -> logs for failures;
--   phone.stop() (idempotent)
function B.start(o)
  local name = assert(o.name)
  local max = o.max_seconds or 60
  local dir = os.tmpname()
  os.remove(dir)
  assert(os.execute("mkdir -p " .. H.shquote(dir)))
  local ctrl_port = H.free_port()
  local source = o.source
  if not source then
    source = dir .. "/tone.wav"
    B.tone(source, 30)
  end
  local record = {}
  if o.record then
    assert(os.execute("mkdir -p " .. H.shquote(dir .. "/snd")))
    if not io.open(B.module_path() .. "/sndfile.so") then error("baresip module sndfile.so not found") end
    record = { "module sndfile.so", "snd_path " .. dir .. "/snd" }
  end
  -- sip_listen port 0: baresip 1.0.0 always adds TLS on port+1 as well, so only the
  -- OS can hand out its ports without collisions; the PBX learns the UDP port from Contact
  write(dir .. "/config", table.concat({
    "poll_method epoll",
    "sip_listen " .. (o.address or "127.0.0.1") .. ":0",
    "net_interface " .. (o.address or "127.0.0.1"),
    "call_local_timeout 30",
    "audio_source aufile," .. source,
    "audio_player aubridge,sink",
    "audio_alert aubridge,sink",
    "module_path " .. assert(B.module_path()),
    "module g711.so",
    "module aufile.so",
    "module aubridge.so",
    "module_tmp account.so",
    "module_app menu.so",
    "module_app ctrl_tcp.so",
    "ctrl_tcp_listen 127.0.0.1:" .. ctrl_port,
    table.concat(record, "\n"),
    table.concat(o.config or {}, "\n"),
    "" }, "\n"))
  write(dir .. "/accounts", "# accounts are added with uanew over ctrl_tcp\n")
  local phone = { name = name, dir = dir, ctrl_port = ctrl_port }
  local wrap = o.ns and o.ns.wrap or function(argv) return argv end
  phone.proc = H.background(wrap{ "baresip", "-f", dir, o.trace and "-s" or nil }, max)
  phone.ctrl = H.background(wrap{ "python3", HERE .. "ctrl.py", tostring(ctrl_port),
    dir .. "/cmd" }, max)

  local token, taken = 0, {}

  local function lines()
    local t = {}
    for l in phone.ctrl.log():gmatch("[^\n]+") do t[#t + 1] = l end
    return t
  end

  function phone.report()
    return ("--- %s: baresip log\n%s\n--- %s: ctrl_tcp\n%s%s"):format(name,
      phone.proc.log():gsub("\27%[[%d;]*m", ""), name, phone.ctrl.log(),
      o.context and o.context() or "")
  end

  -- wait(pred, timeout, what): H.run_until with this phone's logs in the failure message
  local function wait(pred, timeout, what)
    local r
    local okk, err = pcall(H.run_until, function()
      r = pred()
      return r or phone.proc.done() or phone.ctrl.done()
    end, timeout, name .. ": " .. what)
    if not okk then error(err .. "\n" .. phone.report(), 3) end
    if not r then
      error(name .. ": " .. what .. ": baresip or ctrl.py ended\n" .. phone.report(), 3)
    end
    return r
  end

  function phone.events(kind)
    local t = {}
    for _, l in ipairs(lines()) do
      local json = l:match("^msg (.*)$")
      local k = json and flag(json, "event") and field(json, "type")
      if k and (not kind or k == kind) then
        t[#t + 1] = { type = k, param = field(json, "param"), aor = field(json, "accountaor"),
          direction = field(json, "direction"), peeruri = field(json, "peeruri"),
          id = field(json, "id"), json = json }
      end
    end
    return t
  end

  function phone.wait_event(kind, timeout, pred)
    local found
    wait(function()
      local all = phone.events()
      for i = 1, #all do
        local ev = all[i]
        if not taken[i] and ev.type == kind and (not pred or pred(ev)) then
          found, taken[i] = ev, true
          return true
        end
      end
    end, timeout or 10, "event " .. kind)
    return found
  end

  function phone.command(cmd, params)
    token = token + 1
    local tok = tostring(token)
    local f = assert(io.open(dir .. "/cmd", "a"))
    f:write(tok, " ", cmd, params and (" " .. params) or "", "\n")
    f:close()
    local okk, data
    wait(function()
      for _, l in ipairs(lines()) do
        local json = l:match("^msg (.*)$")
        if json and flag(json, "response") and field(json, "token") == tok then
          okk, data = flag(json, "ok"), (field(json, "data") or ""):gsub("\27%[[%d;]*m", "")
          return true
        end
      end
    end, 10, "response to " .. cmd)
    if not okk then
      error(name .. ": " .. cmd .. " failed: " .. data .. "\n" .. phone.report(), 2)
    end
    return data
  end

  function phone.stop()
    if phone.stopped then return end
    phone.stopped = true
    phone.proc.kill()     -- SIGTERM: baresip unregisters, then exits
    phone.ctrl.kill()
    os.execute("rm -rf " .. H.shquote(dir))
  end

  -- messages() -> every SIP message of the trace (start with trace = true): a list of
  -- { src = "ip:port", dst = "ip:port", start = start line, text = message and what follows }
  function phone.messages()
    local log, t = phone.proc.log():gsub("\27%[[%d;]*m", ""), {}
    local pos = 1
    while true do
      local s, e, src, dst, start = log:find("#\n%u+ (%S+) %-> (%S+)\n([^\r\n]*)\r?\n", pos)
      if not s then break end
      local nxt = log:find("#\n%u+ %S+ %-> %S+\n", e + 1) or #log + 1
      t[#t + 1] = { src = src, dst = dst, start = start, text = log:sub(e + 1, nxt - 1) }
      pos = nxt
    end
    return t
  end

  -- recordings([kind = "dec"]) -> paths of the WAVs sndfile wrote (start with record =
  -- true): "dec" what the phone heard, "enc" what it sent; sorted by name (time)
  function phone.recordings(kind)
    local t = {}
    local p = io.popen("ls " .. H.shquote(dir .. "/snd") .. " 2>/dev/null")
    for f in p:lines() do
      if f:match("%-" .. (kind or "dec") .. "%.wav$") then t[#t + 1] = dir .. "/snd/" .. f end
    end
    p:close()
    table.sort(t)
    return t
  end

  -- ready(): waits until ctrl.py is connected to baresip's ctrl_tcp
  function phone.ready()
    wait(function() return phone.ctrl.log():find("connected\n", 1, true) end, 15,
      "ctrl_tcp connection")
    return phone
  end

  return phone
end

return B
