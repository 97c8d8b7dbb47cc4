#!/bin/sh
# Runs the busted suite once per Lua flavour against build/<flavour> (make builds them).
# Default: every flavour of 5.1 5.2 5.3 5.4 luajit whose interpreter is installed.
# Prints each flavour's wall time; exits non-zero if any flavour fails.
set -u
cd "$(dirname "$0")/.."
lua_of() { case "$1" in luajit) echo luajit ;; *) echo "lua$1" ;; esac; }
if [ $# -eq 0 ]; then
  for f in 5.1 5.2 5.3 5.4 luajit; do
    command -v "$(lua_of "$f")" >/dev/null 2>&1 && set -- "$@" "$f"
  done
fi
status=0
summary=""
for f in "$@"; do
  lua=$(lua_of "$f")
  echo "== busted under $lua"
  start=$(date +%s)
  result=passed
  LUASIP_FLAVOUR="$f" LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/$f/?.so;;" \
    "$lua" /usr/bin/busted -o utfTerminal spec || { status=1; result=FAILED; }
  summary="$summary
== $lua: $result in $(( $(date +%s) - start )) s"
done
echo "$summary"
exit $status
