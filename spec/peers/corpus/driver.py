#!/usr/bin/env python3
"""Torture-corpus driver for spec/corpus_spec.lua.  Run INSIDE a private network namespace
(unshare -n, lo up): starts the SIP server given after `--`, waits until it answers an
OPTIONS, sends every corpus file to it and records every reply, then checks that the
server still answers an OPTIONS, and stops it.

usage: driver.py --corpus DIR --target 127.0.0.1:5062 --out FILE [--log FILE] -- CMD...

Each file goes out unmodified, as ONE UDP datagram from 127.0.0.1:5060 -- or, when its top
Via names TCP, over one TCP connection: nta discards a request whose Via transport differs
from the one it arrived on, so sending those over UDP would test nothing.  Replies go to
the Via sent-by port (5060 when absent, 5050/5070 for two files), so the driver listens on
every such port.  Replies are attributed to the file whose Call-ID they carry (else to the
file being sent), so a late retransmission is never blamed on the next file.  2xx answers
to INVITE are ACKed (and non-2xx ones in their transaction), so the server stops
retransmitting and never sends a BYE to the corpus' unresolvable Contact hosts.

Output lines (tab-separated): F file transport | R file cseq-method first-line, then
H file header value for its Contact/Allow/Unsupported/Accept/Warning | P probe-first-line |
A alive(0/1)
"""
import argparse
import os
import re
import select
import socket
import subprocess
import sys
import time

WAIT = 1.0      # seconds to wait for a final answer to one file
GRACE = 0.15    # after a final answer, for anything that follows it


def hostport(s):
    h, p = s.rsplit(":", 1)
    return h.strip("[]"), int(p)


def header(text, names):
    """first value of a header (any of names, case-insensitive), or None"""
    for line in text.split("\r\n")[1:]:
        if line == "":
            break
        m = re.match(r"([^:\s]+)\s*:\s*(.*)$", line)
        if m and m.group(1).lower() in names:
            return m.group(2).strip()
    return None


def head_of(data):
    return data.split(b"\r\n\r\n", 1)[0].decode("latin-1")


def call_id(text):
    return header(text, ("call-id", "i"))


def top_via(text):
    return header(text, ("via", "v")) or ""


class Driver:
    def __init__(self, a):
        self.target = hostport(a.target)
        self.corpus = a.corpus
        self.out = []
        self.files = sorted(f for f in os.listdir(a.corpus) if f.endswith(".dat"))
        self.by_callid = {}
        ports = {5060}
        for f in self.files:
            text = head_of(self.read(f))
            cid = call_id(text)
            if cid:
                self.by_callid.setdefault(cid, f)
            m = re.search(r"SIP\s*/\s*2\.0\s*/\s*UDP\s+[^\s;:,]+:(\d+)", top_via(text), re.I)
            if m:
                ports.add(int(m.group(1)))
        ports.discard(self.target[1])
        self.udp = {}
        for p in sorted(ports):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.bind(("127.0.0.1", p))
            self.udp[p] = s
        self.sock = self.udp[5060]
        self.nack = 0
        self.tcp_via = None

    def read(self, f):
        with open(os.path.join(self.corpus, f), "rb") as fh:
            return fh.read()

    def ack(self, text, send, via, owner, status):
        """ACK a final answer to INVITE: for a 2xx a new transaction to the Contact (RFC 3261
        13.2.2.4), for a non-2xx one in the INVITE's transaction (17.1.1.3, same Via)"""
        self.nack += 1
        cseq = header(text, ("cseq",)) or "1 INVITE"
        if status < 300:
            ruri = "sip:%s:%d" % self.target
            via = "%s;branch=z9hG4bK-corpus-ack-%d" % (via, self.nack)
        else:
            ruri = self.read(owner).split(b" ", 2)[1].decode("latin-1")
            via = re.sub(r";\s*(received|rport)(=[^;,]*)?", "", top_via(text))
        lines = [
            "ACK %s SIP/2.0" % ruri,
            "Via: " + via,
            "Max-Forwards: 70",
            "From: " + (header(text, ("from", "f")) or ""),
            "To: " + (header(text, ("to", "t")) or ""),
            "Call-ID: " + (call_id(text) or ""),
            "CSeq: %s ACK" % cseq.split()[0],
            "Content-Length: 0", "", ""]
        send("\r\n".join(lines).encode("latin-1"))

    def record(self, current, data, send, via):
        """one reply: attribute it, ACK it if it is a final answer to an INVITE -> its
        status if it answers the current file, else 0"""
        text = head_of(data)
        first = text.split("\r\n", 1)[0]
        cseq = header(text, ("cseq",)) or ""
        method = cseq.split()[-1] if cseq.split() else "-"
        cid = call_id(text)
        owner = self.by_callid.get(cid or "", current)
        self.out.append("R\t%s\t%s\t%s" % (owner, method, first))
        for line in text.split("\r\n")[1:]:
            m = re.match(r"(Contact|m|Allow|Unsupported|Accept|Warning)\s*:\s*(.*)$", line, re.I)
            if m:
                self.out.append("H\t%s\t%s\t%s" % (owner, m.group(1).lower(), m.group(2)))
        m = re.match(r"SIP/2\.0 (\d{3})", first)
        status = int(m.group(1)) if m else 0
        invite = self.read(owner).split(b" ", 1)[0] == b"INVITE"
        if method.upper() == "INVITE" and invite and cid and status >= 200:
            self.ack(text, send, via, owner, status)
        return status if owner == current else 0

    def udp_send(self, data):
        self.sock.sendto(data, self.target)

    def poll(self, current, extra, deadline, send_tcp=None):
        """collect replies until the deadline; -> True once a final answer arrived"""
        final_at = None
        buf = b""
        while True:
            now = time.monotonic()
            end = deadline if final_at is None else min(deadline, final_at + GRACE)
            if now >= end:
                return final_at is not None
            socks = list(self.udp.values()) + ([extra] if extra else [])
            ready, _, _ = select.select(socks, [], [], end - now)
            for s in ready:
                if s is extra:
                    try:
                        chunk = s.recv(65535)
                    except OSError:
                        chunk = b""
                    if not chunk:
                        extra = None
                        continue
                    buf += chunk
                    while True:
                        msg, buf = split_stream(buf)
                        if msg is None:
                            break
                        st = self.record(current, msg, send_tcp, self.tcp_via)
                        if st >= 200 and final_at is None:
                            final_at = time.monotonic()
                else:
                    try:
                        data = s.recv(65535)
                    except OSError:
                        continue
                    st = self.record(current, data, self.udp_send, "SIP/2.0/UDP 127.0.0.1:5060")
                    if st >= 200 and final_at is None:
                        final_at = time.monotonic()

    def probe(self, n):
        """an ordinary OPTIONS; -> first line of its final answer or None"""
        cid = "corpus-probe-%d-%d" % (n, os.getpid())
        msg = "\r\n".join([
            "OPTIONS sip:probe@%s:%d SIP/2.0" % self.target,
            "Via: SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bK-corpus-probe-%s" % cid,
            "Max-Forwards: 70",
            "From: <sip:driver@127.0.0.1:5060>;tag=probe%d" % n,
            "To: <sip:probe@%s:%d>" % self.target,
            "Call-ID: " + cid,
            "CSeq: 1 OPTIONS",
            "Content-Length: 0", "", ""]).encode()
        self.udp_send(msg)
        deadline = time.monotonic() + 0.2
        while time.monotonic() < deadline:
            ready, _, _ = select.select([self.sock], [], [], deadline - time.monotonic())
            if ready:
                data = self.sock.recv(65535)
                text = head_of(data)
                first = text.split("\r\n", 1)[0]
                if call_id(text) == cid and re.match(r"SIP/2\.0 [2-6]", first):
                    return first
        return None

    def send_file(self, f):
        data = self.read(f)
        via = top_via(head_of(data))
        tcp = re.match(r"SIP\s*/\s*2\.0\s*/\s*TCP\b", via, re.I) is not None
        self.out.append("F\t%s\t%s" % (f, "tcp" if tcp else "udp"))
        deadline = time.monotonic() + WAIT
        if not tcp:
            self.udp_send(data)
            self.poll(f, None, deadline)
            return
        try:
            c = socket.create_connection(self.target, timeout=WAIT)
        except OSError:
            return              # recorded as no reply; the final probe tells why
        try:
            self.tcp_via = "SIP/2.0/TCP 127.0.0.1:%d" % c.getsockname()[1]
            c.sendall(data)
            self.poll(f, c, deadline, c.sendall)
        except OSError:
            pass
        finally:
            c.close()


def split_stream(buf):
    """one SIP message off a TCP byte stream: -> msg, rest (msg None when incomplete)"""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None, buf
    clen = header(buf[:end].decode("latin-1"), ("content-length", "l")) or "0"
    total = end + 4 + (int(clen) if clen.isdigit() else 0)
    if len(buf) < total:
        return None, buf
    return buf[:total], buf[total:]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", required=True)
    ap.add_argument("--target", default="127.0.0.1:5062")
    ap.add_argument("--out", required=True)
    ap.add_argument("--log", default=os.devnull)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    if not hostport(a.target)[0].startswith("127."):
        sys.exit("refusing: target must be a loopback address")
    d = Driver(a)
    log = open(a.log, "wb")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        ready, n = None, 0
        deadline = time.monotonic() + 10
        while ready is None and time.monotonic() < deadline and server.poll() is None:
            n += 1
            ready = d.probe(n)
        if ready is None:
            sys.exit("server did not answer an OPTIONS within 10 s")
        for f in d.files:
            d.send_file(f)
        d.out.append("P\t%s" % (d.probe(0) or d.probe(-1) or "(no reply)"))
        d.out.append("A\t%d" % (1 if server.poll() is None else 0))
    finally:
        if server.poll() is None:
            server.terminate()
            try:
                server.wait(2)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
        log.close()
    with open(a.out, "w", encoding="latin-1") as fh:
        fh.write("\n".join(d.out) + "\n")


if __name__ == "__main__":
    main()
