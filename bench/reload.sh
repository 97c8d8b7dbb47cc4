#!/bin/bash
# bench/reload.sh — a reload under load (BENCH_KINDS=reload in bench/run.sh): sipp calls
# (its built-in uac: INVITE, 200, ACK, held BENCH_RELOAD_HOLD ms, BYE) at
# BENCH_RELOAD_RATE calls/s for BENCH_RELOAD_SECONDS s into spec/peers/reload/uas.lua,
# whose handlers (reload_uas_app.lua) are reloaded by a SIGHUP every
# BENCH_RELOAD_EVERY s meanwhile.  Prints the calls, the failed calls (the goal: 0), the
# reloads done, and the BYEs handled (each by the generation of the code that answered
# its call).  Lua: BENCH_RELOAD_LUA (lua5.4).
set -u
source "$(dirname "$0")/lib.sh"
cd "$BENCH_DIR/.."
RATE=${BENCH_RELOAD_RATE:-200}
SECS=${BENCH_RELOAD_SECONDS:-20}
HOLD=${BENCH_RELOAD_HOLD:-2000}
EVERY=${BENCH_RELOAD_EVERY:-0.5}
LUA=${BENCH_RELOAD_LUA:-lua5.4}
for v in "$RATE" "$SECS" "$HOLD"; do require_uint "$v"; done
case "$LUA" in luajit) F=luajit ;; lua5.*) F=${LUA#lua} ;; *) die "BENCH_RELOAD_LUA: lua5.x or luajit" ;; esac
HOST=127.0.0.1
require_loopback "$HOST"
WORK=$(mktemp -d)
UAS=""
SIPP=""
cleanup() {
  [[ -n $SIPP ]] && kill "$SIPP" 2>/dev/null
  [[ -n $UAS ]] && kill "$UAS" 2>/dev/null
  if [[ ${KEEP:-0} == 1 ]]; then echo "reload: work files in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP

PORT=$(free_udp_port)
# exec: the signal goes to the interpreter itself, not to a wrapper
( export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$F/?.so;;"
  exec "$LUA" spec/peers/reload/uas.lua "$HOST:$PORT" "$WORK/ready" >"$WORK/uas.log" 2>&1 ) &
UAS=$!
for _ in $(seq 100); do [[ -f $WORK/ready ]] && break; sleep 0.1; done
[[ -f $WORK/ready ]] || { cat "$WORK/uas.log"; die "the UAS did not start"; }
CALLS=$(( RATE * SECS ))
( cd "$WORK" && exec timeout $(( SECS + HOLD / 1000 + 60 )) sipp "$HOST:$PORT" -sn uac \
    -i "$HOST" -p "$(free_udp_port)" -mp $(( 16384 + 4 * (RANDOM % 4000) )) -d "$HOLD" \
    -r "$RATE" -m "$CALLS" -l $(( RATE * (HOLD / 1000 + 2) * 2 )) -nostdin \
    -trace_screen -screen_file "$WORK/uac.screen" >"$WORK/uac.log" 2>&1 ) &
SIPP=$!
sent=0
t0=$(date +%s.%N)
while kill -0 "$SIPP" 2>/dev/null; do
  sleep "$EVERY"
  kill -0 "$SIPP" 2>/dev/null || break
  kill -HUP "$UAS" 2>/dev/null && sent=$(( sent + 1 ))
done
wait "$SIPP"; rc=$?
SIPP=""
ok=$(grep -a "Successful call" "$WORK/uac.screen" | tail -1 | awk '{print $NF}')
bad=$(grep -a "Failed call" "$WORK/uac.screen" | tail -1 | awk '{print $NF}')
reloads=$(grep -c "^reloaded" "$WORK/uas.log")
failed_reloads=$(grep -c "^reload failed" "$WORK/uas.log")
byes=$(grep -c "^bye" "$WORK/uas.log")
gens=$(awk '$1 == "call" { g[$2] = 1 } END { print length(g) }' "$WORK/uas.log")
printf 'reload under load (%s): %s calls at %s/s held %s ms, SIGHUP every %s s: %s reloads (%s failed), %s generations answered calls; calls ok %s, failed %s (sipp rc %s); BYEs handled %s\n' \
  "$LUA" "$CALLS" "$RATE" "$HOLD" "$EVERY" "$reloads" "$failed_reloads" "$gens" "${ok:-?}" \
  "${bad:-?}" "$rc" "$byes"
[[ $rc == 0 && ${bad:-1} == 0 && $failed_reloads == 0 && $byes == "$CALLS" ]]
