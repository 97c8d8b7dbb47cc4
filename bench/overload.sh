#!/usr/bin/env bash
# bench/overload.sh — overload without collapse (issue 8 point 5): offered vs completed
# calls/s of examples/uas.lua (bench/overload-uas.lua, quiet) when offered 1x, 1.5x and
# 2x its measured maximum.
#
# Per interpreter (OVL_LUA, default "lua5.4 luajit"):
#   1. max: a rate ladder (lib.sh run_ladder: START_RATE 500, doubled until a step fails,
#      then REFINE bisections), OVL_SEARCH_DURATION s per step, fresh responder per step.
#      A step passes with no failed or rejected call, < 1 % retransmissions and >= 95 %
#      of the rate achieved (the run.sh criterion).  OVL_MAX=N skips the search.
#   2. offered OVL_FACTORS (default "1 1.5 2") x max for OVL_DURATION s each (fresh
#      responder each time), shedding on (the agent's defaults); with OVL_OFF=1 (default)
#      also 2x with shedding off (agent:overload(false)), the "before".
# UAC: sipp scenarios/uac-overload.xml (uac.xml + a 503 branch that ACKs and ends the
# call).  Completed = 200s to the BYE; rejected = 503s received; failed = sipp's failed
# calls (timeouts, unexpected messages).  completed/s and 503/s: the steady rate inside
# the offering window (cumulative counts from 1 s to OVL_DURATION s, sipp -trace_counts
# every second), so calls completed late, after the load stopped, do not count.
# CPU of the responder from /proc/PID/task/*/schedstat over the sipp run.
# Loopback only; every process bounded by `timeout` and stopped by PID.
#
# Env: OVL_LUA, OVL_DURATION (10), OVL_SEARCH_DURATION (5), OVL_FACTORS, OVL_MAX,
#      OVL_OFF (1), START_RATE (500), REFINE (2), QUIET_MAX_WAIT (15: s to wait before each
#      sipp run for the machine to be < QUIET_PCT=20 % busy), KEEP=1 (keep the work dir)
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
: "${START_RATE:=500}" "${REFINE:=2}" "${STEP_PAUSE:=1}" "${QUIET_MAX_WAIT:=15}"
export START_RATE REFINE STEP_PAUSE QUIET_MAX_WAIT
. "$HERE/lib.sh"
OVL_LUA=${OVL_LUA:-lua5.4 luajit}
OVL_DURATION=${OVL_DURATION:-10}
OVL_SEARCH_DURATION=${OVL_SEARCH_DURATION:-5}
OVL_FACTORS=${OVL_FACTORS:-1 1.5 2}
OVL_OFF=${OVL_OFF:-1}
HOST=127.0.0.1
require_loopback "$HOST"
require_uint "$OVL_DURATION"; require_uint "$OVL_SEARCH_DURATION"
command -v sipp >/dev/null || die "sipp not found (apt-get install sip-tester)"
command -v ss >/dev/null || die "ss not found (iproute2)"

WORK=$(mktemp -d -t luasip-overload.XXXXXX)
RESP_PID=""
cleanup() {
  stop_pid "$RESP_PID"
  if [[ ${KEEP:-0} == 1 ]]; then echo "overload work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start_uas INTERP MODE -> RESP_PID (the `timeout`), SUT (pid on the port), PORT
start_uas() {
  local interp=$1 mode=$2 flavour
  case $interp in lua5.4) flavour=5.4 ;; luajit) flavour=luajit ;; lua5.1) flavour=5.1 ;;
    lua5.3) flavour=5.3 ;; *) die "unknown interpreter $interp" ;; esac
  [[ -f $ROOT/build/$flavour/luasip/core.so ]] || die "build/$flavour/luasip/core.so missing (make build)"
  PORT=$(free_udp_port)
  ( cd "$ROOT" && UAS_QUIET=1 OVERLOAD=$mode LUA_PATH="lua/?.lua;lua/?/init.lua;;" \
      LUA_CPATH="build/$flavour/?.so;;" exec timeout --kill-after=5 600 \
      "$interp" bench/overload-uas.lua "$HOST:$PORT" >>"$WORK/uas.log" 2>&1 ) &
  RESP_PID=$!
  wait_udp_port "$PORT" 10 || die "responder did not bind $HOST:$PORT (see $WORK/uas.log)"
  SUT=$(pids_on_udp_port "$PORT" | head -1)
}

# counts_col FILE SUFFIX [last] -> the final value of the first (or last) column whose
# name ends in SUFFIX, from a sipp -trace_counts file
counts_col() {
  awk -F';' -v suf="$2" -v which="${3:-first}" '
    NR == 1 { for (i = 1; i <= NF; i++) if (substr($i, length($i) - length(suf) + 1) == suf) {
                if (which == "last" || !c) c = i } next }
    { v = $c } END { print (c && v != "") ? v + 0 : 0 }' "$1"
}

# window_rate FILE SUFFIX DURATION -> per-second rate of the last column named *SUFFIX
# in the steady part of the offering window: from the first row at >= 1 s to the last
# row at <= DURATION s (sipp writes the cumulative counts every second, -fd 1)
window_rate() {
  awk -F';' -v suf="$2" -v dur="$3" '
    function secs(t,  a) { split(t, a, ":"); return a[1]*3600 + a[2]*60 + a[3] + a[4]/1e6 }
    NR == 1 { for (i = 1; i <= NF; i++) if (substr($i, length($i) - length(suf) + 1) == suf) c = i
              next }
    { e = secs($2); if (e >= 1 && t0 == "") { t0 = e; v0 = $c }
      if (e <= dur + 0.05) { t1 = e; v1 = $c } }
    END { if (t0 != "" && t1 > t0) printf "%.1f\n", (v1 - v0) / (t1 - t0); else print 0 }' "$1"
}

# run_sipp RATE DURATION -> RES (key=value): one bounded sipp UAC run against $PORT
run_sipp() {
  local rate=$1 dur=$2 calls dir c0 c1 t0 t1 st cnt completed rejected wall lim
  calls=$(( rate * dur ))
  lim=$(( rate * 3 + 100 ))
  dir=$(mktemp -d "$WORK/step.XXXXXX")
  ulimit -n 100000 2>/dev/null || true
  QUIET=$(wait_quiet)      # shared machine: wait (bounded) for other jobs to calm down
  c0=$(cpu_ns "$SUT"); t0=$(date +%s.%N)
  ( cd "$dir" && exec timeout --kill-after=5 $(( dur * 2 + 60 )) \
      sipp -sf "$SCEN_DIR/uac-overload.xml" -i "$HOST" -p "$(free_udp_port)" "$HOST:$PORT" \
        -t u1 -r "$rate" -rp 1000 -m "$calls" -l "$lim" -recv_timeout 5000 \
        -timeout "$(( dur * 2 + 40 ))s" -buff_size 4194304 -nostdin \
        -trace_stat -stf "$dir/stat.csv" -fd 1 -trace_counts -trace_err \
        -error_file "$dir/err.log" >"$dir/stdout.log" 2>&1 )
  c1=$(cpu_ns "$SUT"); t1=$(date +%s.%N)
  st=$(sipp_final_stats "$dir/stat.csv")
  cnt=$(ls "$dir"/*_counts.csv 2>/dev/null | head -1)
  completed=0 rejected=0 crate=0 rrate=0
  if [[ -n $cnt ]]; then
    completed=$(counts_col "$cnt" "_200_Recv" last)
    rejected=$(counts_col "$cnt" "_503_Recv")
    crate=$(window_rate "$cnt" "_200_Recv" "$dur")
    rrate=$(window_rate "$cnt" "_503_Recv" "$dur")
  fi
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  RES=$(awk -v st="$st" -v rate="$rate" -v dur="$dur" -v comp="$completed" -v rej="$rejected" \
            -v cpu=$(( c1 - c0 )) -v wall="$wall" -v crate="$crate" -v rrate="$rrate" 'BEGIN{
    n = split(st, a, " "); for (i=1;i<=n;i++) { split(a[i], p, "="); v[p[1]] = p[2] }
    failed = v["failed"] + rej; el = v["elapsed_s"]; span = el - v["call_ms"]/1000
    if (span <= 0) span = dur
    printf "rate=%d calls=%d success=%d completed=%d rejected=%d failed=%d sipp_failed=%d incomplete=0 ",
      rate, rate*dur, comp, comp, rej, failed, v["failed"]
    printf "retrans=%d retrans_pct=%.3f achieved_rate=%.1f completed_per_s=%.1f rejected_per_s=%.1f ",
      v["retrans"], (comp > 0 ? 100*v["retrans"]/comp : 100), comp/span, crate, rrate
    printf "sut_cpu_pct=%.1f sut_us_per_call=%.1f elapsed_s=%.3f rt1_ms=%.3f ",
      100*cpu/1e9/wall, (comp > 0 ? cpu/1e3/comp : 0), el, v["rt1_ms"] }')
  RES="$RES $QUIET"
  [[ ${KEEP:-0} == 1 ]] || rm -rf "$dir"
}

# ladder step for run_ladder: fresh responder, one run, stop it
OVL_INTERP=""
search_step() {
  start_uas "$OVL_INTERP" on
  run_sipp "$1" "$OVL_SEARCH_DURATION"
  stop_pid "$RESP_PID"; RESP_PID=""
  echo "RESULT $RES"
}

kvv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -1; }

ROWS=()
for interp in $OVL_LUA; do
  command -v "$interp" >/dev/null || die "$interp not found"
  OVL_INTERP=$interp
  if [[ -n ${OVL_MAX:-} ]]; then
    max=$OVL_MAX
  else
    log "$interp: searching the max rate at zero failures"
    LADDER_PROGRESS=1 run_ladder search_step "$interp" >"$WORK/ladder.$interp" 
    max=$(sed -n 's/^MAX .*max_rate=\([0-9]*\).*/\1/p' "$WORK/ladder.$interp")
  fi
  [[ $max =~ ^[0-9]+$ ]] && (( max > 0 )) || { log "$interp: no passing rate"; continue; }
  log "$interp: max $max calls/s"
  runs=()
  for f in $OVL_FACTORS; do runs+=("on:$f"); done
  [[ $OVL_OFF == 1 ]] && runs+=("off:2")
  for r in "${runs[@]}"; do
    mode=${r%%:*} f=${r#*:}
    rate=$(awk -v m="$max" -v f="$f" 'BEGIN{printf "%d", m*f}')
    sleep "$STEP_PAUSE"
    start_uas "$interp" "$mode"
    run_sipp "$rate" "$OVL_DURATION"
    stop_pid "$RESP_PID"; RESP_PID=""
    pct=$(awk -v c="$(kvv completed_per_s "$RES")" -v m="$max" 'BEGIN{printf "%.0f", 100*c/m}')
    log "$interp shedding=$mode ${f}x: offered $rate/s completed $(kvv completed_per_s "$RES")/s ($pct % of max)" \
        "503/s=$(kvv rejected_per_s "$RES") rejected=$(kvv rejected "$RES") failed=$(kvv sipp_failed "$RES") cpu=$(kvv sut_cpu_pct "$RES")%"
    ROWS+=("$interp|$mode|$f|$max|$rate|$(kvv completed_per_s "$RES")|$pct|$(kvv rejected_per_s "$RES")|$(kvv rejected "$RES")|$(kvv sipp_failed "$RES")|$(kvv retrans "$RES")|$(kvv sut_cpu_pct "$RES")|$(kvv sut_us_per_call "$RES")|$(kvv rt1_ms "$RES")")
  done
done

echo
echo "## overload: examples/uas.lua offered 1x/1.5x/2x its max (${OVL_DURATION} s per step)"
echo
echo "| interpreter | shedding | offered | max/s | offered/s | completed/s | % of max | 503/s | 503s | failed calls | retrans | CPU % | us CPU/completed call | INVITE->200 ms |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for row in "${ROWS[@]}"; do
  IFS='|' read -r i m f mx o c p rr rj fl rt cp us rt1 <<<"$row"
  echo "| $i | $m | ${f}x | $mx | $o | $c | $p % | $rr | $rj | $fl | $rt | $cp | $us | $rt1 |"
done
