#!/bin/sh
# examples/deploy/run.sh — a multi-host luasip deployment in one network namespace of
# its own (README "Scaling out"): Kamailio's dispatcher on 10.0.0.1:5060 in front of two
# luasip hosts (examples/workers.lua as 2 workers each, behind luasip's own front) on
# 10.0.0.2 and 10.0.0.3, their state in Redis on 10.0.0.4; phones use 10.0.0.5.  Each
# "host" is an address of its own on the namespace's loopback.  As root:
#   unshare -n sh examples/deploy/run.sh          runs it until ^C
#   unshare -n sh examples/deploy/run.sh test     runs examples/deploy/phones.lua against it
#                                                 (spec/deploy_spec.lua), then stops
# Env: LUA (lua5.4), LUASIP_FLAVOUR (5.4).  Everything stops when this script ends.
set -eu
cd "$(dirname "$0")/../.."
LUA=${LUA:-lua5.4}
F=${LUASIP_FLAVOUR:-5.4}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$F/?.so;;"
if ip -o addr show 2>/dev/null | grep -qv ' lo '; then
  echo "run.sh: run it in a network namespace of its own: unshare -n sh $0" >&2
  exit 2
fi
ip link set lo up
for a in 1 2 3 4 5; do ip addr add "10.0.0.$a/32" dev lo; done
W=$(mktemp -d)
PIDS=""
stop() {
  for p in $PIDS; do kill "$p" 2>/dev/null || true; done
  for p in $PIDS; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap stop EXIT
trap 'exit 130' INT TERM
# wait_for FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN (10 s at most)
wait_for() {
  i=0
  until [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ]; do
    i=$((i + 1)); [ $i -le 100 ] || { echo "run.sh: no '$2' in $1" >&2; cat "$1" >&2; exit 1; }
    sleep 0.1
  done
}
redis-server --bind 10.0.0.4 --port 6379 --protected-mode no --save "" --appendonly no --dir "$W" >"$W/redis.log" 2>&1 &
PIDS="$PIDS $!"
wait_for "$W/redis.log" "Ready to accept" 1
for h in 2 3; do
  WORKERS=2 REDIS=10.0.0.4:6379 "$LUA" examples/workers.lua "10.0.0.$h:5060" 2>"$W/host$h.log" &
  eval "HOST$h=$!"
  PIDS="$PIDS $!"
done
wait_for "$W/host2.log" "ready$" 2
wait_for "$W/host3.log" "ready$" 2
printf '1 sip:10.0.0.2:5060\n1 sip:10.0.0.3:5060\n' >"$W/dispatcher.list"
sed -e "s|DISPATCHER_LIST|$W/dispatcher.list|" -e "s|FRONT_ADDR|10.0.0.1|g" \
  examples/deploy/kamailio.cfg >"$W/kamailio.cfg"
kamailio -f "$W/kamailio.cfg" -DD -E -P "$W/kamailio.pid" -Y "$W" >"$W/kamailio.log" 2>&1 &
PIDS="$PIDS $!"
echo "run.sh: Kamailio on 10.0.0.1:5060, luasip hosts 10.0.0.2 (pid $HOST2) and 10.0.0.3 (pid $HOST3), Redis 10.0.0.4:6379"
if [ "${1:-}" = test ]; then
  "$LUA" examples/deploy/phones.lua 10.0.0.1:5060 10.0.0.5 "$HOST2"
else
  wait
fi
