#!/bin/sh
# bench/run.sh — `make bench`: luasip's examples/uas.lua under sipp load, next to a
# sipp->sipp baseline measured in the same run.
#
# Rows (per KIND in BENCH_KINDS, default "calls options"):
#   baseline        sipp UAC -> sipp UAS (scenarios/uas.xml, scenarios/options-uas.xml)
#   luasip/<lua>    sipp UAC -> lua examples/uas.lua, for each interpreter in BENCH_LUA
# KIND calls   = INVITE, 100, 180, 200, ACK, BYE, 200 (scenarios/uac.xml)
# KIND options = OPTIONS, 200 (scenarios/options-uac.xml)
# Opt-in kinds (BENCH_KINDS="calls options b2bua proxy pbx register notify media reload");
# reload: bench/reload.sh, calls held across a SIGHUP reload every 0.5 s, failed calls;
# scaling: bench/scaling.sh, calls/s and REGISTER/s of 1 process and of 1 and 2 workers
# behind luasip's stateless front, CPU per call of the workers and of the front; see
# README.md (notify: bench/notify.sh, NOTIFY fan-out rate and memory per active
# subscription; media: bench/media.sh, N concurrent IVR streams, CPU, loss, pacing):
# KIND b2bua    = calls through examples/b2bua.lua to a downstream sipp UAS
# KIND proxy    = calls through bench/proxy.lua (the logic of Kamailio's proxy.lua: plain
#                 record-routing stateful proxy, sipp uac -rsa proxy -> sipp uas), beside a
#                 Kamailio proxy-lua row, + an interleaved A/B at REF_RATE (BENCH_AB_ROUNDS)
# KIND pbx      = authenticated calls through examples/pbx.lua (scenarios/proxy-uac.xml)
#                 to a sipp UAS registered as bob; + a Kamailio proxy-lua row (no auth)
# KIND register = REGISTER with digest auth (scenarios/reg-auth.xml) against
#                 bench/registrar.lua; + a Kamailio registrar-auth-lua row
# KIND metrics  = the cost of the Prometheus page: calls (as KIND calls) on examples/uas.lua
#                 with metrics off and on (bench/uas-metrics.lua, the page fetched once a
#                 second), interleaved A/B at REF_RATE, BENCH_AB_ROUNDS rounds; no ladder
# (Kamailio rows when kamailio is installed, BENCH_KAMAILIO=0 to skip; KAM_ARGS)
#
# Each row is a rate ladder (lib.sh run_ladder: START_RATE, doubled until a step fails,
# then REFINE bisections); each step is one bounded sipp UAC run (step.sh) of
# BENCH_DURATION s. A step passes with 0 failed calls, none left incomplete,
# < MAX_RETRANS_PCT % retransmissions and >= 95 % of the target rate achieved. The
# responder is started on a free 127.0.0.1 port for each row, and again (fresh, new port)
# after every failed step, so that the retransmissions and BYEs an overloaded UAS keeps
# sending for 64*T1 do not load the next step. It is the "system under test": its CPU
# comes from /proc/PID/task/*/schedstat before/after each step.
#
# Output: one progress line per step on stderr, per row what uas.lua logged (by kind of
# line) and sipp's first errors at the failing rate, then a table: max rate at zero
# failures, the responder's CPU us per call at REF_RATE (the same load for every row) and
# at its max, ratios to the baseline of the same kind, and why the lowest failing step
# failed. Machine load: loadavg per row, CPU of other processes during each max step.
#
# Env:
#   BENCH_LUA="lua5.4 luajit"  interpreters for the luasip rows (lua5.4 -> build/5.4,
#                              luajit -> build/luajit); BENCH_LUA=luajit for luajit only;
#                              "lua5.4:quiet" runs bench/uas-quiet.lua (uas.lua with its
#                              per-request stdout log discarded) to show what logging costs
#                              (kind b2bua: bench/b2bua-quiet.lua, the same for b2bua.lua);
#                              "lua5.4:jemalloc" preloads libjemalloc2 (README: Memory
#                              allocator; with BENCH_SUSTAIN for its steady state)
#   BENCH_KINDS="calls options"
#   BENCH_QUICK=1              ~1 minute smoke: 2 s steps, rates 1000 and 4000, no bisection
#   BENCH_DURATION (s/step, default 5), START_RATE (1000), MAX_RATE (32000), REFINE (2),
#   REF_RATE (1000), WARMUP (2: s at REF_RATE before each row, not measured),
#   STEP_PAUSE (2), QUIET_MAX_WAIT (10: wait at most that long before each step for the
#   shared machine to be below QUIET_PCT=20 % busy), IDLE_MAX_WAIT (30: after a passing
#   step, wait at most that long for the responder to be idle, polled), BENCH_BUDGET
#   (570 s: no new step or row after that; the default run takes ~8 minutes)
#   BENCH_AB_ROUNDS=3          KIND proxy and register: rounds of the interleaved A/B at REF_RATE
#                              (each interpreter of BENCH_LUA, then Kamailio, fresh processes,
#                              WARMUP s then AB_DURATION=5 s measured; medians in the table);
#                              0 = none. With Kamailio, proxy and register have no sipp baseline
#                              row unless BENCH_BASELINE=1, and Kamailio's ladder comes first
#   BENCH_SUSTAIN=N            also, per row, N s (>= 45) at REF_RATE on a fresh responder, CPU
#                              over the last SUSTAIN_WINDOW (10) s: steady-state us per call,
#                              with sofia's 32 s transaction expiry included (off by default:
#                              ~1 min per row)
#   BENCH_UAS_LOG=null         send uas.lua's per-request log to /dev/null instead of a file
#                              (it still writes it: uas.lua has no quiet switch)
#   BENCH_REV=TEXT             what to print as the revision (default: git describe --dirty)
#   BENCH_OUT=FILE             also write the full log (steps + table) to FILE
#   KEEP=1                     keep the work directory (responder logs, sipp error logs);
#                              STEP_KEEP=1 also keeps each sipp run's own directory
# Loopback only; every process bounded by `timeout` and stopped by PID at exit.

# `make bench` runs this with sh: the harness needs bash.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -u

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)

# defaults (before lib.sh, which reads START_RATE, REFINE, STEP_PAUSE, RATES)
if [[ ${BENCH_QUICK:-0} == 1 ]]; then
  : "${BENCH_DURATION:=2}" "${RATES:=1000 4000}" "${REFINE:=0}" "${STEP_PAUSE:=1}"
  : "${QUIET_MAX_WAIT:=3}" "${IDLE_MAX_WAIT:=10}" "${WARMUP:=1}"
fi
: "${START_RATE:=1000}" "${STEP_PAUSE:=2}" "${QUIET_MAX_WAIT:=10}" "${QUIET_PCT:=20}"
export START_RATE STEP_PAUSE QUIET_MAX_WAIT QUIET_PCT
BENCH_BUDGET=${BENCH_BUDGET:-570}
. "$HERE/lib.sh"
BENCH_LUA=${BENCH_LUA:-lua5.4 luajit}
BENCH_KINDS=${BENCH_KINDS:-calls options}
BENCH_DURATION=${BENCH_DURATION:-5}
REF_RATE=${REF_RATE:-1000}
WARMUP=${WARMUP:-2}
BENCH_SUSTAIN=${BENCH_SUSTAIN:-0}
KAM_DIR=${KAM_DIR:-$HERE/../../shared/bench/kamailio}
# the Kamailio rows need kamailio + app_lua: installed on demand (idempotent, Debian packages)
if [[ -z ${BENCH_KAMAILIO:-} && " $BENCH_KINDS " =~ \ (proxy|pbx|register)\  && -x $KAM_DIR/run-kamailio.sh ]]; then
  sh "$ROOT/scripts/install-deps.sh" kamailio kamailio-lua-modules >&2 || echo "bench: could not install kamailio; no Kamailio rows" >&2
fi
if [[ -z ${BENCH_KAMAILIO:-} ]]; then
  BENCH_KAMAILIO=0; command -v kamailio >/dev/null && [[ -x $KAM_DIR/run-kamailio.sh ]] && BENCH_KAMAILIO=1
fi
SUSTAIN_WINDOW=${SUSTAIN_WINDOW:-10}
BENCH_AB_ROUNDS=${BENCH_AB_ROUNDS:-3}
AB_DURATION=${AB_DURATION:-5}
AB_QUIET_WAIT=${AB_QUIET_WAIT:-3}   # A/B runs: wait at most that long for a quiet machine
IDLE_MAX_WAIT=${IDLE_MAX_WAIT:-30}
export RECV_TIMEOUT_MS=${RECV_TIMEOUT_MS:-5000}
export REFINE STEP_PAUSE START_RATE MAX_RATE
[[ -n ${RATES:-} ]] && export RATES
HOST=127.0.0.1
require_loopback "$HOST"
require_uint "$BENCH_DURATION"; require_uint "$REF_RATE"; require_uint "$IDLE_MAX_WAIT"; require_uint "$WARMUP"
require_uint "$BENCH_SUSTAIN"; require_uint "$SUSTAIN_WINDOW"; require_uint "$BENCH_AB_ROUNDS"; require_uint "$AB_DURATION"
(( BENCH_SUSTAIN == 0 || BENCH_SUSTAIN >= SUSTAIN_WINDOW + 5 )) || die "BENCH_SUSTAIN must be >= SUSTAIN_WINDOW + 5 (use >= 45 to reach steady state)"

command -v sipp >/dev/null || die "sipp not found (apt-get install sip-tester)"
command -v ss >/dev/null || die "ss not found (iproute2)"
for W in $BENCH_LUA; do
  L=${W%%:*}
  [[ $W == "$L" || $W == "$L:quiet" || $W == "$L:jemalloc" ]] || die "BENCH_LUA: '$W' (INTERP, INTERP:quiet or INTERP:jemalloc)"
  [[ $W != *:jemalloc ]] || sh "$ROOT/scripts/jemalloc.sh" >/dev/null || die "BENCH_LUA: $W needs libjemalloc2 (make deps)"
  case $L in
    lua5.4) F=5.4 ;; luajit) F=luajit ;; lua5.1) F=5.1 ;; lua5.3) F=5.3 ;;
    *) die "BENCH_LUA: unknown interpreter '$L' (lua5.4, luajit, lua5.3, lua5.1)" ;;
  esac
  command -v "$L" >/dev/null || die "$L not found"
  [[ -f $ROOT/build/$F/luasip/core.so ]] || die "build/$F/luasip/core.so missing (make build)"
done

WORK=$(mktemp -d -t luasip-bench.XXXXXX)
mkdir -p "$WORK/err"
DOWN_PID=""
# KIND register: users u<N>/pw<N> in order (sipp -inf), the user space of the shared
# harness (200000 = Kamailio registrar-auth's table); sipp wraps around at the end
if [[ " $BENCH_KINDS " == *" register "* ]]; then
  { echo SEQUENTIAL
    awk 'BEGIN { for (i = 0; i < 200000; i++)
      printf "u%d;pw%d;[authentication username=u%d password=pw%d]\n", i, i, i, i }'
  } >"$WORK/users.csv"
fi
LOG=$WORK/bench.log
RESP_PID=""      # the `timeout` wrapping the current responder
SPID=""          # a sipp run in the background (sustain_run)
cleanup() {
  stop_pid "$SPID"; stop_pid "${METRICS_SCRAPER:-}"
  stop_pid "$RESP_PID"; stop_pid "${DOWN_PID:-}"
  if [[ -n ${BENCH_OUT:-} && -f $LOG ]]; then cp "$LOG" "$BENCH_OUT"; fi
  if [[ ${KEEP:-0} == 1 ]]; then echo "bench work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

out() { echo "$*" | tee -a "$LOG"; }

# Every responder lives at most this long (the whole run's budget, generously).
RESP_MAX=${RESP_MAX:-1200}

# start_responder KIND WHO PORT LOGFILE -> sets RESP_PID (the `timeout` around it), SUT
# (the process holding the port) and RCVBUF; polls until the port is bound. luasip's
# stdout/stderr are appended to LOGFILE / LOGFILE.stderr (one file per row, restarts too).
start_responder() {
  local kind=$1 who=$2 port=$3 logf=$4 scen flavour dport=""
  DOWN_PID=""; STEP_PORT=$port; STEP_SCEN=""; STEP_ARGS=""
  STEP_INF=""; [[ $kind == register ]] && STEP_INF=$WORK/users.csv
  # b2bua / proxy / pbx (luasip, kamailio): a downstream sipp UAS the calls end at
  if [[ $who != sipp && ( $kind == b2bua || $kind == proxy || $kind == pbx ) ]]; then
    dport=$(free_udp_port)
    ( cd "$WORK" && exec timeout --kill-after=5 "$RESP_MAX" \
        sipp -sf "$SCEN_DIR/uas.xml" -i "$HOST" -mi "$HOST" -bind_local -p "$dport" -t u1 \
             -nostdin -buff_size 4194304 -trace_err -error_file "$WORK/err/down-$kind-$dport.log" \
             >>"$logf.down" 2>&1 ) &
    DOWN_PID=$!
    wait_udp_port "$dport" 10 || { stop_responder; return 1; }
  fi
  if [[ $who == sipp ]]; then
    case $kind in
      options) scen=$SCEN_DIR/options-uas.xml ;;
      register) scen=$SCEN_DIR/reg-uas-auth.xml ;;
      proxy|pbx) scen=$SCEN_DIR/uas.xml; STEP_SCEN=uac.xml ;;   # baseline: direct, no auth
      *) scen=$SCEN_DIR/uas.xml ;;
    esac
    ( cd "$WORK" && exec timeout --kill-after=5 "$RESP_MAX" \
        sipp -sf "$scen" -i "$HOST" -mi "$HOST" -bind_local -p "$port" -t u1 \
             -nostdin -buff_size 4194304 -trace_err -error_file "$WORK/err/uas-$kind-$port.log" \
             >>"$logf" 2>&1 ) &
  elif [[ $who == kamailio ]]; then
    local variant=proxy-lua
    [[ $kind == register ]] && variant=registrar-auth-lua
    rm -f "$WORK/kam-ready"
    ( exec env READY_FILE="$WORK/kam-ready" KAM_ARGS="${KAM_ARGS--x tlsf -X tlsf}" \
        "$KAM_DIR/run-kamailio.sh" "$variant" "$port" "$RESP_MAX" >>"$logf" 2>&1 ) &
    RESP_PID=$!
    local i; for i in $(seq 300); do [[ -f $WORK/kam-ready ]] && break; sleep 0.1; done
    [[ -f $WORK/kam-ready ]] || { stop_responder; return 1; }
    if [[ $kind == proxy || $kind == pbx ]]; then STEP_PORT=$dport; STEP_SCEN=uac.xml; STEP_ARGS="-rsa $HOST:$port"; fi
  else
    local interp=${who%%:*} dest=$logf args=("$HOST:$port") script=examples/uas.lua menv=()
    case $kind in
      b2bua) script=examples/b2bua.lua; [[ $who == *:quiet ]] && script=bench/b2bua-quiet.lua
             args+=("$HOST:$dport") ;;
      pbx) script=examples/pbx.lua; STEP_ARGS="-auth_uri bob@$HOST" ;;
      # the Request-URI names the downstream UAS (sipp's remote host), the proxy is -rsa
      proxy) script=bench/proxy.lua; STEP_PORT=$dport; STEP_SCEN=uac.xml; STEP_ARGS="-rsa $HOST:$port" ;;
      register) script=bench/registrar.lua ;;
      *) [[ $who == *:quiet ]] && script=bench/uas-quiet.lua
         [[ $who == *:metrics ]] && script=bench/uas-metrics.lua menv=(LUASIP_METRICS="$HOST:$METRICS_PORT") ;;
    esac
    [[ $who == *:jemalloc ]] && menv+=(LD_PRELOAD="$(sh "$ROOT/scripts/jemalloc.sh")")
    case $interp in lua5.4) flavour=5.4 ;; luajit) flavour=luajit ;; lua5.1) flavour=5.1 ;; lua5.3) flavour=5.3 ;; esac
    [[ ${BENCH_UAS_LOG:-file} == null ]] && dest=/dev/null
    ( cd "$ROOT" && exec timeout --kill-after=5 "$RESP_MAX" \
        env LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$flavour/?.so;;" \
            "${menv[@]}" \
        "$interp" "$script" "${args[@]}" >>"$dest" 2>>"$logf.stderr" ) &
  fi
  RESP_PID=$!
  wait_udp_port "$port" 10 || { stop_responder; return 1; }
  SUT=$(pids_on_udp_port "$port" | head -1)
  SUT_ALL=$SUT
  if [[ $who == kamailio ]]; then
    SUT_ALL=$(for p in $(with_descendants "$RESP_PID"); do
      [[ $(cat /proc/$p/comm 2>/dev/null) == kamailio ]] && echo "$p"; done | sort -n | tr '\n' ' ')
  fi
  RCVBUF=$(ss -H -uanm "sport = :$port" 2>/dev/null | grep -o 'rb[0-9]*' | head -1 | tr -d rb)
  # proxy through pbx.lua: bind bob (digest auth) to the downstream UAS first
  if [[ $kind == pbx && $who != sipp && $who != kamailio ]]; then
    sed "s/CONTACT_PORT/$dport/g" "$SCEN_DIR/reg-bob.xml" >"$WORK/reg-bob.xml"
    ( cd "$WORK" && timeout 15 sipp "$HOST:$port" -sf "$WORK/reg-bob.xml" -i "$HOST" -mi "$HOST" \
        -bind_local -p "$(free_udp_port)" -t u1 -m 1 -nostdin -recv_timeout 5000 \
        >"$WORK/reg-bob.out" 2>&1 ) || { echo "registering bob at the PBX failed" >>"$logf.stderr"; stop_responder; return 1; }
  fi
  [[ -n $SUT ]]
}

stop_responder() { stop_pid "$RESP_PID"; stop_pid "$DOWN_PID"; RESP_PID=""; DOWN_PID=""; }
sut_cpu() { local p s=0; for p in $SUT_ALL; do s=$(( s + $(cpu_ns "$p") )); done; echo "$s"; }

# responder_died -> 0 (and DIED set to a description) if the current responder exited
# by itself
responder_died() {
  kill -0 "$SUT" 2>/dev/null && return 1
  local rc
  wait "$RESP_PID"; rc=$?
  RESP_PID=""
  DIED="responder $SUT DIED (exit status $rc$( (( rc > 128 )) && echo ", signal $(( rc - 128 ))"))"
  return 0
}

# Before each step (lib.sh STOP_CHECK, run in this shell):
#   * the responder must still be alive (a crash ends the row, it is never hidden by a
#     restart), and the time budget not spent;
#   * after a FAILED step the responder is replaced by a fresh one on a new port: an
#     overloaded UAS keeps retransmitting 2xx for unACKed INVITEs and sends BYEs for 64*T1
#     (32 s), which would load the next step;
#   * otherwise wait (polled, at most IDLE_MAX_WAIT s) until it is idle: below 5 % of a
#     core over 0.5 s.
pre_step() {
  if responder_died; then echo "$DIED" >"$WORK/stop-$ROW"; return 1; fi
  if (( SECONDS - BENCH_T0 > BENCH_BUDGET )); then
    echo "time budget (BENCH_BUDGET=${BENCH_BUDGET}s) spent" >"$WORK/stop-$ROW"; return 1
  fi
  if [[ ${LAST_STEP_OK:-1} == 0 ]]; then
    stop_responder
    PORT=$(free_udp_port)
    RESTARTS=$(( RESTARTS + 1 ))
    if ! start_responder "$KIND" "$WHO" "$PORT" "$RLOG"; then
      echo "fresh responder did not start" >"$WORK/stop-$ROW"; return 1
    fi
    [[ ${LADDER_PROGRESS:-0} == 1 ]] && echo "   [$(date +%T)] fresh responder after the failed step: pid $SUT on $HOST:$PORT" >&2
    return 0
  fi
  wait_responder_idle
  return 0
}

# wait_responder_idle: poll (at most IDLE_MAX_WAIT s) until the responder is idle: below
# 5 % of a core over 0.5 s
wait_responder_idle() {
  local t0=$SECONDS a b
  a=$(sut_cpu)
  while (( SECONDS - t0 < IDLE_MAX_WAIT )); do
    sleep 0.5
    b=$(sut_cpu)
    (( b - a < 25000000 )) && return 0
    a=$b
  done
  log "responder $SUT still busy after ${IDLE_MAX_WAIT}s; measuring anyway"
}

# sustain_run: a fresh responder, REF_RATE for BENCH_SUSTAIN s (one sipp run); its CPU
# is read over the last SUSTAIN_WINDOW s only, when the transactions of the first
# seconds are expiring as fast as new ones start (steady state: 64*T1 = 32 s of UDP
# transaction life in sofia's nta). Sets SUST_RES "us=... pass=0|1 rss_mb=...".
sustain_run() {
  local a b ta tb res us rss
  PORT=$(free_udp_port)
  start_responder "$KIND" "$WHO" "$PORT" "$RLOG" || return 1
  KEEP=0 QUIET_MAX_WAIT=0 step_env "$HERE/step.sh" "$KIND" "$STEP_PORT" "$REF_RATE" "$BENCH_SUSTAIN" \
    >"$WORK/sustain-$ROW.txt" 2>&1 &
  SPID=$!
  sleep $(( BENCH_SUSTAIN - SUSTAIN_WINDOW - 2 ))      # fixed measurement schedule
  a=$(sut_cpu); ta=$(date +%s.%N)
  sleep "$SUSTAIN_WINDOW"
  b=$(sut_cpu); tb=$(date +%s.%N)
  rss=$(awk '/VmRSS/{printf "%d", $2/1024}' "/proc/$SUT/status" 2>/dev/null)
  wait "$SPID"; SPID=""
  res=$(grep '^RESULT ' "$WORK/sustain-$ROW.txt" | tail -1)
  us=$(awk -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" -v r="$REF_RATE" \
         'BEGIN{ printf "%.1f", (b-a)/1000/(r*(tb-ta)) }')
  SUST_RES="us=$us pass=$(step_passes "$res" && echo 1 || echo 0) rss_mb=${rss:-0}"
  out "   sustained $REF_RATE/s for ${BENCH_SUSTAIN}s (fresh responder): $(kv success "${res#RESULT }") ok," \
      "$(kv failed "${res#RESULT }") failed; CPU over the last ${SUSTAIN_WINDOW}s: $us us/call" \
      "($(awk -v a="$a" -v b="$b" -v ta="$ta" -v tb="$tb" 'BEGIN{printf "%.0f", 100*(b-a)/1e9/(tb-ta)}')% of a core), RSS ${rss:-?} MB"
  stop_responder
  return 0
}

# step_env CMD...: CMD with the current row's step settings (start_responder sets them)
step_env() {
  SUT_PIDS=$SUT_ALL STEP_SCEN=$STEP_SCEN STEP_ARGS=$STEP_ARGS STEP_INF=$STEP_INF STEP_SUT_PORT=$PORT "$@"
}

ladder_step() {
  KEEP=${STEP_KEEP:-0} BENCH_ERRDIR=$WORK/err/$ROW step_env "$HERE/step.sh" "$KIND" "$STEP_PORT" "$1" "$BENCH_DURATION" 2>&1 \
    | tee -a "$WORK/steps-$ROW.txt"
}

loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# ab_rounds (KIND proxy, register): BENCH_AB_ROUNDS rounds, each running every luasip
# interpreter of BENCH_LUA and Kamailio one after the other, each a fresh process: a
# WARMUP s warm-up at REF_RATE (not measured), wait until idle, AB_DURATION s at REF_RATE
# measured. Interleaving spreads the drift of this shared machine over all of them; the
# table gives the medians (AB_US[KIND|WHO] = the runs' us/call, '!' marks a failing run).
declare -A AB_US
ab_rounds() {   # AB_WHOS: who runs (default BENCH_LUA + kamailio); AB_RUN: the step kind
  local r w res us whos="$BENCH_LUA" run=${AB_RUN:-$KIND}
  [[ $BENCH_KAMAILIO == 1 ]] && whos="$whos kamailio"
  whos=${AB_WHOS:-$whos}
  out ""
  out "== $KIND: interleaved A/B at $REF_RATE/s, $BENCH_AB_ROUNDS round(s) of: $whos" \
      "(fresh process each, ${WARMUP}s warm-up, ${AB_DURATION}s measured)"
  for (( r = 1; r <= BENCH_AB_ROUNDS; r++ )); do
    for w in $whos; do
      if (( SECONDS - BENCH_T0 > BENCH_BUDGET )); then out "   time budget spent: A/B stopped"; return; fi
      WHO=$w; PORT=$(free_udp_port); METRICS_PORT=""
      [[ $w == *:metrics ]] && METRICS_PORT=$(free_udp_port)
      if ! start_responder "$run" "$w" "$PORT" "$WORK/ab-$KIND-$w.log"; then
        out "   round $r $w: the responder did not start"; continue
      fi
      [[ $w == *:metrics ]] && scraper_start
      if (( WARMUP > 0 )); then
        KEEP=0 QUIET_MAX_WAIT=0 step_env "$HERE/step.sh" "$run" "$STEP_PORT" "$REF_RATE" "$WARMUP" >/dev/null 2>&1
        wait_responder_idle
      fi
      res=$(KEEP=0 QUIET_MAX_WAIT=$AB_QUIET_WAIT step_env "$HERE/step.sh" "$run" "$STEP_PORT" "$REF_RATE" "$AB_DURATION" 2>&1 |
              grep '^RESULT ' | tail -1)
      responder_died && out "   round $r $w: $DIED"
      [[ $w == *:metrics ]] && scraper_stop
      stop_responder
      res=${res#RESULT }
      us=$(kv sut_us_per_call "$res"); us=${us:-0}
      step_passes "RESULT $res" || us="$us!"
      AB_US[$KIND|$w]+=" $us"
      out "   [$(date +%T)] round $r $(printf '%-14s' "$w") $(printf '%7s' "$us") us/call  $(kv success "$res") ok $(kv failed "$res") failed," \
          "retrans $(kv retrans_pct "$res")%, resp CPU $(kv sut_cpu_pct "$res")%, other $(kv other_pct "$res")%"
    done
  done
}
# metrics_ab (KIND metrics): ab_rounds on calls to examples/uas.lua with metrics off
# (<interp>) and on (<interp>:metrics: bench/uas-metrics.lua, a scraper fetching the
# page every second); AB_US[metrics|WHO]. The table gives the medians and the difference.
METRICS_SCRAPER=""
metrics_ab() {
  local L whos=""
  for L in $BENCH_LUA; do L=${L%%:*}; whos="$whos $L $L:metrics"; done
  AB_WHOS=${whos# } AB_RUN=calls ab_rounds
}
# the scraper of a :metrics responder (METRICS_PORT), for the whole run; stopped by
# scraper_stop, which first prints the page's request counters
scraper_start() {
  ( for (( i = 0; i < WARMUP + AB_DURATION + 30; i++ )); do
      timeout 5 curl -s -o /dev/null "http://$HOST:$METRICS_PORT/metrics"; sleep 1; done ) &
  METRICS_SCRAPER=$!
}
scraper_stop() {
  out "   page: $(curl -s --max-time 5 "http://$HOST:$METRICS_PORT/metrics" |
    grep '^luasip_requests_received_total' | tr '\n' ' ')"
  stop_pid "$METRICS_SCRAPER"; METRICS_SCRAPER=""
}
# median LIST ("12.5 13! 11"): the median of the runs without '!' (a run with failed calls
# or retransmissions counts its retransmissions in its us/call), of all when every run has
# one (then suffixed '!')
median() {
  local ok; ok=$(tr ' ' '\n' <<<"$1" | grep . | grep -v '!')
  if [[ -z $ok ]]; then
    [[ -n $(tr -d ' ' <<<"$1") ]] && echo "$(median_of "$(tr -d '!' <<<"$1")")!"
  else median_of "$ok"; fi
}
median_of() { tr ' ' '\n' <<<"$1" | grep . | sort -g |
  awk '{ v[NR] = $1 } END { if (NR == 0) print ""; else if (NR % 2) print v[(NR+1)/2];
                            else printf "%.1f\n", (v[NR/2] + v[NR/2+1]) / 2 }'; }

out "luasip bench: ${BENCH_REV:-$(cd "$ROOT" && git describe --always --dirty 2>/dev/null)} (core.so built $(date -r "$ROOT/build/5.4/luasip/core.so" '+%F %T' 2>/dev/null))  run $(date '+%F %T')"
out "  $(nproc) CPUs, loadavg $(loadavg), sipp $(sipp -v 2>&1 | grep -o 'v[0-9.]*' | head -1); step ${BENCH_DURATION}s, ladder $(ladder_rates | tr ' ' ',')${RATES:+ (RATES)} + $REFINE bisections; luasip: $BENCH_LUA"
BENCH_T0=$SECONDS
export LADDER_PROGRESS=1
STOP_CHECK=pre_step

ROWS=()
for KIND in $BENCH_KINDS; do
  case $KIND in calls|options|b2bua|proxy|pbx|register) ;;
    metrics) [[ $BENCH_AB_ROUNDS -gt 0 ]] && metrics_ab; continue ;;
    notify) continue ;;                       # bench/notify.sh, after the table
    overload) continue ;;                     # bench/overload.sh, after the table
    media) continue ;;                        # bench/media.sh, after the table
    reload) continue ;;                       # bench/reload.sh, after the table
    scaling) continue ;;                      # bench/scaling.sh, after the table
    *) die "BENCH_KINDS: calls options b2bua proxy pbx register metrics notify overload media reload scaling" ;; esac
  WHOS="sipp $BENCH_LUA"
  [[ $KIND == pbx && $BENCH_KAMAILIO == 1 ]] && WHOS="$WHOS kamailio"
  # proxy, register beside Kamailio: Kamailio's ladder first (the reference must not be
  # the row the time budget cuts), no sipp baseline ladder (it climbs to ~10,000/s, ~2
  # min; BENCH_BASELINE=1 adds it): the figures that count are luasip's against Kamailio's
  if [[ ( $KIND == proxy || $KIND == register ) && $BENCH_KAMAILIO == 1 ]]; then
    WHOS="kamailio $BENCH_LUA"; [[ ${BENCH_BASELINE:-0} == 1 ]] && WHOS="sipp $WHOS"
  fi
  # interleaved A/B at REF_RATE first (before the ladders use up the time budget)
  [[ $BENCH_AB_ROUNDS -gt 0 && ( $KIND == proxy || $KIND == register ) ]] && ab_rounds
  for WHO in $WHOS; do
    ROW="$KIND-$WHO"
    if (( SECONDS - BENCH_T0 > BENCH_BUDGET )); then
      out ""; out "== $KIND: $WHO skipped (time budget BENCH_BUDGET=${BENCH_BUDGET}s spent)"
      ROWS+=("$KIND|$WHO|skipped"); continue
    fi
    PORT=$(free_udp_port)
    RLOG=$WORK/responder-$ROW.log
    RESTARTS=0
    mkdir -p "$WORK/err/$ROW"
    label="baseline (sipp uas)"; [[ $WHO == sipp ]] || label="luasip $WHO (examples/uas.lua)"
    case $KIND-$WHO in
      register-sipp) label="baseline (sipp reg-uas-auth.xml: 401, 200)" ;;
      b2bua-sipp|proxy-sipp|pbx-sipp) label="baseline (sipp uac -> sipp uas direct)" ;;
      b2bua-*) label="luasip $WHO (examples/b2bua.lua -> sipp uas)" ;;
      proxy-kamailio|pbx-kamailio) label="kamailio proxy-lua (sipp uac -rsa kamailio -> sipp uas; no auth)" ;;
      proxy-*) label="luasip $WHO (bench/proxy.lua: record-routing proxy, sipp uac -rsa it -> sipp uas)" ;;
      pbx-*) label="luasip $WHO (examples/pbx.lua: 407 + record-routing proxy -> sipp uas)" ;;
      register-kamailio) label="kamailio registrar-auth-lua" ;;
      register-*) label="luasip $WHO (bench/registrar.lua: sip.registrar + digest)" ;;
    esac
    out ""
    out "== $KIND: $label on $HOST:$PORT  (loadavg $(loadavg))"
    if ! start_responder "$KIND" "$WHO" "$PORT" "$RLOG"; then
      out "   responder did not bind udp $HOST:$PORT; see $RLOG"
      ROWS+=("$KIND|$WHO|startfail")
      continue
    fi
    out "   pid(s) $SUT_ALL, UDP receive buffer $(( ${RCVBUF:-0} / 1024 )) KiB"
    # warm-up, not measured: the first calls of a fresh process fault in its heap, load
    # code, grow tables; the REF_RATE step that follows must compare warm processes
    if (( WARMUP > 0 )); then
      KEEP=0 QUIET_MAX_WAIT=0 step_env "$HERE/step.sh" "$KIND" "$STEP_PORT" "$REF_RATE" "$WARMUP" \
        >"$WORK/warmup-$ROW.txt" 2>&1
      echo "   [$(date +%T)] warm-up: $(grep -o 'success=[0-9]* failed=[0-9]*' "$WORK/warmup-$ROW.txt" | head -1) at $REF_RATE/s for ${WARMUP}s (not measured)" >&2
    fi
    # in this shell (not $(...)): pre_step may replace the responder
    run_ladder ladder_step "$ROW" >"$WORK/ladder-$ROW.txt"
    RES_LINES=$(cat "$WORK/ladder-$ROW.txt")
    cat "$WORK/ladder-$ROW.txt" >>"$LOG"
    alive=yes
    if [[ -n $RESP_PID ]] && responder_died; then alive=$DIED; fi
    if [[ -f $WORK/stop-$ROW ]]; then alive="stopped: $(cat "$WORK/stop-$ROW")"; fi
    [[ $alive == yes ]] || {
      out "   $alive; its stderr (last lines):"
      tail -20 "$RLOG.stderr" 2>/dev/null | sed 's/^/     /' | tee -a "$LOG"; }
    stop_responder
    (( RESTARTS > 0 )) && out "   ($RESTARTS fresh responder(s) after failed steps)"
    SUST=""
    if (( BENCH_SUSTAIN > 0 )) && [[ $alive == yes ]] && (( SECONDS - BENCH_T0 <= BENCH_BUDGET )); then
      sustain_run && SUST=$SUST_RES
    fi
    out "   machine: waited $(grep -o 'quiet_wait_s=[0-9]*' "$WORK/steps-$ROW.txt" 2>/dev/null | awk -F= '{s+=$2} END{print s+0}') s in all for it to be quiet before steps; busiest pre-step second $(grep -o 'pre_busy_pct=[0-9.]*' "$WORK/steps-$ROW.txt" 2>/dev/null | awk -F= '$2>m{m=$2} END{print m+0}')% of 200; loadavg now $(loadavg)"
    if [[ $WHO != sipp ]]; then
      if [[ -s $RLOG ]]; then
        # what the example logged, by kind of line (URIs and numbers left out), most frequent first
        out "   uas.lua stdout: $(wc -l <"$RLOG") lines, by kind:"
        awk '{ k = ""; n = 0
               for (i = 2; i <= NF && n < 4; i++) {
                 if ($i ~ /sip:|@|^[0-9.:]+$|^<|^\(/) continue
                 k = k (n ? " " : "") $i; n++ }
               c[k]++ }
             END { for (k in c) printf "%9d  %s\n", c[k], k }' "$RLOG" | sort -rn | head -10 | tee -a "$LOG"
      fi
      if [[ -s $RLOG.stderr && $alive == yes ]]; then
        out "   uas.lua stderr: $(wc -l <"$RLOG.stderr") lines, last ones:"
        tail -5 "$RLOG.stderr" | cut -c1-200 | sed 's/^/     /' | tee -a "$LOG"
      fi
    fi
    # the lowest failing rate (the boundary): its STEP line and sipp's first error lines
    MAXL=$(echo "$RES_LINES" | grep '^MAX' | tail -1)
    FAILRATE=$(tr ' ' '\n' <<<"$MAXL" | sed -n 's/^first_fail=//p')
    FAILL=""
    if [[ -n $FAILRATE && $FAILRATE != 0 ]]; then
      FAILL=$(echo "$RES_LINES" | grep "^STEP FAIL rate=$FAILRATE " | head -1)
      if [[ -s $WORK/err/$ROW/err-$FAILRATE.log ]]; then
        out "   sipp UAC errors at $FAILRATE/s (first lines):"
        grep -v '^\s*$' "$WORK/err/$ROW/err-$FAILRATE.log" | head -6 | cut -c1-200 | sed 's/^/     /' | tee -a "$LOG"
      fi
    fi
    ROWS+=("$KIND|$WHO|$alive|$MAXL|$(echo "$RES_LINES" | grep "^STEP pass rate=$REF_RATE " | head -1)|$FAILL|$SUST")
  done
done

# ---- table
kvl() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -1; }
fail_reason() {  # STEP FAIL line -> short reason
  local s=$1 r=""
  [[ -n $s ]] || { echo "-"; return; }
  local f inc rp ach rate
  f=$(kvl failed "$s"); inc=$(kvl incomplete "$s"); rp=$(kvl retrans_pct "$s"); ach=$(kvl achieved_rate "$s"); rate=$(kvl rate "$s")
  (( ${f:-0} > 0 )) && r="$r failed=$f (timeout=$(kvl fail_recvtimeout "$s") maxretrans=$(kvl fail_maxretrans "$s") unexp=$(kvl fail_unexpected "$s"))"
  (( ${inc:-0} > 0 )) && r="$r incomplete=$inc"
  awk -v x="${rp:-0}" -v m="$MAX_RETRANS_PCT" 'BEGIN{exit !(x >= m)}' && r="$r retrans=${rp}%"
  awk -v a="${ach:-0}" -v t="${rate:-1}" -v m="$MIN_RATE_RATIO" 'BEGIN{exit !(a < m*t)}' && r="$r achieved=${ach}/s"
  local d=$(kvl drops_sut "$s"); (( ${d:-0} > 0 )) && r="$r udp_drops=$d"
  r="$r resp_cpu=$(kvl sut_cpu_pct "$s")% rtd1=$(kvl rt1_ms "$s")ms"
  echo "${r# }"
}

declare -A BASE_MAX BASE_REF BASE_ATMAX BASE_CAPPED BASE_SUST
for r in "${ROWS[@]}"; do
  IFS='|' read -r kind who alive mx ref fl sust <<<"$r"
  [[ $who == sipp ]] || continue
  BASE_MAX[$kind]=$(kvl max_rate "$mx"); BASE_CAPPED[$kind]=0
  [[ $(kvl first_fail "$mx") == 0 ]] && BASE_CAPPED[$kind]=1
  BASE_REF[$kind]=$(kvl sut_us_per_call "$ref"); BASE_ATMAX[$kind]=$(kvl sut_us_per_call "$mx")
  BASE_SUST[$kind]=$(kvl us "$sust")
done
ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b+0 == 0 || a+0 == 0) print "-"; else printf "%.2f", a/b }'; }

{
echo ""
echo "== luasip bench results ($(date '+%F %T'), $(( SECONDS - BENCH_T0 )) s; $(nproc) CPUs, loadavg now $(loadavg))"
echo "   max      = highest rate with 0 failed calls, <${MAX_RETRANS_PCT}% retransmissions, >=95% of target achieved (${BENCH_DURATION}s steps)"
echo "   fails at = lowest rate tried that failed (\"-\": none of the rates tried failed; max shown as N+)"
echo "   us/c     = CPU of the responder process (user+sys, schedstat) per completed call or request,"
echo "              during the ${BENCH_DURATION}s step: work deferred past the step (sofia transactions expiring"
echo "              5 s and 32 s later) is not in it; 'sust' (BENCH_SUSTAIN=N) is the steady state"
echo "   x base   = luasip / baseline of the same kind (max: higher is better; us/call: lower is better)"
echo "   other%   = CPU (of 200) used by other processes on this shared machine during the max step"
SH=""; (( BENCH_SUSTAIN > 0 )) && SH=$(printf ' %9s %6s %6s' "us/c sust" "x base" "RSS MB")
printf '%-8s %-21s %7s %8s %7s %9s %6s %9s %6s%s %6s  %s\n' \
  kind responder "max/s" "fails at" "x base" "us/c@$REF_RATE" "x base" "us/c@max" "x base" "$SH" other% "why the 'fails at' step failed"
for r in "${ROWS[@]}"; do
  IFS='|' read -r kind who alive mx ref fl sust <<<"$r"
  name="sipp uas (baseline)"; [[ $who == sipp ]] || name="luasip $who"
  [[ $who == kamailio && ( $kind == proxy || $kind == pbx ) ]] && name="kamailio proxy-lua"
  [[ $who == kamailio && $kind == register ]] && name="kamailio reg-auth-lua"
  if [[ $alive == startfail ]]; then printf '%-8s %-21s  did not start\n' "$kind" "$name"; continue; fi
  if [[ $alive == skipped ]]; then printf '%-8s %-21s  skipped (time budget)\n' "$kind" "$name"; continue; fi
  m=$(kvl max_rate "$mx"); ff=$(kvl first_fail "$mx"); mshow=${m:-0}
  [[ $ff == 0 ]] && { ff="-"; (( ${m:-0} > 0 )) && mshow="$m+"; }
  uref=$(kvl sut_us_per_call "$ref"); umax=$(kvl sut_us_per_call "$mx"); usus=$(kvl us "$sust")
  [[ -n $sust && $(kvl pass "$sust") != 1 ]] && usus="${usus}!"
  if [[ $who == sipp ]]; then xm="1"; xr="1"; xx="1"; xs="1"
  else
    xm=$(ratio "$m" "${BASE_MAX[$kind]:-}")
    [[ ${BASE_CAPPED[$kind]:-0} == 1 && $xm != - ]] && xm="<=$xm"
    xr=$(ratio "$uref" "${BASE_REF[$kind]:-}"); xx=$(ratio "$umax" "${BASE_ATMAX[$kind]:-}")
    xs=$(ratio "${usus%!}" "${BASE_SUST[$kind]:-}")
  fi
  SC=""; (( BENCH_SUSTAIN > 0 )) && SC=$(printf ' %9s %6s %6s' "${usus:--}" "$xs" "$(kvl rss_mb "$sust")")
  note=$(fail_reason "$fl"); [[ $alive == yes ]] || note="$alive; $note"
  printf '%-8s %-21s %7s %8s %7s %9s %6s %9s %6s%s %6s  %s\n' "$kind" "$name" "$mshow" "$ff" "$xm" \
    "${uref:--}" "$xr" "${umax:--}" "$xx" "$SC" "$(kvl other_pct "$mx")" "$note"
done
(( BENCH_SUSTAIN > 0 )) && echo "   (sust: ${BENCH_SUSTAIN}s at $REF_RATE/s, CPU over the last ${SUSTAIN_WINDOW}s; '!' = that run had failures)"
# luasip vs Kamailio (same run, same kind): CPU per call at REF_RATE and at max, max rate
KLINES=""
for r in "${ROWS[@]}"; do
  IFS='|' read -r kind who alive mx ref fl sust <<<"$r"
  [[ $who == kamailio && $alive == yes ]] || continue
  kref=$(kvl sut_us_per_call "$ref"); kmax=$(kvl max_rate "$mx"); kum=$(kvl sut_us_per_call "$mx")
  for r2 in "${ROWS[@]}"; do
    IFS='|' read -r k2 w2 a2 mx2 ref2 fl2 sust2 <<<"$r2"
    [[ $k2 == "$kind" && $w2 != sipp && $w2 != kamailio && $a2 != startfail && $a2 != skipped ]] || continue
    KLINES+=$(printf '\n%-8s luasip %-13s max x%-6s  us/c@%s x%-6s  us/c@max x%s' "$kind" "$w2" \
      "$(ratio "$(kvl max_rate "$mx2")" "$kmax")" "$REF_RATE" "$(ratio "$(kvl sut_us_per_call "$ref2")" "$kref")" \
      "$(ratio "$(kvl sut_us_per_call "$mx2")" "$kum")")
  done
done
[[ -n $KLINES ]] && { echo "   luasip / Kamailio (all Kamailio processes' CPU; max: higher is better, us/call: lower is better):"; echo "${KLINES#?}"; }
# the interleaved A/B runs at REF_RATE: medians, and luasip / Kamailio
for kind in $BENCH_KINDS; do
  [[ $kind != metrics && -n ${AB_US[$kind|kamailio]:-}${AB_US[$kind|${BENCH_LUA%% *}]:-} ]] || continue
  echo "   $kind, interleaved A/B at $REF_RATE/s (${AB_DURATION}s runs, fresh processes): median us/call of the clean runs [all runs; '!' = failed calls or retransmissions]; x Kamailio"
  kmed=$(median "${AB_US[$kind|kamailio]:-}")
  for w in $BENCH_LUA kamailio; do
    [[ -n ${AB_US[$kind|$w]:-} ]] || continue
    m=$(median "${AB_US[$kind|$w]}")
    printf '   %-8s %-13s %8s  [%s ]  x%s\n' "$kind" "$w" "$m" "${AB_US[$kind|$w]}" "$(ratio "${m%!}" "${kmed%!}")"
  done
done
# the cost of metrics: CPU per call with the Prometheus page off and on (KIND metrics)
for w in $BENCH_LUA; do
  w=${w%%:*}
  [[ -n ${AB_US[metrics|$w]:-} && -n ${AB_US[metrics|$w:metrics]:-} ]] || continue
  off=$(median "${AB_US[metrics|$w]}"); on=$(median "${AB_US[metrics|$w:metrics]}")
  printf '   metrics  %-8s us/call off %8s [%s ]  on %8s [%s ]  %s\n' "$w" "$off" "${AB_US[metrics|$w]}" \
    "$on" "${AB_US[metrics|$w:metrics]}" \
    "$(awk -v a="${on%!}" -v b="${off%!}" 'BEGIN { if (a + 0 > 0 && b + 0 > 0) printf "%+.1f %%", (a / b - 1) * 100; else print "-" }')"
done
} | tee -a "$LOG"
# NOTIFY fan-out and memory per subscription (issue 5): not a sipp ladder, its own script
if [[ " $BENCH_KINDS " == *" notify "* ]]; then
  sh "$HERE/notify.sh" "${BENCH_NOTIFY_N:-2000}" | tee -a "$LOG"
fi
# media (issue 9): N concurrent IVR streams against rtpgen, its own script
if [[ " $BENCH_KINDS " == *" media "* ]]; then
  bash "$HERE/media.sh" | tee -a "$LOG"
fi
# a reload under load (issue 14): calls held across SIGHUP reloads, failed calls, its own script
if [[ " $BENCH_KINDS " == *" reload "* ]]; then
  BENCH_RELOAD_LUA="${BENCH_RELOAD_LUA:-${BENCH_LUA%% *}}" bash "$HERE/reload.sh" | tee -a "$LOG"
fi
# overload (issue 8 point 5): offered vs completed at 1x, 1.5x, 2x the max, its own script
if [[ " $BENCH_KINDS " == *" overload "* ]]; then
  OVL_LUA="${BENCH_LUA//:quiet/}" bash "$HERE/overload.sh" | tee -a "$LOG"
fi
# scaling (issue 12): calls/s and REGISTER/s of 1 process, 1 and 2 workers behind the
# stateless front, CPU per call of the workers and of the front; its own script
if [[ " $BENCH_KINDS " == *" scaling "* ]]; then
  BENCH_SCALING_LUA="${BENCH_SCALING_LUA:-${BENCH_LUA%% *}}" bash "$HERE/scaling.sh" | tee -a "$LOG"
fi
