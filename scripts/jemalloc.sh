#!/bin/sh
# Prints the path of Debian's libjemalloc2 (for LD_PRELOAD); fails when it is missing.
# README: Memory allocator.
for f in /usr/lib/*-linux-gnu*/libjemalloc.so.2 /usr/lib/libjemalloc.so.2; do
  [ -f "$f" ] && { echo "$f"; exit 0; }
done
exit 1
