#!/usr/bin/env python3
"""A raw SIP-over-TLS client for spec/tls_spec.lua: connects to 127.0.0.1:PORT with
Python's ssl module (TLS 1.2 or later, the server certificate checked against CA and
the name HOST), sends one OPTIONS and prints the TLS version and the status line of the
answer.  Usage: tls_options.py PORT CA HOST [max_version]
"""
import socket
import ssl
import sys

port, ca, host = int(sys.argv[1]), sys.argv[2], sys.argv[3]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
if len(sys.argv) > 4:
    ctx.maximum_version = getattr(ssl.TLSVersion, sys.argv[4])
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
tls = ctx.wrap_socket(sock, server_hostname=host)
laddr = tls.getsockname()
msg = ("OPTIONS sips:127.0.0.1:%d SIP/2.0\r\n"
       "Via: SIP/2.0/TLS 127.0.0.1:%d;rport;branch=z9hG4bKpytls1\r\n"
       "From: <sips:py@127.0.0.1>;tag=py1\r\nTo: <sips:luasip@127.0.0.1>\r\n"
       "Call-ID: pytls-1@127.0.0.1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
       "Content-Length: 0\r\n\r\n") % (port, laddr[1])
tls.sendall(msg.encode())
data = b""
while b"\r\n\r\n" not in data:
    chunk = tls.recv(4096)
    if not chunk:
        break
    data += chunk
print(tls.version())
print(data.split(b"\r\n", 1)[0].decode())
tls.close()
