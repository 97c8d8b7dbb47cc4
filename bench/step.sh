#!/usr/bin/env bash
# step.sh KIND RESPONDER_PORT RATE DURATION
#
# One fixed-rate run of a sipp UAC against a responder on
# 127.0.0.1:RESPONDER_PORT (luasip's examples/uas.lua, or a sipp UAS for
# the baseline): RATE "calls"/s for DURATION s (RATE*DURATION, sipp -m).
#   KIND=calls    scenarios/uac.xml: INVITE, [100], [180], 200, ACK, BYE, 200
#   KIND=options  scenarios/options-uac.xml: OPTIONS, 200
# The responder is the system under test: its CPU (all processes holding the
# UDP port, plus descendants, or SUT_PIDS) is measured from schedstat
# before/after, so sut_us_per_call is the responder's CPU per call, for
# luasip and for the sipp baseline alike.
#
# Prints a short report and one "RESULT key=value ..." line (lib.sh).
# Env: UAC_PORT (default: a free port), RECV_TIMEOUT_MS (5000), KEEP=1,
#      BENCH_ERRDIR (copy sipp's error log there).
set -u
. "$(dirname "$0")/lib.sh"

(( $# == 4 )) || die "usage: step.sh calls|options|b2bua|proxy|pbx|register RESPONDER_PORT RATE DURATION"
KIND=$1 R_PORT=$2 RATE=$3 DURATION=$4
require_port "$R_PORT"; require_uint "$RATE"; require_uint "$DURATION"
(( RATE > 0 && DURATION > 0 && DURATION <= 600 )) || die "RATE>0, 0<DURATION<=600"
case $KIND in
  calls|b2bua|proxy) SCEN=uac.xml ;;
  options) SCEN=options-uac.xml ;;
  pbx) SCEN=proxy-uac.xml ;;
  register) SCEN=reg-auth.xml ;;
  *) die "KIND must be calls, options, b2bua, proxy, pbx or register" ;;
esac
# run.sh overrides: STEP_SCEN (scenario file in scenarios/), STEP_ARGS (extra sipp
# arguments, e.g. "-rsa 127.0.0.1:PORT" to go through a proxy), STEP_INF (injection
# CSV, KIND register), STEP_SUT_PORT (port whose kernel drops are reported as the SUT's)
SCEN=${STEP_SCEN:-$SCEN}
EXTRA=()
[[ -n ${STEP_ARGS:-} ]] && read -r -a EXTRA <<<"$STEP_ARGS"
[[ -n ${STEP_INF:-} ]] && EXTRA+=(-inf "$STEP_INF")
[[ $KIND != register || -n ${STEP_INF:-} ]] || die "KIND register needs STEP_INF (injection CSV)"
HOST=127.0.0.1
require_loopback "$HOST"
UAC_PORT=${UAC_PORT:-$(free_udp_port)}; require_port "$UAC_PORT"
CALLS=$(( RATE * DURATION ))

SUT=${SUT_PIDS:-$(with_descendants $(pids_on_udp_port "$R_PORT"))}
[[ -n $SUT ]] || die "nothing listening on udp port $R_PORT"

WORK=$(mktemp -d -t luasip-step.XXXXXX)
UAC=""
cleanup() {
  stop_pid "$UAC"
  if [[ ${KEEP:-0} == 1 ]]; then echo "step work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 1' TERM INT

M_UAC_PORT=$UAC_PORT M_SUT_PORT=${STEP_SUT_PORT:-$R_PORT}
# UAS_PIDS is empty: the responder is accounted as the SUT (not twice).
measure_sipp "$RATE" "$CALLS" 0 "" "$SUT" \
  "$HOST:$R_PORT" -sf "$SCEN_DIR/$SCEN" \
  -i "$HOST" -mi "$HOST" -bind_local -p "$UAC_PORT" \
  -default_behaviors all,-abortunexp "${EXTRA[@]}"
print_report "step: $KIND -> $HOST:$R_PORT rate=$RATE/s calls=$CALLS"
# BENCH_ERRDIR: keep sipp's error log of this step (run.sh shows the first
# lines of the first failing step of each row).
if [[ -n ${BENCH_ERRDIR:-} && -s $WORK/err.log ]]; then
  cp "$WORK/err.log" "$BENCH_ERRDIR/err-$RATE.log" 2>/dev/null || true
fi
