#!/bin/sh
# Runs the busted suite once per Lua flavour (default: 5.4 luajit) against build/<flavour>.
# Exits non-zero if any flavour fails; the last line is busted's summary line.
set -u
cd "$(dirname "$0")/.."
status=0
[ $# -gt 0 ] || set -- 5.4 luajit
for f in "$@"; do
  case "$f" in
    luajit) lua=luajit ;;
    *) lua="lua$f" ;;
  esac
  echo "== busted under $lua"
  LUASIP_FLAVOUR="$f" LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$f/?.so;;" \
    "$lua" /usr/bin/busted -o utfTerminal spec || status=1
done
exit $status
