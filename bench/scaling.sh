#!/usr/bin/env bash
# bench/scaling.sh — BENCH_KINDS=scaling (DESIGN D11, README "Scaling out"): calls/s
# (examples/uas.lua, scenarios/uac.xml) and REGISTER/s with digest auth
# (bench/registrar.lua, scenarios/reg-auth.xml) of one plain process, and of 1 and 2
# worker processes behind luasip's stateless front (bench/cluster.lua, sip.cluster).
# Per row: the max rate at zero failures (lib.sh run_ladder, step.sh), and the CPU per
# call of the workers (step.sh's SUT) and of the front, each at REF_RATE and at the max.
# sipp shares the machine's cores with the system under test: read the CPU per call,
# not only the rates.
# Env: BENCH_SCALING_LUA (lua5.4), BENCH_SCALING_KINDS ("calls register"),
#      BENCH_SCALING_WORKERS ("0 1 2": 0 = the plain process, no front),
#      BENCH_DURATION (3 s per step), START_RATE (500), REF_RATE (500), REFINE (2),
#      STEP_PAUSE (2), MAX_RATE (16000), KEEP=1.
# Loopback only; every process bounded by `timeout` and stopped by PID at exit.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
: "${START_RATE:=500}" "${STEP_PAUSE:=2}" "${QUIET_MAX_WAIT:=5}" "${QUIET_PCT:=20}" "${MAX_RATE:=16000}"
export START_RATE STEP_PAUSE QUIET_MAX_WAIT QUIET_PCT MAX_RATE
. "$HERE/lib.sh"
HOST=127.0.0.1
LUA=${BENCH_SCALING_LUA:-lua5.4}
case $LUA in luajit) F=luajit ;; lua5.1) F=5.1 ;; *) F=5.4 ;; esac
KINDS=${BENCH_SCALING_KINDS:-calls register}
WORKER_COUNTS=${BENCH_SCALING_WORKERS:-0 1 2}
D=${BENCH_DURATION:-3}
REF=${REF_RATE:-500}
WORK=$(mktemp -d -t luasip-scaling.XXXXXX)
RESP=""
cleanup() {
  stop_pid "$RESP"
  if [[ ${KEEP:-0} == 1 ]]; then echo "scaling work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
{ echo SEQUENTIAL
  awk 'BEGIN { for (i = 0; i < 200000; i++)
    printf "u%d;pw%d;[authentication username=u%d password=pw%d]\n", i, i, i, i }'
} >"$WORK/users.csv"

# start KIND N -> RESP (timeout's pid), PORT, WPIDS (the workers or the plain process),
# FRONT (the launcher's pid; empty for N=0)
start() {
  local kind=$1 n=$2 script=examples/uas.lua i
  [[ $kind == register ]] && script=bench/registrar.lua
  PORT=$(free_udp_port)
  local log=$WORK/$kind-$n.log
  if (( n == 0 )); then
    ( cd "$ROOT" && exec timeout --kill-after=5 600 env LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
        LUA_CPATH="build/$F/?.so;;" "$LUA" "$script" "$HOST:$PORT" >/dev/null 2>"$log" ) &
  else
    ( cd "$ROOT" && exec timeout --kill-after=5 600 env LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
        LUA_CPATH="build/$F/?.so;;" WORKERS="$n" "$LUA" bench/cluster.lua "$HOST:$PORT" "$script" \
        >/dev/null 2>"$log" ) &
  fi
  RESP=$!
  wait_udp_port "$PORT" 10 || die "$kind/$n: nothing on port $PORT ($(tail -3 "$log"))"
  FRONT=$(pids_on_udp_port "$PORT" | head -1)
  WPIDS=$FRONT
  if (( n > 0 )); then
    for i in $(seq 100); do
      (( $(grep -c 'ready$' "$log") >= n )) && break; sleep 0.1
    done
    WPIDS=$(sed -n 's/.*started, pid \([0-9]*\) on .*/\1/p' "$log" | tr '\n' ' ')
  else
    FRONT=""
  fi
}

# step RATE: step.sh on the workers, the front's CPU per call added to its RESULT line
step() {
  local f0=0 f1=0 res calls=$(( $1 * D ))
  [[ -n $FRONT ]] && f0=$(cpu_ns "$FRONT")
  res=$(SUT_PIDS="$WPIDS" STEP_INF="$WORK/users.csv" bash "$HERE/step.sh" "$KIND" "$PORT" "$1" "$D" \
        | grep '^RESULT ' | tail -1)
  [[ -n $FRONT ]] && f1=$(cpu_ns "$FRONT")
  echo "$res front_us_per_call=$(( (f1 - f0) / 1000 / calls ))"
}

printf '== scaling (%s, %s s steps; %s CPUs, shared with sipp and other sessions)\n' \
  "$LUA" "$D" "$(nproc)"
printf '%-9s %-10s %9s %12s %12s %12s %12s\n' kind processes "max/s" "us/call@ref" "front@ref" \
  "us/call@max" "front@max"
for KIND in $KINDS; do
  for N in $WORKER_COUNTS; do
    start "$KIND" "$N"
    ref=$(step "$REF"); ref=${ref#RESULT }
    sleep "$STEP_PAUSE"
    max=$(run_ladder step "$KIND-$N" 2>/dev/null | grep '^MAX ' | tail -1)
    stop_pid "$RESP"; RESP=""
    label=plain; (( N > 0 )) && label="$N+front"
    printf '%-9s %-10s %9s %12s %12s %12s %12s\n' "$KIND" "$label" "$(kv max_rate "$max")" \
      "$(kv sut_us_per_call "$ref")" "$( ((N > 0)) && kv front_us_per_call "$ref" || echo -)" \
      "$(kv sut_us_per_call "$max")" "$( ((N > 0)) && kv front_us_per_call "$max" || echo -)"
    sleep "$STEP_PAUSE"
  done
done
