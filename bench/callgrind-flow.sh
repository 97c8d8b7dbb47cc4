#!/usr/bin/env bash
# bench/callgrind-flow.sh proxy|register|uas|b2bua [INTERP...]  — instructions per call
# (proxy, uas, b2bua) or per REGISTER flow (register) of the measured process of a
# `make bench` row, under callgrind.
#
#   proxy     sipp scenarios/uac.xml -rsa -> bench/proxy.lua -> sipp scenarios/uas.xml:
#             INVITE, 100/180/200, ACK, BYE, 200 through the record-routing proxy
#   register  sipp scenarios/reg-auth.xml -> bench/registrar.lua: REGISTER, 401,
#             REGISTER + Authorization, 200 (users u<N>/pw<N>)
#   uas       sipp scenarios/uac.xml -> examples/uas.lua (UAS_QUIET=1): INVITE, 100, 180,
#             200 with an SDP answer, ACK, BYE, 200
#   b2bua     sipp scenarios/uac.xml -> examples/b2bua.lua (its log discarded) -> sipp
#             scenarios/uas.xml: the same call on each leg, the B2BUA in the middle
# The responder runs twice under valgrind --tool=callgrind, for N1 and N2 calls at CG_RATE/s
# (fresh process each, stopped by SIGTERM: sip.run() returns and valgrind writes its
# profile), so start-up and exit cancel out: Ir per call = (Ir(N2) - Ir(N1)) / (N2 - N1).
# The transactions of every call end by the same rule in both runs (at exit, or by their
# timers for those older than 32 s), so the figure includes their destruction.
# CG_FUNCS=1 (default) adds the instructions per call by function (bench/cg-diff.py).
# A row with failed calls is marked INVALID (they do less work): lower CG_RATE on a loaded
# machine.  Env: N1 (100) N2 (400) CG_RATE (30), KEEP=1 keeps the callgrind files,
# CG_SCRIPT=file.lua runs that responder instead (same arguments: host:port).  Loopback only,
# every process bounded by `timeout` and stopped by PID.
if [ -z "${BASH_VERSION:-}" ]; then exec bash "$0" "$@"; fi
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
. "$HERE/lib.sh"
HOST=127.0.0.1
require_loopback "$HOST"
KIND=${1:-}; shift || true
[[ $KIND == proxy || $KIND == register || $KIND == uas || $KIND == b2bua ]] ||
  die "usage: callgrind-flow.sh proxy|register|uas|b2bua [INTERP...]"
N1=${N1:-100} N2=${N2:-400} CG_RATE=${CG_RATE:-30}
for v in "$N1" "$N2" "$CG_RATE"; do require_uint "$v"; done
(( N2 > N1 )) || die "N2 must be > N1"
INTERPS=${*:-lua5.4 luajit}
command -v valgrind >/dev/null || die "valgrind not found"
command -v sipp >/dev/null || die "sipp not found"
WORK=$(mktemp -d -t luasip-cgflow.XXXXXX)
RPID="" DPID=""
cleanup() {
  stop_pid "$DPID"; stop_pid "$RPID"
  if [[ ${KEEP:-0} == 1 ]]; then echo "work dir: $WORK" >&2; else rm -rf "$WORK"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

flavour() { case $1 in lua5.4) echo 5.4 ;; luajit) echo luajit ;; lua5.3) echo 5.3 ;; lua5.1) echo 5.1 ;; *) die "unknown interpreter $1" ;; esac; }
ir_total() { grep -m1 '^totals:' "$1" | awk '{print $2}'; }

if [[ $KIND == register ]]; then
  { echo SEQUENTIAL
    awk -v n="$N2" 'BEGIN { for (i = 0; i < n; i++)
      printf "u%d;pw%d;[authentication username=u%d password=pw%d]\n", i, i, i, i }'
  } >"$WORK/users.csv"
fi

# run INTERP N OUT: one responder under callgrind serving N calls; prints the sipp status
run() {
  local interp=$1 n=$2 out=$3 port dport script args sargs st i
  port=$(free_udp_port)
  script=bench/proxy.lua; [[ $KIND == register ]] && script=bench/registrar.lua
  [[ $KIND == uas ]] && script=examples/uas.lua
  [[ $KIND == b2bua ]] && script=examples/b2bua.lua
  script=${CG_SCRIPT:-$script}
  sargs=("$HOST:$port")
  if [[ $KIND == proxy || $KIND == b2bua ]]; then
    dport=$(free_udp_port)
    [[ $KIND == b2bua ]] && sargs+=("$HOST:$dport")
  fi
  ( cd "$ROOT" && exec timeout --kill-after=5 900 env LUA_PATH="lua/?.lua;lua/?/init.lua;;" UAS_QUIET=1 \
      LUA_CPATH="build/$(flavour "$interp")/?.so;;" valgrind --tool=callgrind \
      --callgrind-out-file="$out" --dump-instr=no "$interp" "$script" "${sargs[@]}" \
      >>"$WORK/responder.log" 2>&1 ) &
  RPID=$!
  wait_udp_port "$port" 60 || die "the responder did not bind $HOST:$port (see $WORK/responder.log)"
  if [[ $KIND == proxy || $KIND == b2bua ]]; then
    ( cd "$WORK" && exec timeout --kill-after=5 900 sipp -sf "$SCEN_DIR/uas.xml" -i "$HOST" \
        -mi "$HOST" -bind_local -p "$dport" -t u1 -nostdin >>"$WORK/down.log" 2>&1 ) &
    DPID=$!
    wait_udp_port "$dport" 10 || die "the downstream UAS did not bind"
    args=("$HOST:$dport" -sf "$SCEN_DIR/uac.xml" -rsa "$HOST:$port")
    [[ $KIND == b2bua ]] && args=("$HOST:$port" -sf "$SCEN_DIR/uac.xml")
  elif [[ $KIND == uas ]]; then
    args=("$HOST:$port" -sf "$SCEN_DIR/uac.xml")
  else
    args=("$HOST:$port" -sf "$SCEN_DIR/reg-auth.xml" -inf "$WORK/users.csv")
  fi
  ( cd "$WORK" && timeout 600 sipp "${args[@]}" -i "$HOST" -mi "$HOST" -bind_local \
      -p "$(free_udp_port)" -t u1 -m "$n" -r "$CG_RATE" -nostdin -recv_timeout 30000 \
      >/dev/null 2>&1 ); st=$?
  stop_pid "$DPID"; DPID=""
  kill -TERM "$RPID" 2>/dev/null
  for i in $(seq 600); do kill -0 "$RPID" 2>/dev/null || break; sleep 0.1; done
  wait "$RPID" 2>/dev/null; RPID=""
  echo "$st"
}

printf '%-7s %-9s %12s %12s %12s\n' interp kind "Ir(N1=$N1)" "Ir(N2=$N2)" "Ir/call"
for I in $INTERPS; do
  irs=() note=""
  for N in "$N1" "$N2"; do
    OUT=$WORK/cg-$I-$KIND-$N.out
    st=$(run "$I" "$N" "$OUT")
    # failed calls (a loaded machine slows the process under valgrind too much) do less
    # work: such a figure is not comparable
    [[ $st == 0 ]] || note="$note  INVALID: sipp exit status $st at N=$N (failed calls)"
    irs+=("$(ir_total "$OUT")")
  done
  printf '%-7s %-9s %12s %12s %12s%s\n' "$I" "$KIND" "${irs[0]}" "${irs[1]}" \
    "$(awk -v a="${irs[0]}" -v b="${irs[1]}" -v n1="$N1" -v n2="$N2" 'BEGIN{printf "%.0f", (b-a)/(n2-n1)}')" "$note"
  if [[ ${CG_FUNCS:-1} == 1 ]]; then
    python3 "$HERE/cg-diff.py" "$N1" "$WORK/cg-$I-$KIND-$N1.out" "$N2" "$WORK/cg-$I-$KIND-$N2.out" \
      | sed 's/^/  /'
  fi
done
