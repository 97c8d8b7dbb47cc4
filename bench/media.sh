#!/bin/bash
# bench/media.sh [N...] — the media row (issue 9): N concurrent IVR streams in one luasip
# process (bench/media/ivr.lua: each plays a looped prompt, in-band DTMF detection on),
# driven by another process (bench/media/rtpgen.c, built here: one G.711 stream to each,
# 20 ms paced, receive timestamps from the kernel).  Per N: CPU of the IVR process per
# stream-second and in % of one core (/proc/PID/task/*/schedstat), packets lost (both
# ways), the IVR's send interval p50/p99/max and drift (from rtpgen's receive
# timestamps), and the engine's own figures (max tick lateness and work, late/skipped
# ticks).  Target: >= 500 streams at <= 50 % of a core, 0 loss, p99 20 +- 2 ms, max <= 25 ms.
# Env: MEDIA_N="100 250 500 1000", MEDIA_WARMUP=3, MEDIA_SECONDS=10, BENCH_MEDIA_LUA=lua5.4
# (or luajit), MEDIA_CHRT=1 runs the IVR under chrt -f 10 (real-time priority: shows how
# much of the interval spread is waiting for a CPU on this shared machine; needs root),
# KEEP=1 keeps the work directory.  127.0.0.1 only; every process bounded by
# timeout and stopped by PID.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
cd "$HERE/.."
# shellcheck source=bench/lib.sh
. "$HERE/lib.sh"

NS=${*:-${MEDIA_N:-100 250 500 1000}}
WARM=${MEDIA_WARMUP:-3}
SECS=${MEDIA_SECONDS:-10}
LUA=${BENCH_MEDIA_LUA:-lua5.4}
case $LUA in luajit) F=luajit ;; *) F=5.4 ;; esac
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$F/?.so;;"
command -v sox >/dev/null || die "sox missing (apt-get install sox)"
[[ -f build/$F/luasip/core.so ]] || die "build/$F/luasip/core.so missing: make build"
ulimit -n 8192 2>/dev/null || true
CHRT=""
[[ ${MEDIA_CHRT:-0} == 1 ]] && CHRT="chrt -f 10"

WORK=$(mktemp -d /tmp/luasip-media.XXXXXX)
IVR="" GEN=""
cleanup() {
  stop_pid "$GEN"; stop_pid "$IVR"
  if [[ ${KEEP:-0} == 1 ]]; then echo "work files kept in $WORK"; else rm -rf "$WORK"; fi
}
trap cleanup EXIT

cc -O2 -o "$WORK/rtpgen" "$HERE/media/rtpgen.c" -lm || die "cannot build rtpgen"
# a 10 s prompt at 16 kHz (decoded and resampled once, shared by every stream)
sox -n -r 16000 -c 1 -b 16 "$WORK/prompt.wav" synth 10 sine 300-3000 vol 0.5 || die "sox failed"

# CPU ns of the IVR: the timeout wrapper and the interpreter under it
ivr_cpu() { local p t=0; for p in $(with_descendants "$IVR"); do t=$((t + $(cpu_ns "$p"))); done; echo $t; }

ROWS=()
for N in $NS; do
  require_uint "$N"
  rm -f "$WORK/ports"
  timeout $((WARM + SECS + 60)) ${CHRT:+$CHRT} "$LUA" bench/media/ivr.lua "$N" "$WORK/ports" "$WORK/prompt.wav" "$WARM" \
    >"$WORK/ivr-$N.out" 2>&1 &
  IVR=$!
  for _ in $(seq 300); do [[ -f $WORK/ports ]] && break; sleep 0.1; done
  [[ -f $WORK/ports ]] || { cat "$WORK/ivr-$N.out"; die "the IVR did not start with $N streams"; }
  timeout $((WARM + SECS + 30)) "$WORK/rtpgen" "$WORK/ports" "$WARM" "$SECS" >"$WORK/gen-$N.out" 2>&1 &
  GEN=$!
  sleep "$WARM"
  c0=$(ivr_cpu); read -r u0 i0 d0 s0 t0 < <(sys_jiffies); w0=$(date +%s.%N)
  sleep "$SECS"
  c1=$(ivr_cpu); read -r u1 i1 d1 s1 t1 < <(sys_jiffies); w1=$(date +%s.%N)
  wait "$GEN"; GEN=""
  stop_pid "$IVR"; wait "$IVR" 2>/dev/null; IVR=""
  G=$(grep '^RESULT' "$WORK/gen-$N.out" | head -1)
  V=$(grep '^RESULT' "$WORK/ivr-$N.out" | head -1)
  if [[ -z $G || -z $V ]]; then
    echo "media N=$N: no RESULT (rtpgen: $(tail -c 300 "$WORK/gen-$N.out"); ivr: $(tail -c 300 "$WORK/ivr-$N.out"))" >&2
    continue
  fi
  row=$(awk -v n="$N" -v c="$((c1 - c0))" -v w0="$w0" -v w1="$w1" \
        -v busy="$(( (u1 - u0) + (i1 - i0) ))" -v tot="$(( t1 - t0 ))" 'BEGIN {
    wall = w1 - w0; cpu = c / 1e9
    printf "cpu_pct=%.1f us_per_stream_s=%.1f machine_busy_pct=%.0f", 100 * cpu / wall,
      1e6 * cpu / (n * wall), (tot > 0 ? 200 * busy / tot : 0) }')
  ROWS+=("$N $row ${G#RESULT } ${V#RESULT }")
  echo "media N=$N: $row | ${G#RESULT } | ${V#RESULT }" >&2
done

echo "== media: N IVR streams ($LUA${CHRT:+ under $CHRT}, prompt + in-band DTMF detection) <- rtpgen, ${SECS}s measured after ${WARM}s"
echo "   $(nproc) vCPUs shared with other work (machine busy % of 200 during each row); CPU of the IVR process only"
printf '%6s %6s %8s %6s %6s %8s %8s %8s %9s %9s %8s %8s %9s %s\n' N "cpu%" "us/st-s" lost ivrlost \
  "p50 ms" "p99 ms" "max ms" "drift %" "ref dr.%" "lateMax" "workMax" "late/skip" "busy%"
for r in "${ROWS[@]}"; do
  n=${r%% *}
  printf '%6s %6s %8s %6s %6s %8.2f %8.2f %8.2f %9s %9s %6sus %6sus %9s %s\n' "$n" \
    "$(kv cpu_pct "$r")" "$(kv us_per_stream_s "$r")" "$(kv lost "$r")" "$(kv ivr_lost "$r")" \
    "$(awk -v x="$(kv p50_us "$r")" 'BEGIN{print x/1000}')" \
    "$(awk -v x="$(kv p99_us "$r")" 'BEGIN{print x/1000}')" \
    "$(awk -v x="$(kv max_us "$r")" 'BEGIN{print x/1000}')" \
    "$(kv drift_pct_worst "$r")" "$(kv ref_drift_pct "$r")" "$(kv max_lateness_us "$r")" "$(kv max_tick_work_us "$r")" \
    "$(kv late_ticks "$r")/$(kv skipped_ticks "$r")" "$(kv machine_busy_pct "$r")"
done
echo "   lost: IVR->rtpgen (RTP sequence gaps); ivrlost: rtpgen->IVR (the IVR's stats); p50/p99/max:"
echo "   interval between consecutive packets of a stream at rtpgen (kernel receive timestamps);"
echo "   drift: worst stream, slope of RTP time over arrival time - 1; ref dr.: rtpgen's own 20 ms timer"
echo "   against the same clock (the part of 'drift' that is the clocks, not the IVR); lateMax/workMax:"
echo "   the engine's worst tick lateness and tick work (core.media_stats); late/skip: late ticks and"
echo "   ticks missed (expirations > 1) during the measurement"
