#!/usr/bin/env python3
"""Sends one STUN message of the KIND below over UDP to HOST:PORT and prints the local
port it sent from, then the answer in hex (NONE when none came within 1 second), then
FINGERPRINT-OK or FINGERPRINT-BAD when the answer ends with a FINGERPRINT.
Usage: stun.py HOST PORT KIND, KIND one of
  binding      an RFC 5389 Binding request (magic cookie), no attribute
  fingerprint  the same with a FINGERPRINT
  badfp        the same with a wrong FINGERPRINT
  rfc3489      an RFC 3489 Binding request (no magic cookie)
  unknown      a Binding request with the comprehension-required attribute 0x7f01
  optional     a Binding request with the comprehension-optional attribute 0xc001
  overrun      a Binding request whose attribute runs past the end of the datagram
  badlength    a Binding request whose header length is not the datagram's
  indication   a Binding indication (no answer is due)"""
import os
import socket
import struct
import sys
import zlib

host, port, kind = sys.argv[1], int(sys.argv[2]), sys.argv[3]
COOKIE = 0x2112A442
txid = os.urandom(12)


def message(mtype, attrs, cookie=True, fingerprint=None):
    body = b"".join(struct.pack("!HH", t, len(v)) + v + b"\0" * (-len(v) % 4)
                    for t, v in attrs)
    head = struct.pack("!I", COOKIE) if cookie else os.urandom(4)
    if fingerprint is None:
        return struct.pack("!HH", mtype, len(body)) + head + txid + body
    m = struct.pack("!HH", mtype, len(body) + 8) + head + txid + body
    crc = (zlib.crc32(m) ^ 0x5354554E) & 0xFFFFFFFF
    return m + struct.pack("!HHI", 0x8028, 4, crc ^ fingerprint)


data = {
    "binding": lambda: message(0x0001, []),
    "fingerprint": lambda: message(0x0001, [], fingerprint=0),
    "badfp": lambda: message(0x0001, [], fingerprint=1),
    "rfc3489": lambda: message(0x0001, [], cookie=False),
    "unknown": lambda: message(0x0001, [(0x7F01, b"abcd")]),
    "optional": lambda: message(0x0001, [(0xC001, b"abcd")]),
    "overrun": lambda: message(0x0001, [])[:2] + struct.pack("!H", 8)
    + message(0x0001, [])[4:] + struct.pack("!HH", 0x7F01, 64) + b"abcd",
    "badlength": lambda: message(0x0001, [])[:2] + struct.pack("!H", 4)
    + message(0x0001, [])[4:],
    "indication": lambda: message(0x0011, []),
}[kind]()

family = socket.AF_INET6 if ":" in host else socket.AF_INET
s = socket.socket(family, socket.SOCK_DGRAM)
s.bind((host, 0))
s.settimeout(1.0)
s.sendto(data, (host, port))
print(s.getsockname()[1])
try:
    answer = s.recv(2048)
    # the answer's transaction id must be ours
    print(answer.hex() if answer[8:20] == data[8:20] else "WRONG-ID " + answer.hex())
    # a FINGERPRINT at the end of the answer: is it right?
    if len(answer) >= 28 and answer[-8:-4] == struct.pack("!HH", 0x8028, 4):
        crc = (zlib.crc32(answer[:-8]) ^ 0x5354554E) & 0xFFFFFFFF
        print("FINGERPRINT-OK" if struct.pack("!I", crc) == answer[-4:] else "FINGERPRINT-BAD")
except socket.timeout:
    print("NONE")
