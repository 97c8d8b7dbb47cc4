-- bench/uas-metrics.lua HOST:PORT — examples/uas.lua with the Prometheus page on
-- (BENCH_KINDS=metrics in bench/run.sh: rows "<interp>:metrics").  It listens on
-- $LUASIP_METRICS (default 127.0.0.1:0) before the example runs, so the message counters
-- are served, the handler-duration histogram is measured and the loop-lag timer ticks;
-- bench/run.sh fetches the page once a second meanwhile, as a scraper would.
local sip = require "luasip"
assert(sip.metrics{ listen = os.getenv("LUASIP_METRICS") or "127.0.0.1:0" })
dofile("examples/uas.lua")
