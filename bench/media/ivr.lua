-- bench/media/ivr.lua N PORTFILE PROMPT WARMUP_S: the measured IVR process of
-- bench/media.sh.  Opens N luasip.rtp streams on 127.0.0.1, each playing PROMPT in a loop
-- with in-band DTMF detection on; they latch to whoever sends to them (bench/media/rtpgen).
-- Writes the ports to PORTFILE, resets the engine's maxima after WARMUP_S, and on SIGTERM
-- prints one RESULT line (engine stats and the streams' receive figures).
local sip = require "luasip"
local core = require "luasip.core"
local dispatcher = require "luasip.dispatcher"

io.stdout:setvbuf("line")

local n, portfile, prompt, warm = tonumber(arg[1]), arg[2], arg[3], tonumber(arg[4] or 2)
local streams, digits = {}, 0

-- events are read here (the bench does not load the Lua media layer)
dispatcher.events.media = function(r)
  for _, e in ipairs(r:events()) do
    if e[1] == "digit" then digits = digits + 1 end
  end
end

local ports = {}
for i = 1, n do
  local r = assert(core.rtp_open{ address = "127.0.0.1" })
  r:set_codecs{ inband = true }
  assert(r:play(prompt, { loop = 0 }))
  streams[i] = r
  ports[i] = r:local_port()
end
local f = assert(io.open(portfile .. ".tmp", "w"))
f:write(table.concat(ports, "\n"), "\n")
f:close()
assert(os.rename(portfile .. ".tmp", portfile))

local base, m0
sip.spawn(function()
  sip.sleep(warm)
  m0 = core.media_stats(true)         -- the maxima of the measurement only
  base = {}
  for i, r in ipairs(streams) do base[i] = r:stats() end
end)

sip.run()
local m = core.media_stats()
m0 = m0 or { ticks = 0, late_ticks = 0, skipped_ticks = 0 }
m.ticks, m.late_ticks = m.ticks - m0.ticks, m.late_ticks - m0.late_ticks
m.skipped_ticks = m.skipped_ticks - m0.skipped_ticks
local rx, lost, bad, strangers = 0, 0, 0, 0
for i, r in ipairs(streams) do
  local st, b = r:stats(), base and base[i] or {}
  rx = rx + st.packets_received - (b.packets_received or 0)
  lost = lost + st.lost - (b.lost or 0)
  bad = bad + st.bad_packets
  strangers = strangers + st.strangers
end
print(("RESULT ivr_streams=%d ticks=%d late_ticks=%d skipped_ticks=%d max_lateness_us=%d "
  .. "max_tick_work_us=%d ivr_received=%d ivr_lost=%d bad=%d strangers=%d digits=%d"):format(
  m.streams, m.ticks, m.late_ticks, m.skipped_ticks, m.max_lateness_us, m.max_tick_work_us,
  rx, lost, bad, strangers, digits))
for _, r in ipairs(streams) do r:close() end
