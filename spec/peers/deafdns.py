#!/usr/bin/env python3
"""Issue 15 item 1, run inside a network namespace with only loopback: starts
spec/peers/dns_uas.lua (argv[1:] is the interpreter command), sends it an INVITE whose
Contact names a host only DNS knows and never ACKs the 200, so the UAS sends its BYE
through the resolver after 64*T1, then a burst of BURST more such INVITEs (each Contact
another name, some with a Via sent-by that is a name too); meanwhile and after, an
OPTIONS every 100 ms must be answered, and once the BYEs have failed the UAS must be
idle (issue 11: a process stuck in sofia's resolver sat at ~66 % CPU). Prints "invite
STATUS", "burst ANSWERED/SENT", "options ANSWERED/SENT max MS", "idle cpu PERCENT" and
the UAS's output."""
import os, socket, subprocess, sys, time

SECONDS = 5.0
BURST = 200
IDLE_FROM = 3.0   # the BYEs (sent 1.28 s after each 200) have all failed; idle from here on
uas = subprocess.Popen(sys.argv[1:] + ["spec/peers/dns_uas.lua", str(SECONDS + 3)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
line = uas.stdout.readline().decode()
port = int(line.split()[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)   # the burst's 2xx retransmissions
s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]

def request(method, n, extra=""):
    return ("%s sip:uas@127.0.0.1:%d SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKdeaf%d\r\n"
            "From: <sip:caller@127.0.0.1>;tag=deaf\r\nTo: <sip:uas@127.0.0.1>\r\n"
            "Call-ID: deaf%d@127.0.0.1\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n%s"
            "Content-Length: 0\r\n\r\n" % (method, port, me, n, n, n, method, extra)).encode()

def cpu_ticks(pid):
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])   # utime + stime

def answer(want_cseq, timeout):
    end = time.time() + timeout
    while time.time() < end:
        s.settimeout(max(0.001, end - time.time()))
        try:
            data = s.recv(65535)
        except socket.timeout:
            return None
        text = data.decode("latin-1")
        if text.startswith("SIP/2.0 ") and ("CSeq: %d " % want_cseq) in text:
            code = int(text.split()[1])
            if code >= 200:
                return code
    return None

s.sendto(request("INVITE", 1, "Contact: <sip:x@hungry.example.net>\r\n"), ("127.0.0.1", port))
print("invite", answer(1, 2.0))
n = 1
for i in range(BURST):
    n += 1
    via_host = "via%d.hungry.example.net" % i if i % 4 == 0 else "127.0.0.1:%d" % me
    req = request("INVITE", n, "Contact: <sip:x@c%d.hungry.example.net>\r\n" % i)
    req = req.replace(b"127.0.0.1:%d;rport" % me, via_host.encode() + b";rport", 1)
    s.sendto(req, ("127.0.0.1", port))
burst_ok = set()
end = time.time() + 3.0
while len(burst_ok) < BURST and time.time() < end:
    s.settimeout(max(0.001, end - time.time()))
    try:
        text = s.recv(65535).decode("latin-1")
    except socket.timeout:
        break
    if text.startswith("SIP/2.0 200") and " INVITE\r\n" in text:
        burst_ok.add(text.split("Call-ID: ", 1)[1].split("\r\n", 1)[0])
print("burst %d/%d" % (len(burst_ok), BURST))
sent = answered = 0
worst = 0.0
start = time.time()
ticks0 = None
while time.time() - start < SECONDS:
    now = time.time() - start
    if ticks0 is None and now >= IDLE_FROM:
        ticks0, t0_idle = cpu_ticks(uas.pid), time.time()
    n += 1
    t0 = time.time()
    s.sendto(request("OPTIONS", n), ("127.0.0.1", port))
    sent += 1
    if answer(n, 1.0) == 200:
        answered += 1
        worst = max(worst, time.time() - t0)
    time.sleep(0.1)
ticks1, t1_idle = cpu_ticks(uas.pid), time.time()
print("options %d/%d max %.1f" % (answered, sent, worst * 1000))
hz = os.sysconf("SC_CLK_TCK")
print("idle cpu %.1f" % (100.0 * (ticks1 - ticks0) / hz / (t1_idle - t0_idle)))
sys.stdout.flush()
uas.kill()
out = uas.communicate()[0].decode("latin-1")
print("byes failed %d" % out.count(") failed: 503"))
print(out if len(out) < 6000 else out[:2500] + "\n[...]\n" + out[-2500:])
