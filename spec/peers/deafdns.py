#!/usr/bin/env python3
"""Issue 15 item 1, run inside a network namespace with only loopback: starts
spec/peers/dns_uas.lua (argv[1:] is the interpreter command), sends it an INVITE whose
Contact names a host only DNS knows and never ACKs the 200, so the UAS sends its BYE
through the resolver after 64*T1; meanwhile and after, an OPTIONS every 100 ms must be
answered. Prints "invite STATUS", "options ANSWERED/SENT max MS" and the UAS's output."""
import socket, subprocess, sys, time

SECONDS = 4.0
uas = subprocess.Popen(sys.argv[1:] + ["spec/peers/dns_uas.lua", str(SECONDS + 3)],
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
line = uas.stdout.readline().decode()
port = int(line.split()[1])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
me = s.getsockname()[1]

def request(method, n, extra=""):
    return ("%s sip:uas@127.0.0.1:%d SIP/2.0\r\n"
            "Via: SIP/2.0/UDP 127.0.0.1:%d;rport;branch=z9hG4bKdeaf%d\r\n"
            "From: <sip:caller@127.0.0.1>;tag=deaf\r\nTo: <sip:uas@127.0.0.1>\r\n"
            "Call-ID: deaf%d@127.0.0.1\r\nCSeq: %d %s\r\nMax-Forwards: 70\r\n%s"
            "Content-Length: 0\r\n\r\n" % (method, port, me, n, n, n, method, extra)).encode()

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
sent = answered = 0
worst = 0.0
start = time.time()
n = 1
while time.time() - start < SECONDS:
    n += 1
    t0 = time.time()
    s.sendto(request("OPTIONS", n), ("127.0.0.1", port))
    sent += 1
    if answer(n, 1.0) == 200:
        answered += 1
        worst = max(worst, time.time() - t0)
    time.sleep(0.1)
print("options %d/%d max %.1f" % (answered, sent, worst * 1000))
sys.stdout.flush()
uas.kill()
out = uas.communicate()[0].decode("latin-1")
print(out[-3000:])
