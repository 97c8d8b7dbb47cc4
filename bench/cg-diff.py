#!/usr/bin/env python3
"""bench/cg-diff.py N1 FILE1 N2 FILE2 [N1b FILE1b N2b FILE2b]: per-function instructions per
request from two callgrind profiles of the same agent that served N1 and N2 requests
(self cost, from callgrind_annotate; start-up and exit cancel out in the difference).
With a second pair (e.g. the C-only path), also prints the per-function difference
first pair minus second pair: where the extra instructions of the first path go."""
import re
import subprocess
import sys

def annotate(path):
    out = subprocess.run(["callgrind_annotate", "--inclusive=no", "--threshold=100", path],
                         capture_output=True, text=True, check=True).stdout
    costs = {}
    for line in out.splitlines():
        m = re.match(r"\s*([\d,]+)\s+(?:\([\s\d.]+%\)\s+)?(\S.*)$", line)
        if not m or ":" not in m.group(2) or m.group(2).startswith("=>"):
            continue
        name = m.group(2).strip()
        name = re.sub(r"^\S*/", "", name)          # drop directories of file:function
        costs[name] = costs.get(name, 0) + int(m.group(1).replace(",", ""))
    return costs

def per_request(n1, f1, n2, f2):
    a, b = annotate(f1), annotate(f2)
    return {k: (b.get(k, 0) - a.get(k, 0)) / (n2 - n1) for k in set(a) | set(b)}

def show(title, d, n=20):
    total = sum(d.values())
    print("%s: %.0f instructions/request" % (title, total))
    for k, v in sorted(d.items(), key=lambda kv: -kv[1])[:n]:
        print("  %9.0f  %5.1f%%  %s" % (v, 100.0 * v / total if total else 0, k[:110]))

args = sys.argv[1:]
first = per_request(int(args[0]), args[1], int(args[2]), args[3])
show("-- per function (self)", first)
if len(args) >= 8:
    second = per_request(int(args[4]), args[5], int(args[6]), args[7])
    show("-- second path, per function (self)", second, 10)
    diff = {k: first.get(k, 0) - second.get(k, 0) for k in set(first) | set(second)}
    show("-- first minus second, per function", diff)
    by_obj = {}
    for k, v in diff.items():
        obj = re.search(r"\[([^\]]*)\]\s*$", k)
        obj = obj.group(1).rsplit("/", 1)[-1] if obj else "?"
        if "malloc.c:" in k or k.startswith("arena.c:"):
            obj = "libc malloc/free"
        by_obj[obj] = by_obj.get(obj, 0) + v
    show("-- first minus second, per object (libc's malloc.c counted apart)", by_obj, 10)
