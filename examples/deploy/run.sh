#!/bin/sh
# examples/deploy/run.sh — a several-host luasip deployment in network namespaces of its
# own (README "Scaling out"): five namespaces joined by veth pairs to a bridge in a sixth,
# on the private 10.77.0.0/24, which exists only inside them (nothing is routed out):
#   front  10.77.0.1  Kamailio's dispatcher on :5060 (examples/deploy/kamailio.cfg), phones
#   a, b   10.77.0.2, 10.77.0.3  examples/pbx.lua as 2 workers (sip.cluster) on :5060
#   redis  10.77.0.4  redis-server :6379 (append-only file: a restart keeps the state)
# As root:
#   sh examples/deploy/run.sh         runs it until ^C
#   sh examples/deploy/run.sh test    runs examples/deploy/phones.lua in `front`, then stops
#                                     (spec/deploy_spec.lua)
#   sh examples/deploy/run.sh clean   removes what a killed run left (namespaces luasip-dep-*;
#                                     with LUASIP_DEPLOY_NS=name: name-* only)
# Env: LUA (lua5.4), LUASIP_FLAVOUR (5.4).  Everything stops when this script ends.
# phones.lua calls back `run.sh redis-stop|redis-start|kill-a` (with LUASIP_DEPLOY_NS and
# LUASIP_DEPLOY_DIR set).
set -eu
cd "$(dirname "$0")/../.."
LUA=${LUA:-lua5.4}
F=${LUASIP_FLAVOUR:-5.4}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$F/?.so;;"
NS=${LUASIP_DEPLOY_NS:-luasip-dep-$$}
ROLES="front a b redis"

# ns_stop NS: SIGKILL to every process in namespace NS (all started by this script)
ns_stop() {
  for p in $(ip netns pids "$1" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
}
redis_start() {
  ip netns exec "$NS-redis" redis-server --bind 10.77.0.4 --port 6379 --protected-mode no \
    --save "" --appendonly yes --appendfsync always --dir "$W" >>"$W/redis.log" 2>&1 &
}

case "${1:-}" in
  clean)                            # $LUASIP_DEPLOY_NS-*, or every luasip-dep-*
    for n in $(ip netns list | awk -v p="${LUASIP_DEPLOY_NS:-luasip-dep}-" \
                 'index($1, p) == 1 { print $1 }'); do
      ns_stop "$n"
      ip netns del "$n"
    done
    exit 0 ;;
  redis-stop) ns_stop "$NS-redis"; exit 0 ;;
  redis-start) W=$LUASIP_DEPLOY_DIR; redis_start; exit 0 ;;
  kill-a) ns_stop "$NS-a"; date +%s.%N; exit 0 ;;    # prints when (Unix seconds)
esac

W=$(mktemp -d)
stop() {
  trap - EXIT INT TERM
  for r in $ROLES br; do ns_stop "$NS-$r"; done
  for r in $ROLES br; do ip netns del "$NS-$r" 2>/dev/null || true; done
  rm -rf "$W"
}
trap stop EXIT
trap 'exit 130' INT TERM
ip netns add "$NS-br"
ip -n "$NS-br" link add br0 type bridge
ip -n "$NS-br" link set br0 up
i=1
for r in $ROLES; do
  ip netns add "$NS-$r"
  ip -n "$NS-br" link add "p-$r" type veth peer name eth0 netns "$NS-$r"
  ip -n "$NS-br" link set "p-$r" master br0 up
  ip -n "$NS-$r" addr add "10.77.0.$i/24" dev eth0
  ip -n "$NS-$r" link set eth0 up
  ip -n "$NS-$r" link set lo up
  i=$((i + 1))
done

# wait_for FILE PATTERN COUNT: until FILE has COUNT lines matching PATTERN (15 s at most)
wait_for() {
  i=0
  until [ "$(grep -c "$2" "$1" 2>/dev/null || true)" -ge "$3" ]; do
    i=$((i + 1)); [ $i -le 150 ] || { echo "run.sh: no '$2' in $1" >&2; cat "$1" >&2; exit 1; }
    sleep 0.1
  done
}
redis_start
wait_for "$W/redis.log" "Ready to accept" 1
for h in a b; do
  addr=10.77.0.$([ $h = a ] && echo 2 || echo 3)
  ip netns exec "$NS-$h" env PBX_WORKERS=2 PBX_REDIS=10.77.0.4:6379 PBX_DOMAIN=pbx.test \
    PBX_FLOOD_RATE=100000 IVR_RECORDINGS="$W/rec-$h" "$LUA" examples/pbx.lua "$addr:5060" \
    >"$W/host-$h.log" 2>&1 &
done
wait_for "$W/host-a.log" "behind" 2
wait_for "$W/host-b.log" "behind" 2
printf '1 sip:10.77.0.2:5060\n1 sip:10.77.0.3:5060\n' >"$W/dispatcher.list"
sed -e "s|DISPATCHER_LIST|$W/dispatcher.list|" -e "s|FRONT_ADDR|10.77.0.1|g" \
  examples/deploy/kamailio.cfg >"$W/kamailio.cfg"
ip netns exec "$NS-front" kamailio -f "$W/kamailio.cfg" -DD -E -P "$W/kamailio.pid" -Y "$W" \
  >"$W/kamailio.log" 2>&1 &
echo "run.sh: namespaces $NS-*: Kamailio 10.77.0.1:5060, luasip hosts 10.77.0.2 and" \
  "10.77.0.3 (2 workers each, domain pbx.test), Redis 10.77.0.4:6379"
if [ "${1:-}" = test ]; then
  rc=0
  LUASIP_DEPLOY_NS=$NS LUASIP_DEPLOY_DIR=$W ip netns exec "$NS-front" \
    "$LUA" examples/deploy/phones.lua 10.77.0.1:5060 10.77.0.1 || rc=$?
  grep -h "dispatcher: host" "$W/kamailio.log" >&2 || true
  [ $rc -eq 0 ] || tail -n 20 "$W"/*.log >&2
  exit $rc
fi
wait
