-- bench/uas-quiet.lua HOST:PORT — examples/uas.lua with its per-request log discarded
-- inside Lua (BENCH_LUA entries "<interp>:quiet" in bench/run.sh).  uas.lua writes one
-- line per request to stdout and flushes it (a write(2) per request); here io.stdout is
-- replaced by a sink before the example runs, so the lines are still formatted (os.date,
-- table.concat) but never written.  This only estimates what a quiet switch in
-- examples/uas.lua would save; the example itself is unchanged.
local sink = {}
function sink.write(self) return self end
function sink.flush() return true end
io.stdout = sink  -- luacheck: ignore 122 (a quiet stdout for the bench)
dofile("examples/uas.lua")
