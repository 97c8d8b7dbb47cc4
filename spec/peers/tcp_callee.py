#!/usr/bin/env python3
"""A phone on TCP that rings and never answers: on 127.0.0.1:PORT it answers an INVITE
100 + 180, a CANCEL 200 and the INVITE 487, then waits for the ACK of that 487
(RFC 3261 17.1.1.3: same Via branch as the INVITE, CSeq method ACK).
Output lines: LISTENING / INVITE / CANCEL / ACK ok | ACK bad <why> | NOACK.
Usage: tcp_callee.py PORT [timeout_s=10]"""
import select
import socket
import sys
import time

port = int(sys.argv[1])
deadline = time.time() + (float(sys.argv[2]) if len(sys.argv) > 2 else 10.0)
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("127.0.0.1", port))
ls.listen(4)


def out(*words):
    print(*words, flush=True)


out("LISTENING")
conns, bufs = [], {}
invite = None                   # (headers, socket) of the INVITE


def header(lines, name):
    for line in lines[1:]:
        k, _, v = line.partition(":")
        if k.strip().lower() == name.lower():
            return v.strip()
    return ""


def reply(sock, lines, status, reason, to_tag=True):
    to = header(lines, "To") + (";tag=callee1" if to_tag and "tag=" not in header(lines, "To") else "")
    vias = [line for line in lines[1:] if line.lower().startswith("via:")]
    msg = ["SIP/2.0 %d %s" % (status, reason)] + vias + [
        "From: " + header(lines, "From"), "To: " + to, "Call-ID: " + header(lines, "Call-ID"),
        "CSeq: " + header(lines, "CSeq")]
    if status == 180:
        msg.append("Contact: <sip:callee@127.0.0.1:%d;transport=tcp>" % port)
    sock.sendall(("\r\n".join(msg + ["Content-Length: 0", "", ""])).encode())


def handle(sock, text):
    global invite
    lines = text.split("\r\n")
    method = lines[0].split(" ")[0]
    if method == "INVITE":
        out("INVITE")
        invite = lines
        reply(sock, lines, 100, "Trying", False)
        reply(sock, lines, 180, "Ringing")
    elif method == "CANCEL" and invite:
        out("CANCEL")
        reply(sock, lines, 200, "OK")
        reply(sock, invite, 487, "Request Terminated")
    elif method == "ACK" and invite:
        branch = lambda ls_: header(ls_, "Via").split("branch=")[1].split(";")[0]
        if branch(lines) != branch(invite):
            out("ACK bad branch", branch(lines), "not", branch(invite))
        elif header(lines, "CSeq").split()[-1] != "ACK":
            out("ACK bad CSeq", header(lines, "CSeq"))
        else:
            out("ACK ok")
        sys.exit(0)


while time.time() < deadline:
    r, _, _ = select.select([ls] + conns, [], [], 0.2)
    for s in r:
        if s is ls:
            c, _ = ls.accept()
            conns.append(c)
            bufs[c] = b""
            continue
        data = s.recv(65535)
        if not data:
            conns.remove(s)
            continue
        bufs[s] += data
        while b"\r\n\r\n" in bufs[s]:
            head, _, rest = bufs[s].partition(b"\r\n\r\n")
            text = head.decode("latin-1")
            n = int(header(text.split("\r\n"), "Content-Length") or 0)
            if len(rest) < n:
                break
            bufs[s] = rest[n:]
            handle(s, text)
out("NOACK")
