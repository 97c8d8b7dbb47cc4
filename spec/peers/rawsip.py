#!/usr/bin/env python3
"""Sends the bytes of a file as one UDP datagram (or over TCP) to 127.0.0.1:PORT and
prints the status line of the first final reply (the last provisional one when no final
came), or NONE when nothing came within the timeout; with "all", the status line of
every reply up to the first final one, joined by " | "; with "reply", the whole first
final reply (CRLFs kept).
Usage: rawsip.py PORT FILE [udp|tcp] [timeout_s] [all|reply]"""
import socket
import sys

port, path = int(sys.argv[1]), sys.argv[2]
proto = sys.argv[3] if len(sys.argv) > 3 else "udp"
timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 3.0
mode = sys.argv[5] if len(sys.argv) > 5 else ""
data = open(path, "rb").read()
if proto == "tcp":
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    s.sendall(data)
    s.shutdown(socket.SHUT_WR)
    get = lambda: s.recv(65535)
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    s.settimeout(timeout)
    s.sendto(data, ("127.0.0.1", port))
    get = lambda: s.recvfrom(65535)[0]
line, lines, final = "NONE", [], None
try:
    while True:
        reply = get()
        if not reply:
            break
        line = reply.split(b"\r\n")[0].decode("latin-1")
        lines.append(line)
        if not line.startswith("SIP/2.0 1"):
            final = reply.decode("latin-1")
            break
except socket.timeout:
    pass
if mode == "reply":
    sys.stdout.write(final or "NONE")
else:
    print(" | ".join(lines) if mode == "all" and lines else line)
