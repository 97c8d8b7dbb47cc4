#!/usr/bin/env python3
"""A phone that keeps one socket (its flow): sends the REGISTER in FILE to HOST:PORT over
udp, tcp or tls ($LPORT in it becomes the socket's own port), prints what came back,
pings with a double CRLF (tcp, tls), then answers the first request arriving on that same
socket.  (tls: the server's certificate is not checked; the phone has none.)
Output lines:  REG <status line> / VIA <value> / REQUIRE <value> / PONG | NOPONG /
GOT <request line> / RR <value> / ANSWERED | NOREQUEST.
Usage: flowpeer.py HOST PORT FILE udp|tcp|tls [answer_status=486] [timeout_s=10]"""
import socket
import ssl
import sys
import time

host, port, path, proto = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
status = sys.argv[5] if len(sys.argv) > 5 else "486"
timeout = float(sys.argv[6]) if len(sys.argv) > 6 else 10.0
family = socket.AF_INET6 if ":" in host else socket.AF_INET
if proto == "tls":
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=timeout))
    proto = "tcp"               # a stream from here on
elif proto == "tcp":
    s = socket.create_connection((host, port), timeout=timeout)
else:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", 0))
    s.connect((host, port))
    s.settimeout(timeout)
lport = s.getsockname()[1]
buf = b""


def out(*words):
    print(*words, flush=True)


def read_message():
    """one SIP message (or None on timeout/close); CRLF keep-alives are returned as b"\\r\\n" """
    global buf
    while True:
        if proto != "tcp":
            if buf:
                m, buf = buf, b""
                return m
        else:
            if buf.startswith(b"\r\n") and not buf.startswith(b"\r\n\r\n"):
                buf = buf[2:]
                return b"\r\n"
            head_end = buf.find(b"\r\n\r\n")
            if head_end > 0:
                head = buf[:head_end].decode("latin-1")
                length = 0
                for line in head.split("\r\n"):
                    k, _, v = line.partition(":")
                    if k.strip().lower() in ("content-length", "l"):
                        length = int(v.strip())
                total = head_end + 4 + length
                if len(buf) >= total:
                    m, buf = buf[:total], buf[total:]
                    return m
        try:
            data = s.recv(65535)
        except socket.timeout:
            return None
        if not data:
            return None
        buf += data


def headers(msg):
    return msg.decode("latin-1").split("\r\n\r\n")[0].split("\r\n")


data = open(path, "rb").read().replace(b"$LPORT", str(lport).encode())
s.sendall(data)
while True:
    m = read_message()
    if m is None:
        out("REG NONE")
        sys.exit(1)
    if m == b"\r\n":
        continue
    lines = headers(m)
    if not lines[0].startswith("SIP/2.0 1"):
        break
out("REG", lines[0])
for line in lines[1:]:
    k, _, v = line.partition(":")
    if k.strip().lower() in ("via", "v"):
        out("VIA", v.strip())
    if k.strip().lower() == "require":
        out("REQUIRE", v.strip())
if proto == "tcp":
    s.sendall(b"\r\n\r\n")
    s.settimeout(3)
    m = read_message()
    out("PONG" if m == b"\r\n" else "NOPONG")
    s.settimeout(timeout)
deadline = time.time() + timeout
while time.time() < deadline:
    m = read_message()
    if m is None:
        break
    if m == b"\r\n":
        continue
    lines = headers(m)
    if lines[0].startswith("SIP/2.0") or lines[0].startswith("ACK "):
        continue
    out("GOT", lines[0])
    for line in lines[1:]:
        if line.split(":")[0].strip().lower() == "record-route":
            out("RR", line.partition(":")[2].strip())
    keep = [l for l in lines[1:] if l.split(":")[0].strip().lower() in
            ("via", "v", "from", "f", "to", "t", "call-id", "i", "cseq")]
    keep = [l + ";tag=fp1" if l.split(":")[0].strip().lower() in ("to", "t") and
            "tag=" not in l else l for l in keep]
    reply = "SIP/2.0 %s Busy Here\r\n" % status + "\r\n".join(keep) + \
        "\r\nContent-Length: 0\r\n\r\n"
    s.sendall(reply.encode("latin-1"))
    out("ANSWERED")
    # stay a moment for the ACK of a non-2xx INVITE answer (tcp keeps the flow open)
    s.settimeout(1)
    read_message()
    sys.exit(0)
out("NOREQUEST")
