#!/usr/bin/env python3
"""A misbehaving ng peer, for the client's robustness only (the real rtpengine is tested
in spec/rtpengine_spec.lua): binds 127.0.0.1 on an OS-chosen port, prints it, and answers
each datagram "COOKIE <bencode>" with malformed replies first (truncated bencode, a
list, a foreign cookie, no space), then the right pong.  Exits after MAX_S seconds.
Usage: ng_garbage.py [MAX_S]"""
import socket
import sys
import time

max_s = float(sys.argv[1]) if len(sys.argv) > 1 else 20
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1], flush=True)
s.settimeout(0.2)
end = time.time() + max_s
while time.time() < end:
    try:
        data, peer = s.recvfrom(65535)
    except socket.timeout:
        continue
    cookie = data.split(b" ", 1)[0]
    for bad in (cookie + b" d6:result4:po", cookie + b" l4:ponge", b"other d6:result4:ponge",
                cookie, cookie + b" d6:resulti99999999999999999999ee",
                cookie + b" " + b"l" * 200 + b"e" * 200, b"\xff\x00garbage"):
        s.sendto(bad, peer)
    s.sendto(cookie + b" d6:result4:ponge", peer)
