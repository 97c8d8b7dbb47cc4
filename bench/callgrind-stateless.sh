#!/usr/bin/env bash
# bench/callgrind-stateless.sh [INTERP...]  — the cost of a Lua handler over a C-only
# stateless answer, in instructions per request (valgrind --tool=callgrind).
#
# bench/stateless.lua runs under callgrind and gets, from a sipp UAC on 127.0.0.1:
#   options  N OPTIONS, answered by the smallest Lua handler: req:reply(200), stateless;
#   cancel   N CANCELs matching no INVITE, answered 481 by the core in C (csrc/agent.c,
#            nta_msg_treply) without entering Lua: the C-only stateless answer.
# Each mode runs twice, with N1 and N2 requests (fresh process each, stopped by an
# OPTIONS to sip:stop@, so start-up and exit cancel out): instructions per request =
# (Ir(N2) - Ir(N1)) / (N2 - N1). The difference options - cancel is what the Lua path
# (bridge, dispatcher, coroutine, request object, req:reply) costs over C alone.
# Then, natively (no valgrind), N3 requests of each mode at NATIVE_RATE/s: user+sys CPU
# per request (schedstat), to give the instructions a time scale on this machine (no
# hardware counters here, so no IPC from perf).
# With CG_FUNCS=1 (default), also the instructions per request by function (bench/cg-diff.py).
# Env: N1 (200) N2 (1200) CG_RATE (100/s under valgrind) N3 (10000) NATIVE_RATE (2000),
#      KEEP=1 keeps the callgrind files; CG_MODES="options" (default "options cancel")
#      measures only those modes, NATIVE=0 skips the native runs (quick iterations). Loopback only, every process bounded and stopped
#      by PID.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
. "$HERE/lib.sh"
HOST=127.0.0.1
require_loopback "$HOST"
N1=${N1:-200} N2=${N2:-1200} CG_RATE=${CG_RATE:-100} N3=${N3:-10000} NATIVE_RATE=${NATIVE_RATE:-2000}
for v in "$N1" "$N2" "$CG_RATE" "$N3" "$NATIVE_RATE"; do require_uint "$v"; done
(( N2 > N1 )) || die "N2 must be > N1"
INTERPS=${*:-lua5.4 luajit}
command -v valgrind >/dev/null || die "valgrind not found"
WORK=$(mktemp -d -t luasip-cg.XXXXXX)
APID=""
cleanup() { stop_pid "$APID"; if [[ ${KEEP:-0} == 1 ]]; then echo "work dir: $WORK" >&2; else rm -rf "$WORK"; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

flavour() { case $1 in lua5.4) echo 5.4 ;; luajit) echo luajit ;; lua5.3) echo 5.3 ;; lua5.1) echo 5.1 ;; *) die "unknown interpreter $1" ;; esac; }

# start_agent INTERP PORT [valgrind args...] -> APID
start_agent() {
  local interp=$1 port=$2; shift 2
  ( cd "$ROOT" && exec timeout --kill-after=5 600 env LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
      LUA_CPATH="build/$(flavour "$interp")/?.so;;" "$@" "$interp" bench/stateless.lua "$HOST:$port" \
      >>"$WORK/agent.log" 2>&1 ) &
  APID=$!
  wait_udp_port "$port" 60 || die "the agent did not bind $HOST:$port (see $WORK/agent.log)"
}
# uac MODE PORT N RATE -> runs sipp, prints "ok failed"
uac() {
  local scen=options-uac.xml st
  [[ $1 == cancel ]] && scen=cancel-uac.xml
  ( cd "$WORK" && timeout 300 sipp "$HOST:$2" -sf "$SCEN_DIR/$scen" -i "$HOST" -mi "$HOST" -bind_local \
      -p "$(free_udp_port)" -t u1 -m "$3" -r "$4" -nostdin -recv_timeout 20000 -trace_stat -stf "$WORK/stat.csv" \
      >/dev/null 2>&1 ); st=$?
  echo "$st"
}
stop_agent() {  # OPTIONS to sip:stop@: the agent stops its loop and exits
  ( cd "$WORK" && timeout 60 sipp "$2" -sf "$SCEN_DIR/options-uac.xml" -s stop -i "$HOST" -mi "$HOST" \
      -bind_local -p "$(free_udp_port)" -t u1 -m 1 -nostdin -recv_timeout 30000 >/dev/null 2>&1 )
  local i; for i in $(seq 600); do kill -0 "$APID" 2>/dev/null || break; sleep 0.1; done
  wait "$APID" 2>/dev/null; APID=""
}
utime_ticks() { awk '{print $14}' "/proc/$1/stat" 2>/dev/null; }
ir_total() { grep -m1 '^totals:' "$1" | awk '{print $2}'; }

printf '%-7s %-8s %12s %12s %14s %12s %12s %10s\n' interp mode "Ir(N1=$N1)" "Ir(N2=$N2)" "Ir/request" "native us/r" "user us/r" "ns/Ir"
for I in $INTERPS; do
  declare -A IRQ=() US=() UU=()
  for MODE in ${CG_MODES:-options cancel}; do
    irs=()
    for N in "$N1" "$N2"; do
      PORT=$(free_udp_port)
      OUT=$WORK/cg-$I-$MODE-$N.out
      start_agent "$I" "$PORT" valgrind --tool=callgrind --callgrind-out-file="$OUT" --dump-instr=no
      st=$(uac "$MODE" "$PORT" "$N" "$CG_RATE")
      [[ $st == 0 ]] || echo "  ($I $MODE N=$N: sipp exit status $st: some requests failed)" >&2
      stop_agent "$I" "$HOST:$PORT"
      irs+=("$(ir_total "$OUT")")
    done
    IRQ[$MODE]=$(awk -v a="${irs[0]}" -v b="${irs[1]}" -v n1="$N1" -v n2="$N2" 'BEGIN{printf "%.0f", (b-a)/(n2-n1)}')
    if [[ ${NATIVE:-1} == 0 ]]; then
      printf '%-7s %-8s %12s %12s %14s\n' "$I" "$MODE" "${irs[0]}" "${irs[1]}" "${IRQ[$MODE]}"
      continue
    fi
    # native: CPU per request at NATIVE_RATE
    PORT=$(free_udp_port)
    start_agent "$I" "$PORT"
    SUT=$(pids_on_udp_port "$PORT" | head -1)
    a=$(cpu_ns "$SUT"); ua=$(utime_ticks "$SUT")
    st=$(uac "$MODE" "$PORT" "$N3" "$NATIVE_RATE")
    b=$(cpu_ns "$SUT"); ub=$(utime_ticks "$SUT")
    [[ $st == 0 ]] || echo "  ($I $MODE native: sipp exit status $st)" >&2
    stop_agent "$I" "$HOST:$PORT"
    US[$MODE]=$(awk -v a="$a" -v b="$b" -v n="$N3" 'BEGIN{printf "%.2f", (b-a)/1000/n}')
    UU[$MODE]=$(awk -v a="$ua" -v b="$ub" -v n="$N3" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", (b-a)*1e6/hz/n}')
    printf '%-7s %-8s %12s %12s %14s %12s %12s %10s\n' "$I" "$MODE" "${irs[0]}" "${irs[1]}" "${IRQ[$MODE]}" "${US[$MODE]}" \
      "${UU[$MODE]}" "$(awk -v u="${UU[$MODE]}" -v i="${IRQ[$MODE]}" 'BEGIN{ if (i > 0) printf "%.3f", u*1e3/i }')"
  done
  if [[ -z ${IRQ[cancel]:-} || -z ${US[options]:-} ]]; then
    if [[ ${CG_FUNCS:-1} == 1 ]]; then
      python3 "$HERE/cg-diff.py" "$N1" "$WORK/cg-$I-options-$N1.out" "$N2" "$WORK/cg-$I-options-$N2.out" | sed 's/^/  /'
    fi
    unset IRQ US UU
    continue
  fi
  d=$(( IRQ[options] - IRQ[cancel] ))
  echo "$I: Lua handler over C-only answer: $d instructions/request (user space, callgrind);" \
       "native CPU difference $(awk -v a="${US[options]}" -v b="${US[cancel]}" 'BEGIN{printf "%.2f", a-b}') us/request;" \
       "at the Lua path's native user time per instruction: $(awk -v d="$d" -v u="${UU[options]}" -v i="${IRQ[options]}" 'BEGIN{ if (i > 0) printf "%.2f", d*u/i }') us"
  if [[ ${CG_FUNCS:-1} == 1 ]]; then
    echo "$I: where the instructions of one request go (self cost per function; options, then cancel, then options minus cancel):"
    python3 "$HERE/cg-diff.py" "$N1" "$WORK/cg-$I-options-$N1.out" "$N2" "$WORK/cg-$I-options-$N2.out" \
      "$N1" "$WORK/cg-$I-cancel-$N1.out" "$N2" "$WORK/cg-$I-cancel-$N2.out" | sed 's/^/  /'
  fi
  unset IRQ US UU
done
