#!/usr/bin/env python3
"""Sends the bytes of a file over TLS (Python's ssl, TLS 1.2 or later, the server
certificate checked against CA and the name HOST) to 127.0.0.1:PORT and prints the head
(status line and headers) of the first final answer, or NONE when none came within 5 s.
For spec/sips_spec.lua: RFC 4475 messages whose Via names TLS.
Usage: tls_send.py PORT CA HOST FILE"""
import socket
import ssl
import sys

port, ca, host, path = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
ctx.minimum_version = ssl.TLSVersion.TLSv1_2
sock = socket.create_connection(("127.0.0.1", port), timeout=5)
tls = ctx.wrap_socket(sock, server_hostname=host)
tls.sendall(open(path, "rb").read())
data, head = b"", "NONE"
try:
    while True:
        chunk = tls.recv(65535)
        if not chunk:
            break
        data += chunk
        while b"\r\n\r\n" in data:
            first, data = data.split(b"\r\n\r\n", 1)
            if not first.startswith(b"SIP/2.0 1"):
                head = first.decode("latin-1")
                raise StopIteration
except (StopIteration, socket.timeout):
    pass
print(head)
tls.close()
