#!/bin/sh
# Runs the busted suite (Lua 5.4) under valgrind memcheck: fails on any memory error and
# on any definitely/indirectly lost block.  Child processes (sipp, example scripts) are
# not traced.  Usage: check-memory.sh [spec files...]
set -u
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/luasip-memcheck.XXXXXX)
trap 'rm -f "$log"' EXIT
[ $# -gt 0 ] || set -- spec
LUASIP_FLAVOUR=5.4 LUASIP_VALGRIND=1 LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/5.4/?.so;;" \
  valgrind --quiet --leak-check=full --show-leak-kinds=definite,indirect \
    --errors-for-leak-kinds=definite,indirect --error-exitcode=3 --num-callers=40 \
    --suppressions=scripts/sofia-tls.supp \
    --log-file="$log" \
    lua5.4 /usr/bin/busted -o utfTerminal "$@"
rc=$?
if [ -s "$log" ]; then
  echo "== valgrind report"
  cat "$log"
fi
if [ $rc -eq 3 ]; then
  echo "check-memory: valgrind found errors or leaks"
elif [ $rc -eq 0 ]; then
  echo "check-memory: clean (no memory errors, no leaks)"
fi
exit $rc
