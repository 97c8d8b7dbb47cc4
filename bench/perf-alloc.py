#!/usr/bin/env python3
"""bench/perf-alloc.py: who calls the allocator, from `perf script` output (a perf record
with --call-graph) on stdin. A sample is an allocator sample when its leaf frame is a
malloc/free function of libc (or of a preloaded jemalloc/mimalloc). For those, prints the
share of all samples by (1) the first caller outside the allocator, (2) the first frame
in luasip's core.so (the luasip C function the allocation happens under), (3) the first
named sofia-sip function above the allocator and its sofia wrappers (su_alloc & co)."""
import re
import sys
from collections import Counter

ALLOC = re.compile(r"^(malloc|free|calloc|realloc|cfree|_int_malloc|_int_free|_int_realloc|"
                   r"malloc_consolidate|unlink_chunk|sysmalloc|tcache_|__libc_malloc|__libc_free|"
                   r"__libc_calloc|__libc_realloc|__GI___libc_|_int_free_merge|je_|mi_|_mi_|"
                   r"__malloc|__free|arena_|tcache)")
WRAP = re.compile(r"^(su_alloc|su_zalloc|su_salloc|su_free|su_realloc|su_home_|sub_alloc|"
                  r"su_strdup|su_strndup|su_sprintf|su_vsprintf|msg_header_alloc|su_home_zap|"
                  r"su_home_unref|_su_home_deinit|su_home_deinit|su_home_check_blocks|su_alloc_)")

def frames(block):
    out = []
    for line in block:
        m = re.match(r"\s*([0-9a-f]+)\s+(.*?)\s+\((.*)\)\s*$", line)
        if not m:
            continue
        sym = m.group(2).split("+0x")[0]
        dso = m.group(3).rsplit("/", 1)[-1]
        out.append((sym, dso))
    return out

def main():
    total = 0
    caller, incore, insofia = Counter(), Counter(), Counter()
    alloc = 0
    block = []
    def flush():
        nonlocal total, alloc
        if not block:
            return
        total += 1
        fr = frames(block)
        if fr and ALLOC.match(fr[0][0]) and ("libc" in fr[0][1] or "malloc" in fr[0][1]):
            alloc += 1
            i = 0
            while i < len(fr) and ALLOC.match(fr[i][0]):
                i += 1
            c = fr[i] if i < len(fr) else ("?", "?")
            caller["%s (%s)" % (c[0] if not c[0].startswith("[unknown]") else "?", c[1])] += 1
            core = next((s for s, d in fr[i:] if d == "core.so"), None)
            incore[core or "(no core.so frame)"] += 1
            j = i
            while j < len(fr) and (WRAP.match(fr[j][0]) or fr[j][0].startswith("[unknown]") and
                                   "sofia" in fr[j][1]):
                j += 1
            sof = fr[j] if j < len(fr) else ("?", "?")
            insofia["%s (%s)" % (sof[0], sof[1])] += 1
    for line in sys.stdin:
        if line.strip() == "":
            flush()
            block = []
        else:
            block.append(line.rstrip("\n"))
    flush()
    if total == 0:
        print("no samples")
        return
    pct = lambda n: "%6.2f%%" % (100.0 * n / total)
    print("allocator samples: %s of %d samples" % (pct(alloc), total))
    for title, c in (("first caller outside the allocator", caller),
                     ("first luasip core.so function above the allocation", incore),
                     ("first caller above the allocator and sofia's su_alloc/su_home wrappers",
                      insofia)):
        print("-- by %s:" % title)
        for k, n in c.most_common(15):
            print("   %s  %s" % (pct(n), k))

main()
