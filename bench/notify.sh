#!/bin/sh
# bench/notify.sh [N] — NOTIFY fan-out and memory per active subscription (issue 5):
# one luasip notifier process and one luasip subscriber process on 127.0.0.1; the
# notifier prints Lua heap and RSS per subscription, then three fan-outs of one state
# change to all N subscribers (NOTIFYs answered per second).  Lua: BENCH_NOTIFY_LUA.
set -u
cd "$(dirname "$0")/.."
N=${1:-${BENCH_NOTIFY_N:-2000}}
LUA=${BENCH_NOTIFY_LUA:-lua5.4}
case "$LUA" in luajit) F=luajit ;; *) F=5.4 ;; esac
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$F/?.so;;"
port=$(LUA_CPATH="build/$F/?.so;;" "$LUA" -e 'local s=require"luasip"; local a=assert(s.agent{}); io.write(a:transports()[1].port); a:close()')
out=$(mktemp)
trap 'kill $NP $SP 2>/dev/null; rm -f "$out"' EXIT
timeout 120 "$LUA" bench/notify/notifier.lua "$port" "$N" >"$out" 2>&1 &
NP=$!
i=0
until grep -q ready "$out" || [ $i -ge 100 ]; do i=$((i + 1)); sleep 0.1; done
timeout 120 "$LUA" bench/notify/subscriber.lua "$port" "$N" >/dev/null 2>&1 &
SP=$!
wait $NP
echo "== notify: $N subscriptions, $LUA"
grep -v '^ready' "$out"
