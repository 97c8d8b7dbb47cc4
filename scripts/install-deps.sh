#!/bin/sh
# Installs the Debian 12 packages luasip needs to build, test and benchmark.
# Idempotent: does nothing when every package is present.  Usage: install-deps.sh [extra...]
set -eu

PKGS="gcc make pkg-config libsofia-sip-ua-dev libssl-dev openssl libjemalloc2
lua5.1 liblua5.1-0-dev lua5.2 liblua5.2-dev lua5.3 liblua5.3-dev lua5.4 liblua5.4-dev luajit libluajit-5.1-dev
clang libclang-rt-14-dev dnsmasq-base
lua-busted lua-check luarocks lua-cqueues lua-luv sip-tester valgrind iproute2 util-linux procps python3-minimal redis-server
baresip-core libspandsp-dev libsndfile1-dev libspeexdsp-dev sox nftables
flite prometheus lua-ldoc lua-markdown kamailio rtpengine-daemon
$*"

missing=""
for p in $PKGS; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
    missing="$missing $p"
done
[ -z "$missing" ] && exit 0

echo "install-deps: installing$missing"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
# kamailio, rtpengine-daemon, redis-server and prometheus bring system services; the
# tests, examples and benches start their own on free loopback ports, and a Kamailio
# started by apt would hold 5060 (make run).  Debian's policy-rc.d keeps apt from
# starting them (Docker images already have one that does).
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  trap '$SUDO rm -f "$policy"' EXIT
fi
$SUDO apt-get update -qq
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
