-- bench/overload-uas.lua HOST:PORT — examples/uas.lua for bench/overload.sh: quiet
-- (UAS_QUIET=1 is set by the script), and with OVERLOAD=off the agent's load shedding
-- is switched off (agent:overload(false)) to show what happens without it.  At exit
-- (SIGTERM from the script) nothing is printed: the script counts from sipp's side.
local sip = require "luasip"
local mode = os.getenv("OVERLOAD")
local agent = sip.agent
sip.agent = function(opts)
  local a, err, code = agent(opts)
  if a and mode == "off" then a:overload(false) end
  return a, err, code
end
dofile("examples/uas.lua")
