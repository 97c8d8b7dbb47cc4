#!/usr/bin/env bash
# bench/profile.sh KIND INTERP [OUT_PREFIX]  — where a luasip responder's CPU goes at
# REF_RATE (1000/s), with perf (software event cpu-clock: this machine's VM exposes no
# hardware counters), and, with ALLOC="jemalloc mimalloc", its CPU per call under each
# allocator (LD_PRELOAD of Debian's libjemalloc2 / libmimalloc2.0).
#   KIND proxy     sipp uac.xml -rsa bench/proxy.lua -> sipp uas.xml
#   KIND register  sipp reg-auth.xml -> bench/registrar.lua (REGISTER + digest, u<N>/pw<N>)
#   INTERP         lua5.4 | luajit
# Per run: a fresh responder, WARMUP s at RATE (not measured), then DURATION s at RATE
# with `perf record -e cpu-clock --call-graph dwarf` attached to the responder for the
# middle PERF_S seconds; prints the CPU us per call (schedstat) and writes
#   OUT_PREFIX.dso.txt    top DSOs (self %)
#   OUT_PREFIX.sym.txt    top 25 symbols (self %, with their DSO)
#   OUT_PREFIX.malloc.txt who calls malloc/free/calloc/realloc (callers, % of all samples)
# PERF=0 skips perf (CPU per call only, e.g. for the allocator runs).
# Env: RATE (1000) DURATION (12) WARMUP (3) PERF_S (6) PERF_AT (1: s into the run when perf
#      starts; e.g. RATE=500 DURATION=45 PERF_AT=35 PERF_S=8 profiles the steady state, when
#      sofia's transactions of the first seconds expire, 32 s after they began)
#      ALLOC ("" = glibc only; e.g. "jemalloc mimalloc": then ROUNDS (3) interleaved rounds of
#      glibc and each allocator, PERF off, medians).
# Loopback only; every process bounded by `timeout` and stopped by PID.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
. "$HERE/lib.sh"
KIND=${1:?usage: profile.sh proxy|register lua5.4|luajit [OUT_PREFIX]}
INTERP=${2:?usage: profile.sh proxy|register lua5.4|luajit [OUT_PREFIX]}
OUTP=${3:-$HERE/profiles/$KIND-$INTERP}
ROUNDS=${ROUNDS:-3}; require_uint "$ROUNDS"
RATE=${RATE:-1000} DURATION=${DURATION:-12} WARMUP=${WARMUP:-3} PERF_S=${PERF_S:-6} PERF=${PERF:-1}
for v in "$RATE" "$DURATION" "$WARMUP" "$PERF_S"; do require_uint "$v"; done
PERF_AT=${PERF_AT:-1}; require_uint "$PERF_AT"
(( PERF == 0 || PERF_AT + PERF_S + 1 < DURATION )) || die "PERF_AT + PERF_S must be < DURATION - 1"
case $INTERP in lua5.4) FL=5.4 ;; luajit) FL=luajit ;; *) die "INTERP: lua5.4 or luajit" ;; esac
HOST=127.0.0.1
require_loopback "$HOST"
WORK=$(mktemp -d -t luasip-prof.XXXXXX)
RPID="" DPID="" PPID_PERF=""
cleanup() {
  stop_pid "$PPID_PERF"; stop_pid "$RPID"; stop_pid "$DPID"
  if [[ ${KEEP:-0} == 1 ]]; then echo "work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

declare -A LIBS=( [glibc]="" [jemalloc]=/usr/lib/x86_64-linux-gnu/libjemalloc.so.2
                  [mimalloc]=/usr/lib/x86_64-linux-gnu/libmimalloc.so.2 )
if [[ $KIND == register ]]; then
  { echo SEQUENTIAL
    awk 'BEGIN { for (i = 0; i < 200000; i++)
      printf "u%d;pw%d;[authentication username=u%d password=pw%d]\n", i, i, i, i }'
  } >"$WORK/users.csv"
fi

# start ALLOCATOR -> RPID, SUT, TARGET (what sipp sends to), SARGS
start() {
  local pre=${LIBS[$1]} port dport script
  port=$(free_udp_port); SARGS=()
  if [[ $KIND == proxy ]]; then
    dport=$(free_udp_port)
    ( cd "$WORK" && exec timeout --kill-after=5 300 sipp -sf "$SCEN_DIR/uas.xml" -i "$HOST" -mi "$HOST" \
        -bind_local -p "$dport" -t u1 -nostdin -buff_size 4194304 >/dev/null 2>&1 ) &
    DPID=$!
    wait_udp_port "$dport" 10 || die "downstream sipp UAS did not start"
    script=bench/proxy.lua; TARGET=$HOST:$dport; SARGS=(-sf "$SCEN_DIR/uac.xml" -rsa "$HOST:$port")
  else
    script=bench/registrar.lua; TARGET=$HOST:$port; SARGS=(-sf "$SCEN_DIR/reg-auth.xml" -inf "$WORK/users.csv")
  fi
  ( cd "$ROOT" && exec timeout --kill-after=5 300 env ${pre:+LD_PRELOAD=$pre} \
      LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$FL/?.so;;" \
      "$INTERP" "$script" "$HOST:$port" >"$WORK/resp.log" 2>&1 ) &
  RPID=$!
  wait_udp_port "$port" 10 || die "responder did not start (see $WORK/resp.log)"
  SUT=$(pids_on_udp_port "$port" | head -1)
  if [[ -n $pre ]] && ! grep -q "${pre##*/}" "/proc/$SUT/maps"; then die "$pre not loaded"; fi
}
load() {  # load SECONDS -> runs sipp, prints "ok failed"
  ( cd "$WORK" && timeout $(( $1 * 3 + 30 )) sipp "$TARGET" "${SARGS[@]}" -i "$HOST" -mi "$HOST" -bind_local \
      -p "$(free_udp_port)" -t u1 -r "$RATE" -m $(( RATE * $1 )) -l $(( RATE * 3 )) -nostdin \
      -buff_size 4194304 -recv_timeout 5000 -trace_stat -stf "$WORK/stat.csv" >/dev/null 2>&1 )
  awk -F';' 'NR == 1 { for (i = 1; i <= NF; i++) { if ($i == "SuccessfulCall(C)") s = i; if ($i == "FailedCall(C)") f = i } }
             END { print $s, $f }' "$WORK/stat.csv"
}
run_one() {  # run_one ALLOCATOR [perf] -> prints a line
  local alloc=$1 doperf=${2:-0} a b res
  start "$alloc"
  (( WARMUP > 0 )) && load "$WARMUP" >/dev/null
  sleep 1                       # the warm-up's last calls end (BYE, ACK)
  a=$(cpu_ns "$SUT")
  load "$DURATION" >"$WORK/load.txt" &
  local LP=$!
  if (( doperf )); then
    sleep "$PERF_AT"
    timeout $(( PERF_S + 10 )) perf record -q -e cpu-clock -F 999 --call-graph dwarf,16384 -p "$SUT" \
      -o "$WORK/perf.data" -- sleep "$PERF_S" >/dev/null 2>&1
  fi
  wait "$LP"
  b=$(cpu_ns "$SUT")
  res=$(cat "$WORK/load.txt")
  stop_pid "$RPID"; stop_pid "$DPID"; RPID=""; DPID=""
  printf '%-6s %-7s %-9s %8s us/call  (ok/failed %s)\n' "$KIND" "$INTERP" "$alloc" \
    "$(awk -v a="$a" -v b="$b" -v n="$(( RATE * DURATION ))" 'BEGIN{printf "%.1f", (b-a)/1000/n}')" "$res"
}

(( PERF )) || [[ -z ${ALLOC:-} ]] && run_one glibc "$PERF" | tee "$WORK/line.txt"
if (( PERF )); then
  mkdir -p "$(dirname "$OUTP")"
  R="perf report -i $WORK/perf.data --stdio --no-children --percent-limit 0.3"
  hdr="$KIND $INTERP at $RATE/s for ${DURATION}s after ${WARMUP}s warm-up, perf cpu-clock ${PERF_S}s from s $PERF_AT; $(tail -1 "$WORK/line.txt")"
  { echo "# $hdr; self % by DSO"
    $R --sort dso -g none 2>/dev/null | grep -v '^#' | grep . | head -15; } >"$OUTP.dso.txt"
  { echo "# $hdr; top 25 symbols (self %)"
    $R --sort sym,dso -g none 2>/dev/null | grep -v '^#' | grep . | head -25; } >"$OUTP.sym.txt"
  { echo "# $hdr; who calls the allocator (bench/perf-alloc.py, % of all samples)"
    perf script -i "$WORK/perf.data" -F ip,sym,dso 2>/dev/null | python3 "$HERE/perf-alloc.py"; } >"$OUTP.malloc.txt"
  echo "wrote $OUTP.{dso,sym,malloc}.txt"
fi
# allocators: interleaved rounds (glibc and each of ALLOC, fresh process each), medians
if [[ -n ${ALLOC:-} ]]; then
  declare -A V
  for (( r = 1; r <= ROUNDS; r++ )); do
    for A in glibc $ALLOC; do
      line=$(run_one "$A" 0); echo "  round $r: $line"
      us=$(awk '{print $4}' <<<"$line"); fl=$(sed -n 's/.*ok\/failed [0-9]* \([0-9]*\)).*/\1/p' <<<"$line")
      [[ ${fl:-1} == 0 ]] || us="$us!"
      V[$A]+=" $us"
    done
  done
  for A in glibc $ALLOC; do
    printf '%-6s %-7s %-9s median %8s us/call  [%s ] ('"'"'!'"'"' = calls failed)\n' "$KIND" "$INTERP" "$A" \
      "$(tr ' ' '\n' <<<"${V[$A]}" | tr -d '!' | grep . | sort -g | awk '{v[NR]=$1} END{print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}')" "${V[$A]}"
  done
fi
