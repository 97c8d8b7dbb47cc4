# shellcheck shell=bash
# lib.sh - helpers shared by the bench scripts. Source it, do not run it.
#
# Adapted from the workplace harness (../shared/bench/lib.sh): same
# loopback guards, CPU accounting and sipp measurement; the rate ladder is a
# doubling ladder (run_ladder) so that a whole `make bench` stays bounded, and
# free_udp_port picks unused loopback ports.
#
# Conventions used by every script here:
#   * Only loopback addresses are ever targeted (require_loopback).
#   * Every process a script starts is bounded by `timeout` and is stopped
#     by PID (never by name) when the script exits.
#   * Work files live in a `mktemp -d` directory that is removed at exit
#     unless KEEP=1 (then its path is printed).
#   * One measurement prints human-readable lines and one final line
#       RESULT key=value key=value ...
#     which the ladder scripts (cps-max.sh, reg-max.sh) and run-anchors.sh
#     parse. CPU figures come from /proc/PID/schedstat (ns resolution).

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCEN_DIR="$BENCH_DIR/scenarios"

die() { echo "ERROR: $*" >&2; exit 2; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

# split_hostport "127.0.0.1:5070" -> sets HP_HOST, HP_PORT ("[::1]:5070" ok)
split_hostport() {
  local hp=$1
  if [[ $hp =~ ^\[([0-9a-fA-F:]+)\]:([0-9]+)$ ]]; then
    HP_HOST="[${BASH_REMATCH[1]}]"; HP_PORT=${BASH_REMATCH[2]}
  elif [[ $hp =~ ^([^:]+):([0-9]+)$ ]]; then
    HP_HOST=${BASH_REMATCH[1]}; HP_PORT=${BASH_REMATCH[2]}
  else
    die "expected HOST:PORT, got '$hp'"
  fi
}

# Refuse anything that is not a loopback address. Load must never leave
# this machine.
require_loopback() {
  local h=$1
  if [[ $h =~ ^127\.[0-9]{1,3}\.[0-9]{1,3}\.[0-9]{1,3}$ ]] || [[ $h == "[::1]" ]] \
     || [[ $h == "::1" ]]; then
    return 0
  fi
  die "refusing non-loopback address '$h' (only 127.0.0.0/8 and ::1 allowed)"
}

require_port() { [[ $1 =~ ^[0-9]+$ ]] && (( $1 > 0 && $1 < 65536 )) || die "bad port '$1'"; }
require_uint() { [[ $1 =~ ^[0-9]+$ ]] || die "expected a positive integer, got '$1'"; }

# PIDs of processes holding a UDP socket bound to local PORT (any address).
pids_on_udp_port() {
  ss -H -uanp "sport = :$1" 2>/dev/null | grep -o 'pid=[0-9]*' | cut -d= -f2 | sort -un
}

# udp_drops PORT -> datagrams the kernel dropped on the UDP socket(s) bound
# to local PORT (receive buffer full), from `ss -m` (skmem "d" field); 0 if
# no such socket.
udp_drops() {
  [[ -n ${1:-} ]] || { echo 0; return; }
  ss -H -uanm "sport = :$1" 2>/dev/null |
    awk '{ if (match($0, /,d[0-9]+\)/)) s += substr($0, RSTART + 2, RLENGTH - 3) } END { printf "%.0f\n", s }'
}

# Given PIDs, print them plus all their descendants (one per line, unique).
with_descendants() {
  ps -e -o pid=,ppid= | awk -v roots="$*" '
    { parent[$1] = $2; pids[NR] = $1 }
    END {
      n = split(roots, r, " "); for (i = 1; i <= n; i++) keep[r[i]] = 1
      do { changed = 0
           for (i in pids) { p = pids[i]; if (!(p in keep) && (parent[p] in keep)) { keep[p] = 1; changed = 1 } }
      } while (changed)
      for (p in keep) if (p != "") print p
    }' | sort -un
}

# CPU time consumed so far by PID (all its live threads), in nanoseconds;
# 0 if it is gone. schedstat's first field is on-CPU time in ns.
cpu_ns() {
  cat /proc/"$1"/task/*/schedstat 2>/dev/null | awk '{s += $1} END {printf "%.0f\n", s}'
}

# snapshot_cpu PID... -> "pid comm ns utime stime" lines
# (ns from schedstat; utime/stime in clock ticks from /proc/PID/stat, used
# only for the user/system split)
snapshot_cpu() {
  local p comm ut
  for p in "$@"; do
    comm=$(cat "/proc/$p/comm" 2>/dev/null || echo gone)
    ut=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12, $13}')
    echo "$p $comm $(cpu_ns "$p") ${ut:-0 0}"
  done
}

# Machine-wide jiffies from the first line of /proc/stat:
#   "usersys irqsoft idle steal total"
# usersys = user+nice+system (time charged to processes); irqsoft =
# irq+softirq (loopback packet processing lands mostly here).
sys_jiffies() {
  awk '/^cpu /{us=$2+$3+$4; irq=$7+$8; idle=$5+$6; steal=$9;
       print us, irq, idle, steal, us+irq+idle+steal; exit}' /proc/stat
}

# wait_quiet: this machine is shared, and other jobs (builds, other
# benchmarks) skew results. Before a measurement, wait until the whole
# machine has been below QUIET_PCT % busy (of 200 = 2 cores) for one second,
# for at most QUIET_MAX_WAIT seconds. Prints "quiet_wait_s=N pre_busy_pct=X".
QUIET_PCT=${QUIET_PCT:-20}
QUIET_MAX_WAIT=${QUIET_MAX_WAIT:-120}  # run.sh lowers it (time budget)
wait_quiet() {
  local start=$SECONDS u0 i0 d0 s0 t0 u1 i1 d1 s1 t1 busy
  while :; do
    read -r u0 i0 d0 s0 t0 < <(sys_jiffies); sleep 1
    read -r u1 i1 d1 s1 t1 < <(sys_jiffies)
    busy=$(awk -v a=$(( (u1-u0)+(i1-i0) )) -v t=$(( t1-t0 )) 'BEGIN{printf "%.1f", (t>0?200*a/t:0)}')
    if awk -v b="$busy" -v q="$QUIET_PCT" 'BEGIN{exit !(b < q)}'; then break; fi
    if (( SECONDS - start >= QUIET_MAX_WAIT )); then
      log "machine still busy (${busy}% of 200) after ${QUIET_MAX_WAIT}s; measuring anyway"
      break
    fi
    sleep 1
  done
  echo "quiet_wait_s=$(( SECONDS - start )) pre_busy_pct=$busy"
}

# cpu_delta BEFORE_FILE AFTER_FILE WALL_SECONDS
#   -> "total_s=<sum of CPU seconds> max_pct=<busiest process %>
#       max_comm=<name/pid> sys_share=<% of the CPU time spent in the kernel>"
cpu_delta() {
  awk -v wall="$3" '
    NR==FNR { before[$1]=$3; bu[$1]=$4; bs[$1]=$5; next }
    { d = $3 - before[$1]; if (d < 0) d = 0; tot += d;
      du += $4 - bu[$1]; ds += $5 - bs[$1];
      if (d > maxd) { maxd = d; maxc = $2 "/" $1 } }
    END { if (wall <= 0) wall = 1;
          printf "total_s=%.3f max_pct=%.1f max_comm=%s sys_share=%.0f\n", tot/1e9,
                 100*maxd/1e9/wall, (maxc==""?"none":maxc), (du+ds > 0 ? 100*ds/(du+ds) : 0) }
  ' "$1" "$2"
}

# sipp_final_stats STAT_CSV -> key=value pairs from the last line of a sipp
# -trace_stat file (cumulative columns). Times are converted to ms.
sipp_final_stats() {
  awk -F';' '
    function ms(t,   a) { split(t, a, ":"); return ((a[1]*60 + a[2])*60 + a[3])*1000 + a[4]/1000 }
    function epoch(t,  a) { split(t, a, "\t"); return a[3] }
    NR==1 { for (i=1;i<=NF;i++) col[$i]=i; next }
    { last=$0 }
    END {
      if (last == "") { print "stats=missing"; exit }
      n = split(last, f, ";")
      el = epoch(f[col["CurrentTime"]]) - epoch(f[col["StartTime"]])
      printf "created=%d success=%d failed=%d current=%d retrans=%d dead_msgs=%d ooc_msgs=%d ",
        f[col["TotalCallCreated"]], f[col["SuccessfulCall(C)"]], f[col["FailedCall(C)"]],
        f[col["CurrentCall"]], f[col["Retransmissions(C)"]], f[col["DeadCallMsgs(C)"]],
        f[col["OutOfCallMsgs(C)"]]
      printf "fail_maxretrans=%d fail_unexpected=%d fail_recvtimeout=%d ",
        f[col["FailedMaxUDPRetrans(C)"]], f[col["FailedUnexpectedMessage(C)"]],
        f[col["FailedTimeoutOnRecv(C)"]]
      printf "rt1_ms=%.3f rt2_ms=%.3f call_ms=%.3f elapsed_s=%.3f\n",
        ms(f[col["ResponseTime1(C)"]]), ms(f[col["ResponseTime2(C)"]]),
        ms(f[col["CallLength(C)"]]), el
    }' "$1"
}

# rtt_means FILE... -> "rt1_ms=X rt2_ms=Y" from sipp -trace_rtt files
# (per-call samples, whole-ms ticks; the mean of many is finer than 1 ms)
rtt_means() {
  [[ -f ${1:-} ]] || return 0
  awk -F';' 'FNR > 1 && NF >= 3 { s[$3] += $2; n[$3]++ }
    END { printf "rt1_ms=%.3f rt2_ms=%.3f rtt_samples=%d\n",
                 (n[1] ? s[1]/n[1] : 0), (n[2] ? s[2]/n[2] : 0), n[1] }' "$@"
}

# kv KEY "k=v k=v ..." -> value of KEY
kv() { tr ' ' '\n' <<<"$2" | sed -n "s/^$1=//p" | head -1; }

# Stop a PID we started: TERM, wait up to 5 s, then KILL. Never by name.
stop_pid() {
  local pid=$1 i
  [[ -n $pid ]] || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq 50); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
}

# measure_sipp RATE CALLS DIRECT "UAS_PIDS" "SUT_PIDS" SIPP_ARGS...
#   Optional globals M_UAC_PORT M_UAS_PORT M_SUT_PORT: UDP ports whose
#   kernel drop counters are reported (drops_uac/uas/sut).
#   One bounded sipp UAC run with CPU accounting, shared by cps.sh and
#   reg.sh. Runs in $WORK (caller's mktemp dir; the caller's EXIT trap must
#   stop_pid "$UAC"). Adds -r/-m/-l, stat/rtt/error tracing and the time
#   bounds to SIPP_ARGS. Sets RES (the RESULT key=value body).
#   DIRECT=1: no system under test (SUT figures are 0).
measure_sipp() {
  local RATE=$1 CALLS=$2 DIRECT=$3 UAS_PIDS=$4 SUT=$5; shift 5
  local LIMIT=$(( RATE * 3 + 100 > 60000 ? 60000 : RATE * 3 + 100 )) GLOBAL_TO QUIET U0 Q0 I0 S0 T0 U1 Q1 I1 S1 T1
  local t0 t1 WALL UAC_SIPP UAC_NS v SIPP_RC ST RTT UASD SUTD DUR
  local D_UAS0 D_SUT0 D_UAS1 D_SUT1 D_UAC=0 d
  # Allow 3 s worth of calls in flight; beyond that sipp throttles call
  # creation, which shows up as achieved_rate < rate (a failed step).
  DUR=$(( (CALLS + RATE - 1) / RATE ))
  GLOBAL_TO=$(( DUR * 2 + 20 ))
  # sipp wants more open files than -l; root may raise the limit
  ulimit -n 100000 2>/dev/null || true
  # ... and -l must stay below it, or sipp complains (media sockets) in its error log
  local NOFILE; NOFILE=$(ulimit -n)
  [[ $NOFILE =~ ^[0-9]+$ ]] && (( LIMIT > NOFILE - 200 )) && LIMIT=$(( NOFILE - 200 ))
  QUIET=$(wait_quiet)
  snapshot_cpu $UAS_PIDS > "$WORK/uas.before"
  snapshot_cpu $SUT > "$WORK/sut.before"
  D_UAS0=$(udp_drops "${M_UAS_PORT:-}"); D_SUT0=$(udp_drops "${M_SUT_PORT:-}")
  read -r U0 Q0 I0 S0 T0 < <(sys_jiffies)
  t0=$(date +%s.%N)

  # exec: $UAC is then the `timeout` process itself, which forwards a
  # TERM from stop_pid to sipp.
  ( cd "$WORK" || exit 2
  exec timeout --kill-after=5 $(( GLOBAL_TO + 10 )) \
    sipp "$@" -t u1 -r "$RATE" -rp 1000 -m "$CALLS" -l "$LIMIT" \
         -recv_timeout "${RECV_TIMEOUT_MS:-5000}" -timeout "${GLOBAL_TO}s" \
         -buff_size 4194304 -nostdin \
         -trace_stat -stf "$WORK/stat.csv" -fd 1 -trace_err -error_file "$WORK/err.log" \
         -trace_rtt -rtt_freq 100 \
         >"$WORK/stdout.log" 2>&1 ) &
  UAC=$!
  # Sample the UAC's own CPU while it runs (last sample before exit; the
  # error is at most one 0.5 s sampling interval, at the end of the run when
  # the UAC is only finishing its last calls).
  UAC_SIPP=""
  UAC_NS=0
  while kill -0 "$UAC" 2>/dev/null; do
    [[ -n $UAC_SIPP ]] || UAC_SIPP=$(with_descendants "$UAC" | while read -r p; do
        [[ $(cat /proc/$p/comm 2>/dev/null) == sipp ]] && echo "$p"; done | head -1)
    if [[ -n $UAC_SIPP ]]; then
      v=$(cpu_ns "$UAC_SIPP"); (( v > 0 )) && UAC_NS=$v
      d=$(udp_drops "${M_UAC_PORT:-}"); (( d > D_UAC )) && D_UAC=$d
    fi
    sleep 0.5
  done
  wait "$UAC"; SIPP_RC=$?
  UAC=""

  t1=$(date +%s.%N)
  read -r U1 Q1 I1 S1 T1 < <(sys_jiffies)
  D_UAS1=$(udp_drops "${M_UAS_PORT:-}"); D_SUT1=$(udp_drops "${M_SUT_PORT:-}")
  snapshot_cpu $UAS_PIDS > "$WORK/uas.after"
  snapshot_cpu $SUT > "$WORK/sut.after"
  WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')

  ST=$(sipp_final_stats "$WORK/stat.csv")
  # sipp's averages in the stat file are truncated to whole ms; the per-call
  # samples (-trace_rtt, 1 ms ticks) give an unbiased mean instead.
  RTT=$(rtt_means "$WORK"/*_rtt.csv)
  [[ -n $RTT ]] && ST=$(sed -E 's/rt1_ms=[^ ]+ rt2_ms=[^ ]+//' <<<"$ST")" $RTT"
  UASD=$(cpu_delta "$WORK/uas.before" "$WORK/uas.after" "$WALL")
  SUTD=$(cpu_delta "$WORK/sut.before" "$WORK/sut.after" "$WALL")

  RES=$(awk -v rate="$RATE" -v calls="$CALLS" -v wall="$WALL" -v rc="$SIPP_RC" \
            -v uacns="$UAC_NS" -v st="$ST" -v uasd="$UASD" -v sutd="$SUTD" -v direct="$DIRECT" \
            -v u0="$U0" -v u1="$U1" -v q0="$Q0" -v q1="$Q1" -v s0="$S0" -v s1="$S1" \
            -v t0="$T0" -v t1="$T1" -v quiet="$QUIET" 'BEGIN{
    s = st " " uasd; n = split(s, a, " "); for (i=1;i<=n;i++){ split(a[i],p,"="); v[p[1]]=p[2] }
    n = split(sutd, a, " "); for (i=1;i<=n;i++){ split(a[i],p,"="); u[p[1]]=p[2] }
    inc = calls - v["success"] - v["failed"]; if (inc < 0) inc = 0
    # calls were created over (elapsed - mean call length); the tail after the
    # last creation is roughly one call length.
    span = v["elapsed_s"] - v["call_ms"]/1000; if (span <= 0) span = wall
    ach = v["success"] / span
    rp = (v["success"] > 0) ? 100*v["retrans"]/v["success"] : 100
    dj = t1 - t0; if (dj <= 0) dj = 1
    printf "rate=%d calls=%d success=%d failed=%d incomplete=%d retrans=%d retrans_pct=%.3f ",
      rate, calls, v["success"], v["failed"], inc, v["retrans"], rp
    printf "achieved_rate=%.1f rt1_ms=%.3f rt2_ms=%.3f call_ms=%.3f elapsed_s=%.3f wall_s=%.3f ",
      ach, v["rt1_ms"], v["rt2_ms"], v["call_ms"], v["elapsed_s"], wall
    printf "dead_msgs=%d fail_maxretrans=%d fail_unexpected=%d fail_recvtimeout=%d sipp_rc=%d ",
      v["dead_msgs"], v["fail_maxretrans"], v["fail_unexpected"], v["fail_recvtimeout"], rc
    printf "uac_cpu_pct=%.1f uas_cpu_pct=%.1f ", 100*uacns/1e9/wall, v["max_pct"]
    if (direct) printf "sut_cpu_s=0 sut_cpu_pct=0 sut_max_proc_pct=0 sut_max_proc=none sut_us_per_call=0 "
    else printf "sut_cpu_s=%.3f sut_cpu_pct=%.1f sut_max_proc_pct=%.1f sut_max_proc=%s sut_us_per_call=%.1f sut_sys_share=%s ",
      u["total_s"], 100*u["total_s"]/wall, u["max_pct"], u["max_comm"],
      (v["success"] > 0 ? 1e6*u["total_s"]/v["success"] : 0), u["sys_share"]
    # other_pct: CPU charged to processes that are not the UAC, UAS or SUT
    # (other jobs on this shared machine, plus the polling of this script).
    ours = 100*uacns/1e9/wall + v["max_pct"] + (direct ? 0 : 100*u["total_s"]/wall)
    other = 200*(u1-u0)/dj - ours; if (other < 0) other = 0
    printf "sys_busy_pct=%.1f softirq_pct=%.1f other_pct=%.1f steal_pct=%.1f %s ",
      200*((u1-u0)+(q1-q0))/dj, 200*(q1-q0)/dj, other, 200*(s1-s0)/dj, quiet
  }')
  RES="$RES drops_uac=$D_UAC drops_uas=$(( D_UAS1 - D_UAS0 )) drops_sut=$(( D_SUT1 - D_SUT0 ))"
}

# print_report TITLE -> human-readable summary of $RES, then the RESULT line
print_report() {
  echo "$1"
  echo "  success=$(kv success "$RES") failed=$(kv failed "$RES") incomplete=$(kv incomplete "$RES")" \
       "retrans=$(kv retrans "$RES") ($(kv retrans_pct "$RES")% of calls)"
  echo "  achieved=$(kv achieved_rate "$RES")/s  avg rtd1=$(kv rt1_ms "$RES") ms  rtd2=$(kv rt2_ms "$RES") ms"
  echo "  CPU % of one core: uac=$(kv uac_cpu_pct "$RES") uas=$(kv uas_cpu_pct "$RES")" \
       "sut=$(kv sut_cpu_pct "$RES") (busiest $(kv sut_max_proc "$RES")=$(kv sut_max_proc_pct "$RES"))" \
       "machine=$(kv sys_busy_pct "$RES")/200 (softirq $(kv softirq_pct "$RES"), other jobs $(kv other_pct "$RES"))" \
       "steal=$(kv steal_pct "$RES")"
  echo "  UDP datagrams dropped by the kernel (receive buffer full): uac=$(kv drops_uac "$RES")" \
       "uas=$(kv drops_uas "$RES") sut=$(kv drops_sut "$RES")"
  [[ $(kv sut_cpu_s "$RES") == 0 ]] ||
    echo "  SUT CPU per call: $(kv sut_us_per_call "$RES") us ($(kv sut_sys_share "$RES")% of it in the kernel)"
  if [[ -s $WORK/err.log ]]; then
    echo "  first sipp errors:"; head -5 "$WORK/err.log" | sed 's/^/    /'; echo
  fi
  echo "RESULT $RES"
}

# wait_udp_port PORT [SECONDS] -> 0 once something listens on udp PORT
wait_udp_port() {
  local i
  for i in $(seq $(( ${2:-10} * 10 ))); do
    [[ -n $(pids_on_udp_port "$1") ]] && return 0
    sleep 0.1
  done
  return 1
}

# run_ladder STEP_FN LABEL
#   Calls "STEP_FN RATE" at START_RATE, then doubles the rate (up to
#   MAX_RATE) until a step fails, then bisects REFINE times between the last
#   pass and the first fail (to multiples of 50). RATES="r1 r2 ..." replaces
#   the doubling by an explicit ascending list.
#   A step passes when: failed=0, no call left incomplete, retransmissions
#   < MAX_RETRANS_PCT % of calls, achieved rate >= MIN_RATE_RATIO * target.
#   Prints one STEP line per run and a final "MAX label=... max_rate=..." line
#   with the RESULT fields of the best passing step.
#   STOP_CHECK (optional command): run before each step (LAST_STEP_OK tells
#   whether the previous step passed); if it fails the ladder stops. Call
#   run_ladder in the caller's shell (not in $(...)) when STOP_CHECK must
#   change the caller's state (run.sh replaces its responder there).
START_RATE=${START_RATE:-500}
MAX_RATE=${MAX_RATE:-32000}
REFINE=${REFINE:-2}
MAX_RETRANS_PCT=${MAX_RETRANS_PCT:-1}
MIN_RATE_RATIO=${MIN_RATE_RATIO:-0.95}
STEP_PAUSE=${STEP_PAUSE:-3}

step_passes() {  # RESULT-line -> exit 0 if the step passes
  awk -v r="$1" -v maxrt="$MAX_RETRANS_PCT" -v minratio="$MIN_RATE_RATIO" 'BEGIN{
    n = split(r, kvs, " "); for (i=1;i<=n;i++) { split(kvs[i], p, "="); v[p[1]]=p[2] }
    ok = (v["failed"]==0 && v["incomplete"]==0 && v["success"]>0 &&
          v["retrans_pct"] < maxrt && v["achieved_rate"] >= minratio*v["rate"])
    exit(ok ? 0 : 1) }'
}

ladder_rates() {
  if [[ -n ${RATES:-} ]]; then echo $RATES; return; fi
  local r=$START_RATE out=""
  while (( r <= MAX_RATE )); do out="$out $r"; r=$(( r * 2 )); done
  echo $out
}

# one_step FN RATE -> sets STEP_RES (RESULT line body); returns 0 pass, 1 fail,
# 2 not run (STOP_CHECK said stop)
one_step() {
  local res
  if [[ -n ${STOP_CHECK:-} ]] && ! $STOP_CHECK; then
    STEP_RES="rate=$2 not_run=1"; return 2
  fi
  res=$("$1" "$2" | grep '^RESULT ' | tail -1)
  [[ -n $res ]] || res="RESULT rate=$2 failed=-1 incomplete=-1 success=0"
  STEP_RES=${res#RESULT }
  step_passes "$res"
}

run_ladder() {
  local fn=$1 label=$2 rate best="" lo=0 hi=0 i first=1 rc stopped=0
  LAST_STEP_OK=1
  for rate in $(ladder_rates); do
    (( first )) || sleep "$STEP_PAUSE"   # let the UAS timewait drain (fixed pause, not sync)
    first=0
    one_step "$fn" "$rate"; rc=$?
    if (( rc == 0 )); then LAST_STEP_OK=1; ladder_note pass; (( rate > lo )) && { best=$STEP_RES; lo=$rate; }
    elif (( rc == 1 )); then LAST_STEP_OK=0; ladder_note FAIL; hi=$rate; break
    else ladder_note STOP; stopped=1; break; fi
  done
  if (( hi > 0 && lo > 0 && ! stopped )); then
    for (( i = 0; i < REFINE; i++ )); do
      rate=$(( (lo + hi) / 2 / 50 * 50 ))
      (( rate > lo && rate < hi )) || break
      sleep "$STEP_PAUSE"
      one_step "$fn" "$rate"; rc=$?
      if (( rc == 0 )); then LAST_STEP_OK=1; ladder_note pass; (( rate > lo )) && { best=$STEP_RES; lo=$rate; }
      elif (( rc == 1 )); then LAST_STEP_OK=0; ladder_note FAIL; hi=$rate
      else ladder_note STOP; break; fi
    done
  fi
  if [[ -n $best ]]; then
    echo "MAX label=$label max_rate=$lo first_fail=$hi $best"
  else
    echo "MAX label=$label max_rate=0 first_fail=$hi"
  fi
}

# ladder_note pass|FAIL|STOP: the STEP line (stdout), and with LADDER_PROGRESS=1 a
# short progress line on stderr
ladder_note() {
  echo "STEP $1 $STEP_RES"
  [[ ${LADDER_PROGRESS:-0} == 1 ]] || return 0
  printf '   [%s] %-4s %s\n' "$(date +%T)" "$1" "$(awk -v r=" $STEP_RES " 'BEGIN{
    n = split(r, a, " "); for (i=1;i<=n;i++) { split(a[i], p, "="); v[p[1]]=p[2] }
    if (v["not_run"]) { print "rate=" v["rate"] " not run"; exit }
    printf "rate=%s ok=%s failed=%s retrans=%s%% achieved=%s/s rtd1=%sms responder %s%% cpu, %s us/call, udp drops %s",
      v["rate"], v["success"], v["failed"], v["retrans_pct"], v["achieved_rate"], v["rt1_ms"],
      v["sut_cpu_pct"], v["sut_us_per_call"], v["drops_sut"] }')" >&2
}

# free_udp_port -> a UDP port nobody has bound on this machine (random in
# 20000-59999; racy by nature, the caller checks the bind by polling).
free_udp_port() {
  local p i
  for i in $(seq 200); do
    p=$(( 20000 + (RANDOM * 32768 + RANDOM) % 40000 ))
    [[ -z $(ss -H -uan "sport = :$p" 2>/dev/null) ]] && { echo "$p"; return 0; }
  done
  die "no free UDP port found"
}
