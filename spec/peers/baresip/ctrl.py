#!/usr/bin/env python3
"""ctrl.py PORT CMDFILE -- a client for baresip's ctrl_tcp module (netstring-framed JSON).

Connects to 127.0.0.1:PORT (retrying while baresip starts), prints `connected`, then
  - prints every message baresip sends as one line `msg JSON` (the JSON as received: one
    line, since baresip escapes newlines inside strings),
  - sends every line appended to CMDFILE, `TOKEN COMMAND [PARAMS]`, as the command
    {"command": COMMAND, "params": PARAMS, "token": TOKEN} and prints `sent TOKEN ...`,
  - prints `closed` and exits when baresip closes the connection.
Only needs python3-minimal (no json module).  Bounded by the caller (timeout).
"""
import os
import select
import socket
import sys
import time


def say(line):
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def connect(port, within=15.0):
    deadline = time.monotonic() + within
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=1.0)
        except OSError as e:
            if time.monotonic() > deadline:
                say("error connect: %s" % e)
                sys.exit(2)
            time.sleep(0.05)


def messages(buf):
    """Splits complete netstrings off buf -> (list of payloads, rest)."""
    out = []
    while True:
        colon = buf.find(b":")
        if colon < 0:
            return out, buf
        n = int(buf[:colon])
        end = colon + 1 + n
        if len(buf) < end + 1:
            return out, buf
        out.append(buf[colon + 1:end])
        buf = buf[end + 1:]          # skip the trailing ','


def quote(s):
    """A JSON string literal for s."""
    out = []
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20:
            out.append("\\u%04x" % ord(ch))
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def main():
    port, cmdfile = int(sys.argv[1]), sys.argv[2]
    sock = connect(port)
    sock.setblocking(False)
    say("connected")
    buf, offset = b"", 0
    while True:
        r, _, _ = select.select([sock], [], [], 0.05)
        if r:
            data = sock.recv(65536)
            if not data:
                say("closed")
                return
            found, buf = messages(buf + data)
            for payload in found:
                say("msg " + payload.decode("utf-8", "replace").replace("\n", "\\n"))
        if os.path.exists(cmdfile):
            with open(cmdfile, "rb") as f:
                f.seek(offset)
                chunk = f.read()
            for line in chunk.split(b"\n")[:-1]:      # complete lines only
                offset += len(line) + 1
                token, _, rest = line.decode().partition(" ")
                command, _, params = rest.partition(" ")
                body = '{"command":%s,"params":%s,"token":%s}' % (
                    quote(command), quote(params), quote(token))
                sock.sendall(b"%d:%s," % (len(body.encode()), body.encode()))
                say("sent %s %s %s" % (token, command, params))


if __name__ == "__main__":
    main()
