-- bench/b2bua-quiet.lua HOST:PORT TARGET — examples/b2bua.lua with its per-step log
-- discarded inside Lua (BENCH_LUA entries "<interp>:quiet" in bench/run.sh, kind b2bua).
-- The example writes and flushes a line per step (several write(2) per call); here
-- io.stdout is a sink, so the lines are still formatted but never written: the
-- difference to the logging row is what the log costs.  The example is unchanged.
local sink = {}
function sink.write(self) return self end
function sink.flush() return true end
io.stdout = sink  -- luacheck: ignore 122 (a quiet stdout for the bench)
dofile("examples/b2bua.lua")
