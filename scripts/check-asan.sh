#!/bin/sh
# Runs the busted suite (Lua 5.4) with core.so built under AddressSanitizer and
# UndefinedBehaviorSanitizer (build/asan/): fails on any error either reports, and on
# leaks of memory allocated by core.so (LeakSanitizer).  The interpreter is not
# instrumented: the sanitizer runtime is preloaded into it.  Child processes (sipp,
# example scripts) use the plain build.  Usage: check-asan.sh [spec files...]
set -u
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- spec
asan=$(${CC:-cc} -print-file-name=libasan.so)
ubsan=$(${CC:-cc} -print-file-name=libubsan.so)
if [ ! -e "$asan" ] || [ ! -e "$ubsan" ]; then
  echo "check-asan: the compiler's libasan/libubsan are missing" >&2
  exit 2
fi
log=$(mktemp -d /tmp/luasip-asan.XXXXXX)
trap 'rm -rf "$log"' EXIT
# (a small quarantine: the whole suite in one process grew to 24 GB with the default)
# The interpreter's own blocks are not core.so's business; sofia-sip 1.12.11's TLS
# transport never SSL_free()s a connection (scripts/sofia-tls.supp, README Limits): with
# the fast unwinder those stacks end in libssl/libcrypto, so leaks allocated there are
# suppressed (luasip's own libcrypto use, csrc/digest.c and csrc/tls.c, frees through
# the same library: a leak of it would hide here too; valgrind's check-memory
# suppresses by the sofia call sites instead)
supp="$log/lsan.supp"
printf 'leak:liblua5.4.so\nleak:lua5.4\nleak:libssl.so\nleak:libcrypto.so\n' > "$supp"
# one busted process per spec file: the whole suite in one process under ASan grew past
# 12 GB, and a report then names the file it came from
files=$(for a in "$@"; do if [ -d "$a" ]; then ls "$a"/*_spec.lua; else echo "$a"; fi; done)
rc=0
failed=""
for f in $files; do
  name=$(basename "$f" .lua)
  LUASIP_FLAVOUR=5.4 LUASIP_SANITIZER=1 \
    LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/asan/?.so;;" \
    LD_PRELOAD="$asan $ubsan" \
    ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=3:quarantine_size_mb=16:malloc_context_size=8:log_path=$log/asan.$name" \
    LSAN_OPTIONS="suppressions=$supp:print_suppressions=0" \
    UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=3:log_path=$log/ubsan.$name" \
    lua5.4 /usr/bin/busted -o utfTerminal "$f" >"$log/out" 2>&1
  r=$?
  summary=$(grep -a "success.* / .* failure" "$log/out" | tail -1)
  echo "$f: rc $r; ${summary:-no summary}"
  if [ $r -ne 0 ]; then
    rc=$r
    failed="$failed $f"
    cat "$log/out"
  fi
done
[ -z "$failed" ] || echo "check-asan: failing files:$failed"
reports=$(ls "$log"/asan.* "$log"/ubsan.* 2>/dev/null)
if [ -n "$reports" ]; then
  echo "== sanitizer reports"
  cat $reports
  rc=3
fi
if [ $rc -eq 0 ]; then
  echo "check-asan: clean (no ASan/UBSan errors, no leaks from core.so)"
else
  echo "check-asan: failed (rc $rc)"
fi
exit $rc
