#!/bin/sh
# with-redis.sh CMD...: runs CMD with a Redis on 127.0.0.1:6379 (make run WORKERS=n).
# When none answers there, starts redis-server on loopback only, without persistence,
# for as long as CMD runs, and stops it afterwards; an existing one is used as it is.
ping() { [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = PONG ]; }
if ping; then exec "$@"; fi
redis-server --bind 127.0.0.1 --port 6379 --save "" --appendonly no --protected-mode yes \
  >/dev/null 2>&1 &
redis=$!
trap 'kill $redis 2>/dev/null; wait $redis 2>/dev/null' EXIT
trap 'exit 130' INT TERM
i=0
until ping; do
  i=$((i + 1))
  if [ $i -gt 50 ] || ! kill -0 $redis 2>/dev/null; then
    echo "with-redis.sh: redis-server did not start on 127.0.0.1:6379" >&2
    exit 1
  fi
  sleep 0.1
done
echo "with-redis.sh: started redis-server on 127.0.0.1:6379 (pid $redis)" >&2
"$@"
