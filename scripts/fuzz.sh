#!/bin/sh
# Runs the libFuzzer targets of fuzz/harness/ (built by `make fuzz-build` into
# build/fuzz/) for FUZZ_SECONDS each (default 180) under ASan + UBSan, starting from the
# seeds in the repository (read only: new inputs go to FUZZ_OUT/corpus/<target>, crashes,
# leaks and timeouts to FUZZ_OUT/artifacts/<target>/, the log to FUZZ_OUT/<target>.log;
# FUZZ_OUT defaults to build/fuzz), then prints executions per second and in total for each.  sip_path runs in a network
# namespace whose only interface is loopback (a fuzzed Via or Contact names any host):
# `unshare -n` as root, else `unshare -rn`.  Fails when any target found something or
# could not run.  Usage: fuzz.sh [target...]   (default: sip_path lua_parsers)
set -u
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || set -- sip_path lua_parsers
secs=${FUZZ_SECONDS:-180}
out=${FUZZ_OUT:-build/fuzz}
# sofia-sip's own debug lines would drown libFuzzer's
export TPORT_DEBUG=0 NTA_DEBUG=0 NUA_DEBUG=0 SOFIA_DEBUG=0
export ASAN_OPTIONS="detect_leaks=1:fast_unwind_on_malloc=0:malloc_context_size=20:${ASAN_OPTIONS:-}"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:${UBSAN_OPTIONS:-}"

netns() {
  for u in "unshare -n" "unshare -rn"; do
    if $u sh -c 'ip link set lo up' 2>/dev/null; then
      echo "$u"
      return 0
    fi
  done
  return 1
}

rc=0
summary=""
for t in "$@"; do
  bin=build/fuzz/$t
  case "$t" in
    sip_path) seeds=fuzz/seeds/sip ;;
    *) seeds=fuzz/seeds/parsers ;;
  esac
  if [ ! -x "$bin" ]; then
    echo "fuzz: $bin is missing (make fuzz-build)" >&2
    rc=2
    continue
  fi
  wrap=""
  if [ "$t" = sip_path ]; then
    if ! ns=$(netns); then
      echo "fuzz: sip_path needs a network namespace (unshare -n or -rn) and cannot run" >&2
      rc=2
      summary="$summary$(printf '%-12s not run (no network namespace)' "$t")\n"
      continue
    fi
    wrap="$ns sh -c 'ip link set lo up && exec \"\$0\" \"\$@\"'"
  fi
  mkdir -p "$out/corpus/$t" "$out/artifacts/$t"
  log=$out/$t.log
  echo "== fuzz $t: ${secs} s (log $log)"
  eval timeout -s KILL $((secs + 120)) nice $wrap "$bin" -max_total_time="$secs" \
    -max_len=4096 -timeout=10 -rss_limit_mb=3072 -print_final_stats=1 \
    -artifact_prefix="$out/artifacts/$t/" "$out/corpus/$t" "$seeds" >"$log" 2>&1
  r=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -a -o 'cov: [0-9]* ft: [0-9]*' "$log" | tail -1)
  if [ $r -ne 0 ]; then
    rc=1
    echo "== fuzz $t failed (rc $r):"
    grep -v '^#[0-9]' "$log" | tail -60
    summary="$summary$(printf '%-12s FAILED (rc %s), %s execs, %s exec/s; see %s' \
      "$t" "$r" "${execs:-?}" "${speed:-?}" "$log")\n"
  else
    summary="$summary$(printf '%-12s ok: %s execs in %s s, %s exec/s, %s' \
      "$t" "${execs:-?}" "$secs" "${speed:-?}" "$cov")\n"
  fi
done
printf "== fuzz summary\n$summary"
[ $rc -eq 0 ] && echo "fuzz: clean (no crash, sanitizer report, leak or timeout)"
exit $rc
