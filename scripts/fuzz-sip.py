#!/usr/bin/env python3
"""Seeded mutation fuzzer for examples/uas.lua (issue 15 "Done when", issue 11 item 1).

Starts examples/uas.lua on 127.0.0.1 and an OS-chosen port (it logs the port it listens
on) with the interpreter given, mutates the messages of fuzz/seeds/sip/ and sends them: one
UDP datagram each, every 20th over TCP (a new connection each, half-closed after the
message, closed after a bounded wait).  Every 1,000 datagrams a canary OPTIONS must be
answered.  Flags, each written under --out as <n>-<kind>.sip with its reason in
findings.txt:
  canary   a canary slower than --stall-ms or unanswered
  stall    a response that took longer than --stall-ms (with the inputs sent just before)
  2xx      a 2xx to a message that check() says RFC 3261 requires rejecting
  died     the example exited (the inputs sent just before); it is restarted
  logctl   the example's log holds raw control bytes (the inputs sent just before)
Prints a summary and exits 1 when anything was flagged, 2 on a usage/setup error.
Usage: scripts/fuzz-sip.py [--lua lua5.4] [--flavour 5.4] [-n 20000] [--seed 1] [--out DIR]
       [--max-seconds 900] [--netns]      (--netns: run inside `unshare -n`, loopback only,
                                           where DNS is unreachable; needs root)
Standard library only."""
import argparse
import collections
import ctypes
import fcntl
import os
import random
import re
import select
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CTL = re.compile(rb"[\x00-\x08\x0b-\x1f\x7f]")      # raw control bytes a log must not hold
TOKEN = re.compile(rb"z9hG4bKfz(\d+)x([0-9a-f]{8})")
STATUS = re.compile(rb"(?:^|\r?\n)SIP/2\.0 (\d{3})[ \r\n]")
UDP_MAX = 65000

# ---------------------------------------------------------------------------------------
# The checker: True reasons RFC 3261 gives to reject a request, conservatively (it abstains
# when unsure, so it never flags a legal message).  check(data, tcp) -> reason | None


COMPACT = {b"i": b"call-id", b"f": b"from", b"t": b"to", b"v": b"via", b"l": b"content-length",
           b"m": b"contact", b"c": b"content-type"}
TOKEN_CHARS = re.compile(rb"^[A-Za-z0-9\-.!%*_+`'~]+$")


def split_message(data):
    """start line, [(name_lower, value_unfolded)], body  -- or None when the framing is not
    plain CRLF (bare CR or LF in the header section, leading whitespace)."""
    while data.startswith(b"\r\n"):
        data = data[2:]
    if not data or data[:1] in (b" ", b"\t"):
        return None
    end = data.find(b"\r\n\r\n")
    if end < 0:
        head, body = data, b""
        if head.endswith(b"\r\n"):
            head = head[:-2]
    else:
        head, body = data[:end], data[end + 4:]
    if re.search(rb"\r(?!\n)|(?<!\r)\n", head):
        return None
    # unfold first (continuation lines joined with one SP), as sofia does: a fold before
    # the colon ("From\r\n : ...") then reads as the header it looks like
    lines = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and len(lines) > 1:
            lines[-1] = lines[-1] + b" " + line.strip(b" \t")
        elif line[:1] in (b" ", b"\t"):
            return None
        else:
            lines.append(line)
    start, headers = lines[0], []
    for line in lines[1:]:
        m = re.match(rb"^([^:\s]+)[ \t]*:(.*)$", line, re.S)
        if not m:
            headers.append((None, line))           # a malformed line: counts as nothing
            continue
        name = m.group(1).lower()
        if not TOKEN_CHARS.match(name):
            headers.append((None, line))
            continue
        headers.append((COMPACT.get(name, name), m.group(2).strip(b" \t")))
    return start, headers, body


def check(data, tcp):
    parts = split_message(data)
    if parts is None:
        return None
    start, headers, body = parts
    m = re.match(rb"^([A-Za-z0-9\-.!%*_+`'~]+) (.*) ([Ss][Ii][Pp]/2\.0)$", start, re.S)
    if not m:
        return None                                  # a response, or an odd request line
    method, uri = m.group(1), m.group(2)
    # SP/HT are left out: RFC 4475 3.1.2.7/3.1.2.8 let a liberal element ignore LWS there
    bad = re.search(rb"[\x00-\x08\x0a-\x1f\x7f-\xff]", uri)
    if bad:
        return "byte 0x%02x in the Request-URI" % bad.group(0)[0]
    if not uri:
        return "empty Request-URI"
    values = collections.defaultdict(list)
    for name, value in headers:
        if name is not None:
            values[name].append(value)
    for name in (b"to", b"from", b"call-id", b"cseq", b"via"):
        if not values[name]:
            return "no %s header" % name.decode()
    for name in (b"to", b"from", b"call-id", b"cseq"):
        if len(values[name]) > 1:
            return "%d %s headers" % (len(values[name]), name.decode())
    cseq = re.match(rb"^(\S+)\s+(\S+)$", values[b"cseq"][0])
    if not cseq or not cseq.group(1).isdigit():
        return "CSeq %r is not a number and a method" % values[b"cseq"][0][:40]
    if int(cseq.group(1)) >= 2 ** 32:
        return "CSeq number %s above 2**32-1" % cseq.group(1)[:40].decode()
    if cseq.group(2) != method:
        return "CSeq method %r differs from the request method %r" % (
            cseq.group(2)[:40], method[:40])
    for v in values[b"max-forwards"]:
        if not v.isdigit():
            return "Max-Forwards %r is not a number" % v[:40]
    lengths = values[b"content-length"]
    for v in lengths:
        if not v.isdigit():
            return "Content-Length %r is not a number" % v[:40]
    if len(set(int(v) for v in lengths)) > 1:
        return "Content-Length values differ: %s" % b", ".join(lengths)[:80].decode()
    if lengths and int(lengths[0]) > len(body):
        return "Content-Length %d larger than the body (%d bytes)" % (int(lengths[0]), len(body))
    if tcp and lengths and int(lengths[0]) < len(body):
        return None                                  # the rest is a second message on TCP
    return None


# ---------------------------------------------------------------------------------------
# Mutations


INTERESTING = [b"\x00", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b";", b",", b"<", b">",
               b'"', b"%", b"%00", b"\x1b[31m", b"\xff", b"\x80", b"\xc3\xa9", b"0", b"9" * 20,
               b"-1", b"=", b"@", b"\\", b"sip:", b";lr", b"\r\n ", b"\x7f"]
CTRL = bytes(list(range(0x00, 0x20)) + [0x7f] + list(range(0x80, 0x100)))
CL_VALUES = [b"0", b"1", b"10", b"99999999999999999999", b"-1", b"abc", b"5 5", b"0x10",
             b" 7", b"4294967296", b""]


def lines_of(data):
    return data.split(b"\r\n")


def header_span(lines):
    """index range of the header lines (1 .. first empty line)"""
    for i in range(1, len(lines)):
        if lines[i] == b"":
            return 1, i
    return 1, len(lines)


class Mutator:
    def __init__(self, rng, seeds, room):
        self.rng, self.seeds, self.room = rng, seeds, room     # room: largest input
        self.ops = [self.flip, self.insert, self.delete, self.dup_line, self.del_line,
                    self.repeat_header, self.splice, self.truncate, self.content_length,
                    self.ctl_ruri, self.ctl_header, self.fold, self.line_endings,
                    self.cseq]

    def mutate(self, data):
        r = self.rng
        for _ in range(r.choice((1, 1, 1, 2, 2, 3))):
            op = r.choice(self.ops)
            data = op(data)
        return data

    def pos(self, data):
        return self.rng.randrange(len(data) + 1)

    def flip(self, data):
        if not data:
            return data
        b = bytearray(data)
        for _ in range(self.rng.choice((1, 1, 2, 4))):
            i = self.rng.randrange(len(b))
            b[i] = b[i] ^ (1 << self.rng.randrange(8)) if self.rng.random() < 0.5 \
                else self.rng.randrange(256)
        return bytes(b)

    def insert(self, data):
        i = self.pos(data)
        return data[:i] + self.rng.choice(INTERESTING) + data[i:]

    def delete(self, data):
        if not data:
            return data
        i = self.rng.randrange(len(data))
        return data[:i] + data[i + self.rng.choice((1, 1, 2, 8, 40)):]

    def dup_line(self, data):
        ls = lines_of(data)
        i = self.rng.randrange(len(ls))
        n = self.rng.choice((1, 1, 2, 10, 100, 1000, 5000))
        n = max(1, min(n, (self.room - len(data)) // (len(ls[i]) + 2)))
        return b"\r\n".join(ls[:i] + [ls[i]] * (n + 1) + ls[i + 1:])

    def del_line(self, data):
        ls = lines_of(data)
        if len(ls) < 2:
            return data
        del ls[self.rng.randrange(len(ls))]
        return b"\r\n".join(ls)

    def repeat_header(self, data):
        ls = lines_of(data)
        a, b = header_span(ls)
        if b <= a:
            return data
        i = self.rng.randrange(a, b)
        line = ls[i] if self.rng.random() < 0.7 else self.rng.choice(
            (b"X:0", b"0\r", b"Via: SIP/2.0/UDP h;branch=z9hG4bK1", b"To: <sip:a@b>"))
        n = self.rng.choice((2, 10, 100, 1000, 3000, 12000))
        n = max(1, min(n, (self.room - len(data)) // (len(line) + 2)))
        return b"\r\n".join(ls[:i + 1] + [line] * n + ls[i + 1:])

    def splice(self, data):
        other = self.rng.choice(self.seeds)[1]
        i, j = self.pos(data), self.rng.randrange(len(other) + 1)
        if self.rng.random() < 0.6:                    # at line boundaries
            la, lb = lines_of(data), lines_of(other)
            i, j = self.rng.randrange(len(la) + 1), self.rng.randrange(len(lb) + 1)
            return b"\r\n".join(la[:i] + lb[j:])
        return data[:i] + other[j:]

    def truncate(self, data):
        return data[:self.pos(data)]

    def content_length(self, data):
        v = self.rng.choice(CL_VALUES)
        new, n = re.subn(rb"(?im)^(content-length|l)([ \t]*:[ \t]*)[^\r\n]*",
                         lambda m: m.group(1) + m.group(2) + v, data, count=1)
        return new if n else data.replace(b"\r\n", b"\r\nContent-Length: " + v + b"\r\n", 1)

    def ctl_ruri(self, data):
        eol = data.find(b"\r\n")
        first = data[:eol if eol >= 0 else len(data)]
        sp = first.find(b" ")
        if sp < 0:
            return data
        i = self.rng.randrange(sp + 1, len(first) + 1)
        return data[:i] + bytes([self.rng.choice(CTRL)]) + data[i:]

    def ctl_header(self, data):
        ls = lines_of(data)
        a, b = header_span(ls)
        if b <= a:
            return data
        k = self.rng.randrange(a, b)
        line = ls[k]
        i = self.rng.randrange(len(line) + 1)
        ls[k] = line[:i] + bytes([self.rng.choice(CTRL)]) + line[i:]
        return b"\r\n".join(ls)

    def fold(self, data):
        ls = lines_of(data)
        a, b = header_span(ls)
        if b <= a:
            return data
        k = self.rng.randrange(a, b)
        spaces = [m.start() for m in re.finditer(rb"[ ;,]", ls[k])]
        if not spaces:
            return data
        i = self.rng.choice(spaces)
        ls[k] = ls[k][:i] + self.rng.choice((b"\r\n ", b"\r\n\t", b"\r\n  ")) + ls[k][i:]
        return b"\r\n".join(ls)

    def line_endings(self, data):
        return data.replace(b"\r\n", self.rng.choice((b"\n", b"\r", b"\r\r\n", b"\n\r")),
                            self.rng.choice((1, 3, -1)))

    def cseq(self, data):
        v = self.rng.choice((b"1 BYE", b"abc INVITE", b"4294967296 OPTIONS", b"1", b"-1 ACK",
                             b"99999999999999999999999 INVITE", b"1 invite", b""))
        return re.sub(rb"(?im)^(cseq[ \t]*:[ \t]*)[^\r\n]*", lambda m: m.group(1) + v, data,
                      count=1)


def retarget(data, transport, port, token, call_id, rng):
    """The first Via (all its lines) says where the answer goes: back to us; the branch
    carries the token that ties an answer to its input; Call-ID made unique."""
    ls = lines_of(data)
    a, b = header_span(ls)
    out, i, via_done, cid_done = ls[:a], a, False, False
    while i < b:
        j = i + 1
        while j < b and ls[j][:1] in (b" ", b"\t"):
            j += 1
        name = ls[i].split(b":", 1)[0].strip().lower()
        if name in (b"via", b"v") and not via_done:
            out.append(b"Via: SIP/2.0/%s 127.0.0.1:%d;rport;branch=%s" % (transport, port, token))
            via_done = True
        elif name in (b"call-id", b"i") and not cid_done and rng.random() < 0.9:
            out.append(b"Call-ID: " + call_id)
            cid_done = True
        else:
            out.extend(ls[i:j])
        i = j
    return b"\r\n".join(out + ls[b:])


# ---------------------------------------------------------------------------------------
# The example under test


def set_pdeathsig(sig=signal.SIGKILL):
    """the child dies with us even when we are killed (SIGKILL included)"""
    try:
        ctypes.CDLL(None).prctl(1, sig)                # PR_SET_PDEATHSIG
    except Exception:
        pass


class Server:
    LOG_KEEP = 1 << 20

    def __init__(self, lua, flavour, log_path):
        self.lua, self.flavour = lua, flavour
        self.log_file = open(log_path, "wb")
        self.log_written = 0
        self.proc, self.port = None, None
        self.tail = b""
        self.ctl_hits = []             # (offset in log, the bytes around) since last take
        self.lines = 0

    def start(self):
        env = dict(os.environ,
                   LUA_PATH="lua/?.lua;lua/?/init.lua;;",
                   LUA_CPATH="build/%s/?.so;;" % self.flavour)
        self.proc = subprocess.Popen([self.lua, "examples/uas.lua", "127.0.0.1:0"], cwd=ROOT,
                                     env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, start_new_session=True,
                                     preexec_fn=set_pdeathsig)
        os.set_blocking(self.proc.stdout.fileno(), False)
        try:     # room for a burst of log lines: the example must never wait on us
            fcntl.fcntl(self.proc.stdout.fileno(), getattr(fcntl, "F_SETPIPE_SZ", 1031), 1 << 20)
        except OSError:
            pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.drain(0.05)
            m = re.search(rb"listening on sip:127\.0\.0\.1:(\d+)", self.tail)
            if m:
                self.port = int(m.group(1))
                return self.port
            if self.proc.poll() is not None:
                break
        raise RuntimeError("examples/uas.lua did not start:\n" + self.tail.decode("latin-1"))

    def drain(self, wait=0.0):
        """reads what the example logged; control bytes found are queued in ctl_hits"""
        if self.proc is None:
            return
        fd = self.proc.stdout.fileno()
        if wait:
            select.select([fd], [], [], wait)
        while True:
            try:
                chunk = os.read(fd, 65536)
            except BlockingIOError:
                return
            if not chunk:
                return
            self.lines += chunk.count(b"\n")
            for m in CTL.finditer(chunk):
                if len(self.ctl_hits) < 20:
                    self.ctl_hits.append(chunk[max(0, m.start() - 80):m.end() + 40])
            if self.log_written < 50 * self.LOG_KEEP:
                self.log_file.write(chunk)
                self.log_written += len(chunk)
            self.tail = (self.tail + chunk)[-self.LOG_KEEP:]

    def cpu(self):
        """CPU seconds the example has used (user + system), or None"""
        try:
            with open("/proc/%d/stat" % self.proc.pid) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, ValueError, IndexError, AttributeError):
            return None

    def fd(self):
        return self.proc.stdout.fileno() if self.proc is not None else None

    def wait(self, sock, timeout):
        """waits until sock is readable (True) or timeout (False), reading the log all the
        while: a full pipe would block the example and look like a stall of its own"""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            fds = [sock] + ([self.fd()] if self.fd() is not None else [])
            ready, _, _ = select.select(fds, [], [], max(0.0, left))
            if self.fd() in ready:
                self.drain()
            if sock in ready:
                return True
            if left <= 0:
                return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(2)
            except (subprocess.TimeoutExpired, ProcessLookupError):
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                self.proc.wait()
        self.drain()
        self.proc.stdout.close()
        self.proc = None
        self.log_file.flush()


# ---------------------------------------------------------------------------------------
# The run


class Fuzz:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)       # inputs: the same for the same seed
        self.aux = random.Random(args.seed + 1)   # replays, whose number depends on timing
        self.seeds = []
        for name in sorted(os.listdir(args.seeds)):
            if name.endswith(".sip"):
                with open(os.path.join(args.seeds, name), "rb") as f:
                    self.seeds.append((name, f.read()))
        if not self.seeds:
            raise RuntimeError("no seeds in " + args.seeds)
        self.mut = Mutator(self.rng, self.seeds, min(UDP_MAX, args.max_size))
        os.makedirs(args.out, exist_ok=True)
        if args.dump:
            os.makedirs(args.dump, exist_ok=True)
        for name in os.listdir(args.out):
            if name.endswith(".sip") or name in ("findings.txt", "uas.log"):
                os.remove(os.path.join(args.out, name))
        self.index = open(os.path.join(args.out, "findings.txt"), "w")
        self.server = Server(args.lua, args.flavour, os.path.join(args.out, "uas.log"))
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", 0))
        self.udp.setblocking(False)
        self.myport = self.udp.getsockname()[1]
        self.records = {}              # seq -> record (dict)
        self.recent = collections.deque(maxlen=3)
        self.flagged = collections.Counter()
        self.written = collections.Counter()
        self.statuses = collections.Counter()
        self.sent = collections.Counter()
        self.canaries, self.canary_max, self.canary_fail_run = [], 0.0, 0
        self.resp_max, self.resp_max_seq = 0.0, None
        self.stall_until = 0.0
        self.restarts = 0
        self.unconfirmed = []
        self.server_errors = {}        # seq -> 5xx other than 501/505 (the first few)
        self.canary_count = 0
        self.acks = 0

    # findings -------------------------------------------------------------------------
    def flag(self, kind, reason, data, seq, seed=""):
        self.flagged[kind] += 1
        if self.written[kind] >= self.args.max_files:
            return
        self.written[kind] += 1
        name = "%05d-%s.sip" % (seq, kind)
        with open(os.path.join(self.args.out, name), "wb") as f:
            f.write(data)
        line = "%s\t%s\t%s%s" % (name, kind, reason, (" (seed %s)" % seed) if seed else "")
        self.index.write(line.replace("\n", " ") + "\n")
        self.index.flush()
        if self.args.verbose:
            print("FLAG " + line, file=sys.stderr)

    def flag_recent(self, kind, reason):
        for k, rec in enumerate(reversed(self.recent)):
            if rec.get("data") is not None:
                self.flag(kind, reason + (" [input sent %d before]" % k if k else ""),
                          rec["data"], rec["seq"], rec["seed"])

    # answers --------------------------------------------------------------------------
    def on_answer(self, data, now, tcp_conn=None):
        m = TOKEN.search(data)
        st = STATUS.match(data) or STATUS.search(data[:64])
        if not st:
            return                                         # a request to us: ignored
        status = int(st.group(1))
        self.statuses[str(status) if status >= 500 else "%dxx" % (status // 100)] += 1
        if not m:
            return
        rec = self.records.get(int(m.group(1)))
        if rec is None or rec["tag"] != m.group(2):
            return
        if status >= 500 and status not in (501, 505) and len(self.server_errors) < 5 \
                and rec["seq"] not in self.server_errors:
            self.server_errors[rec["seq"]] = status
        if rec["first"] is None:
            rec["first"] = now
            lat = now - rec["t"]
            if lat > self.resp_max:
                self.resp_max, self.resp_max_seq = lat, rec["seq"]
            if lat * 1000 > self.args.stall_ms and rec["t"] >= self.stall_until:
                self.flag_stall(rec, lat)
                self.stall_until = time.monotonic()
        if 200 <= status < 300 and rec["reject"] and not rec["flagged"] and rec["data"]:
            rec["flagged"] = True
            self.flag("2xx", "%d to a request to reject: %s" % (status, rec["reject"]),
                      rec["data"], rec["seq"], rec["seed"])
        if 200 <= status < 300 and rec["ack"] and tcp_conn is None:
            self.send_ack(data)

    def flag_stall(self, rec, lat):
        """a slow answer: the input, or one sent just before it, held the loop.  Confirmed by sending them again (fresh branch and Call-ID) followed by a
        canary: a stall the replay does not show is counted, not flagged (machine noise)"""
        reason = "first answer after %.0f ms" % (lat * 1000)
        # an input answered in time can still hold the loop after its answer (freeing a
        # message of thousands of headers): the two before it are candidates too
        cands = [p for p in reversed(self.records_before(rec["seq"], 2))
                 if p["data"] is not None] + [rec]
        cands = [c for c in cands if c["data"] is not None]
        t, cpu0 = time.monotonic(), self.server.cpu()
        for k, c in enumerate(cands):
            old = b"fz%dx%s" % (c["seq"], c["tag"])
            new = b"fz%dx%08x" % (10 ** 7 + c["seq"] * 10 + k, self.aux.getrandbits(32))
            data = c["data"].replace(old, new)
            try:
                if c["tcp"]:
                    s = socket.create_connection(("127.0.0.1", self.server.port), timeout=1)
                    s.sendall(data)
                    s.close()
                else:
                    self.udp.sendto(data, ("127.0.0.1", self.server.port))
            except OSError:
                pass
        again = self.canary(rec["seq"], quiet=True)
        total, cpu1 = time.monotonic() - t, self.server.cpu()
        if again is not None and total * 1000 <= self.args.stall_ms:
            self.unconfirmed.append("#%d %s; replayed with the %d input(s) before it: %.0f ms"
                                    % (rec["seq"], reason, len(cands) - 1, total * 1000))
            return
        reason += "; replayed: %s" % ("canary after %.0f ms" % (total * 1000)
                                      if again is not None else "canary unanswered")
        if cpu0 is not None and cpu1 is not None:
            reason += ", the example used %.0f ms of CPU meanwhile" % ((cpu1 - cpu0) * 1000)
        for c in cands:
            self.flag("stall", reason if c is rec else
                      "input sent before #%d (%s)" % (rec["seq"], reason),
                      c["data"], c["seq"], c["seed"])

    def records_before(self, seq, n):
        return [self.records[s] for s in range(seq - 1, seq - 1 - n, -1) if s in self.records]

    def send_ack(self, resp):
        """ACK for a 2xx to INVITE (RFC 3261 13.2.2.4), so the call does not time out"""
        if not re.search(rb"(?im)^(cseq|CSeq)[ \t]*:[ \t]*\d+[ \t]+INVITE\s*$", resp):
            return
        hdr = {}
        for name in (b"from", b"f", b"to", b"t", b"call-id", b"i", b"cseq"):
            m = re.search(rb"(?im)^" + re.escape(name) + rb"[ \t]*:[ \t]*([^\r\n]*)", resp)
            if m:
                hdr[COMPACT.get(name, name)] = m.group(1)
        if len(hdr) < 4:
            return
        self.acks += 1
        num = hdr[b"cseq"].split()[0]
        ack = (b"ACK sip:127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;rport;"
               b"branch=z9hG4bKack%d\r\nMax-Forwards: 70\r\nFrom: %s\r\nTo: %s\r\n"
               b"Call-ID: %s\r\nCSeq: %s ACK\r\nContent-Length: 0\r\n\r\n") % (
            self.server.port, self.myport, self.acks, hdr[b"from"], hdr[b"to"],
            hdr[b"call-id"], num)
        try:
            self.udp.sendto(ack, ("127.0.0.1", self.server.port))
        except OSError:
            pass

    def pump(self, seconds):
        """reads answers and the log for up to `seconds`"""
        deadline = time.monotonic() + seconds
        logfd = self.server.proc.stdout.fileno() if self.server.proc else None
        while True:
            left = deadline - time.monotonic()
            fds = [self.udp] + ([logfd] if logfd is not None else [])
            ready, _, _ = select.select(fds, [], [], max(0.0, left))
            if self.udp in ready:
                while True:
                    try:
                        data = self.udp.recv(70000)
                    except BlockingIOError:
                        break
                    except OSError:
                        continue                               # ICMP errors
                    self.on_answer(data, time.monotonic())
            if logfd in ready:
                self.server.drain()
            if left <= 0:
                break

    # inputs ---------------------------------------------------------------------------
    def send(self, seq):
        seed_name, seed = self.rng.choice(self.seeds)
        tcp = seq % 20 == 19
        tag = b"%08x" % self.rng.getrandbits(32)
        token = b"z9hG4bKfz%dx%s" % (seq, tag)
        call_id = b"fz%dx%s@fuzz" % (seq, tag)
        data = seed
        if self.rng.random() < 0.9:
            data = retarget(data, b"TCP" if tcp else b"UDP", self.myport, token, call_id,
                            self.rng)
        data = self.mut.mutate(data)[:self.args.max_size if tcp else min(UDP_MAX,
                                                                         self.args.max_size)]
        ack = self.rng.random() < self.args.ack_ratio
        if seq < self.args.skip:
            return                              # generated (same inputs after it), not sent
        if self.args.dump:
            with open(os.path.join(self.args.dump, "%05d.sip" % seq), "wb") as f:
                f.write(data)
        reject = check(data, tcp)
        rec = {"seq": seq, "tag": tag, "t": time.monotonic(), "first": None, "data": data,
               "seed": seed_name, "reject": reject, "flagged": False, "tcp": tcp,
               "ack": ack}
        self.records[seq] = rec
        self.recent.append(rec)
        self.sent["tcp" if tcp else "udp"] += 1
        wait = self.args.wait_ms / 1000.0
        if tcp:
            self.send_tcp(rec, max(wait, 0.05))
        else:
            try:
                self.udp.sendto(data, ("127.0.0.1", self.server.port))
            except OSError as e:
                rec["error"] = str(e)
            # wait for this input's first answer, at most `wait`
            deadline = rec["t"] + wait
            while rec["first"] is None and time.monotonic() < deadline:
                self.pump(min(0.005, max(0.0, deadline - time.monotonic())))
        self.pump(0)
        old = self.records.get(seq - 200)
        if old is not None and old["data"] is not None:
            old["data"] = None                                 # keep memory bounded

    def send_tcp(self, rec, wait):
        try:
            s = socket.create_connection(("127.0.0.1", self.server.port), timeout=wait)
        except OSError as e:
            rec["error"] = str(e)
            return
        buf, first = b"", None
        try:
            s.sendall(rec["data"])
            s.shutdown(socket.SHUT_WR)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if not self.server.wait(s, deadline - time.monotonic()):
                    break
                s.settimeout(1)
                try:
                    chunk = s.recv(65536)
                except socket.timeout:
                    break
                if not chunk:
                    break
                first = first or time.monotonic()
                buf += chunk
                if len(buf) > 1 << 20:
                    break
        except OSError:
            pass
        finally:
            s.close()
        for part in re.split(rb"(?=SIP/2\.0 \d{3} )", buf)[1:]:
            self.on_answer(part, first, tcp_conn=True)
        self.server.drain()

    def canary(self, n, quiet=False):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        self.canary_count += 1
        k = self.canary_count
        msg = (b"OPTIONS sip:canary@127.0.0.1:%d SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:%d;"
               b"rport;branch=z9hG4bKcanary%d\r\nMax-Forwards: 70\r\nFrom: <sip:canary@"
               b"127.0.0.1>;tag=c%d\r\nTo: <sip:uas@127.0.0.1>\r\nCall-ID: canary%d@fuzz\r\n"
               b"CSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n") % (
            self.server.port, port, k, k, k)
        t = time.monotonic()
        s.sendto(msg, ("127.0.0.1", self.server.port))
        lat = None
        deadline = t + self.args.canary_timeout
        while time.monotonic() < deadline:
            if self.server.wait(s, deadline - time.monotonic()):
                data = s.recv(70000)
                if re.search(rb"z9hG4bKcanary%d(?!\d)" % k, data) and STATUS.match(data):
                    lat = time.monotonic() - t
                    break
        s.close()
        if quiet:
            return lat
        self.pump(0)
        self.canaries.append(lat)
        if lat is None:
            self.canary_fail_run += 1
            self.flag("canary", "canary OPTIONS after input #%d unanswered within %.1f s"
                      % (n, self.args.canary_timeout), msg, n)
            return False
        self.canary_fail_run = 0
        self.canary_max = max(self.canary_max, lat)
        if lat * 1000 > self.args.stall_ms:
            self.flag("canary", "canary OPTIONS after input #%d answered after %.0f ms"
                      % (n, lat * 1000), msg, n)
        return True

    def check_server(self, seq):
        self.server.drain()
        if self.server.ctl_hits:
            hit = self.server.ctl_hits[0]
            self.server.ctl_hits = []
            self.flag_recent("logctl", "raw control byte(s) in the log: %r" % hit[-120:])
        if not self.server.alive():
            rc = self.server.proc.returncode
            self.flag_recent("died", "examples/uas.lua exited (%s) after input #%d; log tail: %r"
                             % (rc, seq, self.server.tail[-200:]))
            self.server.stop()
            if self.restarts >= 5:
                raise RuntimeError("examples/uas.lua died 5 times; giving up")
            self.restarts += 1
            self.server.start()

    def replay(self, files):
        """sends each file once (as it is, over UDP unless --tcp) to a fresh example, then at
        once a canary OPTIONS: prints the answers and how long the loop was held (the
        canary's latency: work after the answer, or for an input dropped unanswered, counts)"""
        self.server.start()
        status = 0
        try:
            for seq, path in enumerate(files):
                with open(path, "rb") as f:
                    data = f.read()
                reject = check(data, self.args.tcp)
                got = []
                if self.args.tcp:
                    s = socket.create_connection(("127.0.0.1", self.server.port), timeout=2)
                    s.sendall(data)
                    s.shutdown(socket.SHUT_WR)
                else:
                    self.udp.sendto(data[:UDP_MAX], ("127.0.0.1", self.server.port))
                until = time.monotonic() + self.args.replay_delay
                while time.monotonic() < until:          # reading the log meanwhile
                    self.server.drain(min(0.1, max(0.0, until - time.monotonic())))
                canary = self.canary(seq + 1, quiet=True)
                self.canaries.append(canary)
                time.sleep(0.2)                         # answers after the canary's
                if self.args.tcp:
                    s.settimeout(0.5)
                    try:
                        got.append((None, s.recv(65536) or b"(closed)"))
                    except OSError:
                        pass
                    s.close()
                else:
                    while True:
                        try:
                            got.append((None, self.udp.recv(70000)))
                        except (BlockingIOError, OSError):
                            break
                answers = [STATUS.search(d[:64]).group(1).decode() if STATUS.search(d[:64])
                           else "?" for _, d in got]
                print("%s: %s; checker: %s" % (path, ", ".join(answers) or "no answer",
                                               reject or "legal"))
                self.server.drain()
                if self.server.ctl_hits:
                    print("  log holds raw control bytes: %r" % self.server.ctl_hits[0][-120:])
                    self.server.ctl_hits = []
                    status = 1
                if canary is None or canary * 1000 > self.args.stall_ms or \
                        not self.server.alive():
                    status = 1
                elif status == 0:
                    print("  log: no raw control bytes so far")
                print("  canary sent right after it: %s" % (
                    "%.1f ms" % (self.canaries[-1] * 1000) if self.canaries[-1] is not None
                    else "unanswered"))
        finally:
            self.server.stop()
        return status

    def run(self):
        a = self.args
        t0 = time.monotonic()
        self.server.start()
        stopped = "done"
        seq = 0
        try:
            while seq < a.n:
                if time.monotonic() - t0 > a.max_seconds:
                    stopped = "--max-seconds reached"
                    break
                self.send(seq)
                self.check_server(seq)
                seq += 1
                if seq % 1000 == 0:
                    self.canary(seq)
                    if self.canary_fail_run >= 2:
                        stopped = "deaf: two canaries in a row unanswered"
                        break
            self.pump(0.3)
            if stopped == "done" and seq % 1000 != 0:
                self.canary(seq)
            self.check_server(seq)
        finally:
            self.server.stop()
        self.index.close()
        return self.summary(seq, time.monotonic() - t0, stopped)

    def summary(self, n, elapsed, stopped):
        answered = sum(1 for r in self.records.values() if r["first"] is not None)
        rejectable = sum(1 for r in self.records.values() if r["reject"])
        ok = [c for c in self.canaries if c is not None]
        out = [
            "fuzz-sip: %s, seed %d, %s (%s)" % (os.path.basename(self.args.lua),
                                               self.args.seed, stopped, "%.1f s" % elapsed),
            "  inputs     %d (udp %d, tcp %d), answered %d, checker-rejectable %d, ACKs sent %d"
            % (n, self.sent["udp"], self.sent["tcp"], answered, rejectable, self.acks),
            "  answers    %s" % ", ".join("%s %d" % kv for kv in sorted(self.statuses.items())),
            "  canaries   %d sent, %d answered, max latency %.1f ms"
            % (len(self.canaries), len(ok), self.canary_max * 1000),
            "  responses  max first-answer latency %.1f ms (input #%s)"
            % (self.resp_max * 1000, self.resp_max_seq),
            "  log        %d lines, restarts %d" % (self.server.lines, self.restarts),
            "  flagged    %s" % (", ".join("%s %d" % kv for kv in sorted(self.flagged.items()))
                                 or "nothing"),
        ]
        if self.server_errors:
            out.append("  5xx        first inputs answered 5xx (not flagged): %s" % ", ".join(
                "#%d %d" % kv for kv in sorted(self.server_errors.items())))
        if self.unconfirmed:
            out.append("  stalls seen once, not on replay (not flagged): %d, e.g. %s"
                       % (len(self.unconfirmed), self.unconfirmed[0]))
        if self.flagged:
            out.append("  findings   " + os.path.join(self.args.out, "findings.txt"))
        print("\n".join(out))
        return 1 if self.flagged else 0


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--lua", default="lua5.4", help="interpreter (lua5.4, luajit, ...)")
    p.add_argument("--flavour", help="build/<flavour> (default: from --lua)")
    p.add_argument("-n", type=int, default=20000, help="inputs to send (default 20000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--seeds", default=os.path.join(ROOT, "fuzz", "seeds", "sip"))
    p.add_argument("--out", default=os.path.join(ROOT, "build", "fuzz-findings"))
    p.add_argument("--max-seconds", type=float, default=900)
    p.add_argument("--stall-ms", type=float, default=100, help="canary/answer limit (100)")
    p.add_argument("--wait-ms", type=float, default=20, help="wait for an answer (20)")
    p.add_argument("--canary-timeout", type=float, default=2.0)
    p.add_argument("--ack-ratio", type=float, default=0.9,
                   help="share of 2xx to INVITE that get an ACK (the rest time out)")
    p.add_argument("--max-files", type=int, default=200, help="files written per kind")
    p.add_argument("--max-size", type=int, default=200000,
                   help="cut inputs to this many bytes (UDP: at most %d)" % UDP_MAX)
    p.add_argument("--skip", type=int, default=0,
                   help="generate the first SKIP inputs but send none of them")
    p.add_argument("--dump", metavar="DIR", help="write every input sent to DIR/<n>.sip")
    p.add_argument("--netns", action="store_true", help="run inside unshare -n")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--replay", nargs="+", metavar="FILE",
                   help="send these files as they are (no mutation) and print the answers")
    p.add_argument("--tcp", action="store_true", help="--replay over TCP")
    p.add_argument("--check", nargs="+", metavar="FILE",
                   help="print the checker's verdict on each file (nothing is started)")
    p.add_argument("--replay-delay", type=float, default=0, metavar="S",
                   help="--replay: wait S seconds between an input and its canary")
    args = p.parse_args(argv)
    if not args.flavour:
        args.flavour = "luajit" if "luajit" in args.lua else re.sub(r"^.*lua", "", args.lua)
    return args


def main(argv):
    args = parse_args(argv)
    if args.netns and os.environ.get("FUZZ_SIP_NETNS") != "1":
        env = dict(os.environ, FUZZ_SIP_NETNS="1")
        cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
               sys.executable, os.path.abspath(__file__)] + argv
        # the fuzzer inside the namespace stops its example when we end, however we end
        return subprocess.call(cmd, env=env, preexec_fn=lambda: set_pdeathsig(signal.SIGTERM))

    if args.check:
        for path in args.check:
            with open(path, "rb") as f:
                print("%s\t%s" % (path, check(f.read(), args.tcp) or "legal"))
        return 0

    def on_signal(signum, _frame):
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        fuzz = Fuzz(args)
        return fuzz.replay(args.replay) if args.replay else fuzz.run()
    except RuntimeError as e:
        print("fuzz-sip: " + str(e), file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
