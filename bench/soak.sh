#!/bin/bash
# bench/soak.sh — `make soak`: examples/pbx.lua under a steady mixed load for a long time,
# sampling its memory, descriptors and live objects; passes when nothing failed and
# they stay flat after the warm-up.
#
# Load (sipp, all on 127.0.0.1, scenarios in bench/soak/): SOAK_RATE calls/s of alice ->
# bob (digest 407, record-routed, re-INVITE after SOAK_HOLD_MS, BYE after as long again;
# bob is a sipp UAS), and beside them, in proportion: cancelled calls to carol (a sipp UAS
# that rings) at 1/10 of the rate, MESSAGEs bob -> alice (a sipp UAS) at 1/4, calls to an
# unknown user (404) at 1/20; REGISTER refreshes of alice, bob and carol every 60 s
# (Expires 120).  SOAK_CALLS calls in all (the others in proportion).
# The PBX runs as bench/soak-pbx.lua: pbx.lua plus a sampler (every SOAK_SAMPLE s: RSS,
# descriptors, Lua heap, live C objects by class).
# Verdict: every sipp UAC run ended with 0 failed calls, and each curve (RSS, descriptors,
# Lua heap and live objects, the last two after a full collection) has no upward trend
# after the warm-up (SOAK_WARMUP % of the run, 20, and at least 45 s: sofia keeps
# finished transactions 32 s): the least-squares line through those samples rises by
# at most SOAK_TOLERANCE % (5) of their mean over the span (objects and descriptors
# also pass within +8 absolute).  `make soak SOAK_CALLS=45000` takes ~3 minutes: the
# shortest run that leaves a minute of samples after the warm-up.
#
# The PBX's digest nonces live SOAK_NONCE_TTL s (60; pbx.lua's default is 300): the nonce
# counts kept for replay protection reach their steady state after one lifetime.
# The PBX runs on jemalloc (LD_PRELOAD of Debian's libjemalloc2), as README advises for
# a long-running server: under glibc's malloc the heap that ~80,000 transactions kept
# for 32 s fragment makes malloc itself a third of the CPU and stalls the loop 100-200 ms
# every few seconds, which the overload control then answers with 503s (README:
# Memory allocator).  SOAK_MALLOC=glibc runs it on glibc's malloc instead.
# Env: SOAK_CALLS (1000000), SOAK_RATE (250), SOAK_HOLD_MS (1000), SOAK_LUA (lua5.4;
# luajit), SOAK_SAMPLE (5), SOAK_WARMUP (20), SOAK_TOLERANCE (5), SOAK_MALLOC (jemalloc;
# glibc), KEEP=1 keeps the work directory (samples, logs).  The curve is printed (one
# line per ~1/20 of the run).
set -u
source "$(dirname "$0")/lib.sh"
cd "$BENCH_DIR/.."

CALLS=${SOAK_CALLS:-1000000}
RATE=${SOAK_RATE:-250}
HOLD=${SOAK_HOLD_MS:-1000}
LUA=${SOAK_LUA:-lua5.4}
SAMPLE=${SOAK_SAMPLE:-5}
WARMUP=${SOAK_WARMUP:-20}
TOL=${SOAK_TOLERANCE:-5}
HOST=127.0.0.1
require_loopback "$HOST"
for v in "$CALLS" "$RATE" "$HOLD" "$SAMPLE" "$WARMUP" "$TOL"; do require_uint "$v"; done
(( RATE >= 20 )) || die "SOAK_RATE must be at least 20"
case "$LUA" in luajit) FLAVOUR=luajit ;; lua5.*) FLAVOUR=${LUA#lua} ;; *) die "SOAK_LUA: lua5.x or luajit" ;; esac
[[ -f build/$FLAVOUR/luasip/core.so ]] || die "build/$FLAVOUR/luasip/core.so missing: make build"
MALLOC=${SOAK_MALLOC:-jemalloc}
case "$MALLOC" in
  glibc) PRELOAD="" ;;
  jemalloc) PRELOAD=$(sh scripts/jemalloc.sh) || die "SOAK_MALLOC=jemalloc: libjemalloc2 missing (make deps)" ;;
  *) die "SOAK_MALLOC: jemalloc or glibc" ;;
esac

DURATION=$(( CALLS / RATE ))
NONCE_TTL=${SOAK_NONCE_TTL:-60}
require_uint "$NONCE_TTL"
# the warm-up the verdict skips (see the verdict below), then at least a minute to judge
SETTLE=$(( NONCE_TTL * 3 / 2 > 45 ? NONCE_TTL * 3 / 2 : 45 ))
(( DURATION >= SETTLE + 60 )) ||
  die "SOAK_CALLS / SOAK_RATE must be at least $(( SETTLE + 60 )) s (a ${SETTLE}-s warm-up, then a minute to judge): e.g. SOAK_CALLS=45000"
BOUND=$(( DURATION + 180 ))
WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do pkill -TERM -P "$p" 2>/dev/null; kill "$p" 2>/dev/null; done
  sleep 0.5
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  if [[ ${KEEP:-0} == 1 ]]; then echo "soak: work files in $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap "exit 1" INT TERM HUP

SOAK="$BENCH_DIR/soak"
media_base() { echo $(( 16384 + 4 * (RANDOM % 4000) )); }

# the PBX
PBX_PORT=$(free_udp_port)
mkdir -p "$WORK/recordings"
SOAK_SAMPLES="$WORK/samples" SOAK_SAMPLE=$SAMPLE IVR_RECORDINGS="$WORK/recordings" \
  PBX_NONCE_TTL=$NONCE_TTL LD_PRELOAD="$PRELOAD" \
  LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$FLAVOUR/?.so;;" \
  timeout "$BOUND" "$LUA" bench/soak-pbx.lua "$HOST:$PBX_PORT" >"$WORK/pbx.log" 2>&1 &
PBX=$!
PIDS+=("$PBX")
for _ in $(seq 100); do grep -q "listening on" "$WORK/pbx.log" && break; sleep 0.1; done
grep -q "listening on" "$WORK/pbx.log" || { cat "$WORK/pbx.log"; die "the PBX did not start"; }

# the phones: sipp UASs (bob answers, carol rings, alice takes MESSAGEs)
start_uas() {  # name scenario -> UAS_PORT
  UAS_PORT=$(free_udp_port)
  ( cd "$WORK" && exec timeout "$BOUND" sipp -sf "$2" -i "$HOST" -p "$UAS_PORT" \
      -mp "$(media_base)" -nostdin -trace_err -error_file "$WORK/$1-uas.err" \
      >"$WORK/$1-uas.log" 2>&1 ) &
  PIDS+=($!)
}
start_uas bob "$SOAK/call-uas.xml"; BOB=$UAS_PORT
start_uas carol "$PWD/spec/peers/sipp/uas_cancel.xml"; CAROL=$UAS_PORT
start_uas alice "$PWD/spec/peers/sipp/uas_message.xml"; ALICE=$UAS_PORT

register() {  # user password contact_port -> 0 when registered
  sed -e "s/USER/$1/g; s/PASSWORD/$2/; s/CONTACT_PORT/$3/; s/EXPIRES/120/" \
    "$SOAK/register.xml" >"$WORK/reg-$1.xml"
  ( cd "$WORK" && timeout 15 sipp "$HOST:$PBX_PORT" -sf "$WORK/reg-$1.xml" -i "$HOST" \
      -p "$(free_udp_port)" -m 1 -nostdin -timeout 10 -timeout_error >>"$WORK/register.log" 2>&1 )
}
register_all() {
  register alice alice-secret "$ALICE" && register bob bob-secret "$BOB" &&
    register carol carol-secret "$CAROL"
}
register_all || die "REGISTER at the PBX failed (see $WORK/register.log; KEEP=1)"
( end=$(( SECONDS + DURATION )); fails=0
  while (( SECONDS + 60 < end )); do
    sleep 60
    register_all || fails=$(( fails + 1 ))
    echo "$fails" >"$WORK/register.fails"
  done ) &
PIDS+=($!)

# the load: one bounded sipp UAC per kind, in proportion to RATE
uac() {  # name scenario auth_uri rate count
  local r=$4 n=$5
  (( n > 0 )) || return 0
  sed "s/HOLD_MS/$HOLD/g" "$2" >"$WORK/$1.xml"
  ( cd "$WORK" && timeout "$BOUND" sipp "$HOST:$PBX_PORT" -sf "$WORK/$1.xml" -i "$HOST" \
      -p "$(free_udp_port)" -mp "$(media_base)" -r "$r" -rp 1000 -m "$n" -l $(( r * 20 + 100 )) \
      -auth_uri "$3" -nostdin -timeout "$(( DURATION + 120 ))" -trace_err \
      -error_file "$WORK/$1.err" -trace_screen -screen_file "$WORK/$1.screen" \
      >"$WORK/$1.log" 2>&1; echo $? >"$WORK/$1.rc" ) &
  PIDS+=($!)
  UACS+=("$1")
}
UACS=()
log "soak: $CALLS calls at $RATE/s (~$(( DURATION / 60 )) min) through pbx.lua ($LUA, $MALLOC, port $PBX_PORT)"
uac calls "$SOAK/call-uac.xml" "bob@$HOST" "$RATE" "$CALLS"
# (each count is its rate times the duration, so that every load ends with the calls:
# RATE / 20 rounds down, and CALLS / 20 at that rate outlasted the others by minutes)
uac cancels "$SOAK/cancel-uac.xml" "carol@$HOST" $(( RATE / 10 )) $(( RATE / 10 * DURATION ))
uac messages "$SOAK/message-uac.xml" "alice@$HOST" $(( RATE / 4 )) $(( RATE / 4 * DURATION ))
uac failures "$SOAK/fail-uac.xml" "nobody@$HOST" $(( RATE / 20 )) $(( RATE / 20 * DURATION ))

# wait for every UAC (bounded), the PBX must stay up
while :; do
  left=0
  for u in "${UACS[@]}"; do [[ -f $WORK/$u.rc ]] || left=$(( left + 1 )); done
  (( left == 0 )) && break
  kill -0 "$PBX" 2>/dev/null || { log "soak: the PBX died"; break; }
  sleep 2
done
sleep $(( SAMPLE + 1 ))                  # one more sample after the load

status=0
printf '\n%-9s %10s %10s %8s\n' "load" "successful" "failed" "sipp rc"
for u in "${UACS[@]}"; do
  ok=$(grep -a "Successful call" "$WORK/$u.screen" 2>/dev/null | tail -1 | awk '{print $(NF)}')
  bad=$(grep -a "Failed call" "$WORK/$u.screen" 2>/dev/null | tail -1 | awk '{print $(NF)}')
  rc=$(cat "$WORK/$u.rc" 2>/dev/null || echo "-")
  printf '%-9s %10s %10s %8s\n' "$u" "${ok:-?}" "${bad:-?}" "$rc"
  [[ $rc == 0 && ${bad:-1} == 0 ]] || status=1
done
regf=$(cat "$WORK/register.fails" 2>/dev/null || echo 0)
echo "REGISTER refresh rounds failed: $regf"
(( regf == 0 )) || status=1
kill -0 "$PBX" 2>/dev/null || { echo "the PBX is gone:"; tail -20 "$WORK/pbx.log"; status=1; }

python3 - "$WORK/samples" "$WARMUP" "$TOL" "$NONCE_TTL" "$DURATION" <<'PY' || status=1
import sys
rows = [list(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
warm, tol = float(sys.argv[2]) / 100, float(sys.argv[3])
names = ["rss_kb", "fds", "lua_kb", "objects", "requests", "dialogs", "client_txs", "cpu_pct",
         "lag_ms", "gc_ms"]
# column 9 is the CPU seconds used so far: shown as % of one core since the last sample;
# column 10 the loop's longest lateness in that interval (ms), 11 the sampler's own full
# collection (ms; lua_kb and the objects are counted after it)
prev = None
for r in rows:
    t, c = r[0], r[8] if len(r) > 8 else 0
    lag, gc = r[9] if len(r) > 9 else 0, r[10] if len(r) > 10 else 0
    r[8:] = [100 * (c - prev[1]) / (t - prev[0]) if prev and t > prev[0] else 0, lag, gc]
    prev = (t, c)
print("\n%7s " % "s" + " ".join("%10s" % n for n in names))
step = max(1, len(rows) // 20)
for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
    print("%7.0f " % r[0] + " ".join("%10d" % v for v in r[1:]))
lags = [r[9] for r in rows]
print("loop lateness: max %.0f ms; samples with a lateness over 100 ms: %d of %d"
      % (max(lags) if lags else 0, sum(1 for x in lags if x > 100), len(lags)))
gcs = [r[10] for r in rows]
print("sampler's full collection: max %.0f ms, mean %.0f ms" % (max(gcs) if gcs else 0,
      sum(gcs) / len(gcs) if gcs else 0))
# the load ends before the last samples: judge the loaded part only
load = [r for r in rows if r[0] <= rows[-1][0] - 2 * (rows[1][0] - rows[0][0])] if len(rows) > 3 else rows
if len(sys.argv) > 5:                  # and the loads' own span (the PBX started first)
    load = [r for r in load if r[0] <= float(sys.argv[5])] or load
n = len(load)
# warm-up: a share of the run, and at least 45 s (sofia keeps each finished transaction
# 32 s, 64*T1, and a call lasts 2 * SOAK_HOLD_MS) and 1.5 nonce lifetimes (the digest
# nonce counts are kept until their nonce expires): the memory in use grows until then
span = load[-1][0] if load else 0
settle = max(45, 1.5 * float(sys.argv[4]))
start = next((i for i, r in enumerate(load) if r[0] >= max(warm * span, settle)), n)
w = max(1, n // 10)
early, late = load[start:start + w], load[n - w:]
ok = len(early) > 0 and len(late) > 0
# The verdict is the trend: a least-squares line through every sample after the warm-up,
# its rise over that span against the mean.  (The counts are taken after a full
# collection, so what is left is the work in flight, which swings with the phase of
# sofia's transaction timers: the objects went 4,000-10,000 within minutes in a clean
# 1M-call run; a leak is a rise that does not come back.)  The means of the first and
# last tenth after the warm-up are shown beside it.
post = load[start:]
print("\ncurve after the warm-up (%d samples from %.0f s): first tenth -> last tenth, trend" %
      (len(post), post[0][0] if post else 0))
for i, name in enumerate(names[:4], start=1):
    if not ok or len(post) < 3:
        ok = False
        break
    a = sum(r[i] for r in early) / len(early)
    b = sum(r[i] for r in late) / len(late)
    ts = [r[0] for r in post]
    ys = [r[i] for r in post]
    mt, my = sum(ts) / len(ts), sum(ys) / len(ys)
    var = sum((t - mt) ** 2 for t in ts)
    slope = sum((t - mt) * (y - my) for t, y in zip(ts, ys)) / var if var else 0.0
    rise = slope * (ts[-1] - ts[0])
    g = rise / my * 100 if my else 0.0
    slack = 8 if name in ("fds", "objects") else 0
    verdict = "ok" if rise <= my * tol / 100 + slack else "GROWS"
    if verdict != "ok":
        ok = False
    print("  %-8s %10.0f -> %10.0f   trend %+9.0f over the span (%+6.1f %% of the mean)  %s" %
          (name, a, b, rise, g, verdict))
print("memory, descriptors, objects: %s" % ("flat" if ok else "NOT flat"))
sys.exit(0 if ok else 1)
PY
[[ $? == 0 ]] || status=1
echo "soak: $( (( status == 0 )) && echo PASSED || echo FAILED )"
exit $status
