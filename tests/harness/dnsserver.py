"""A DNS server the test controls, run in a lab namespace on the configured resolver's
address: `ip netns exec NS python -m tests.harness.dnsserver --zone FILE`.

FILE is JSON, read again whenever it changes (write it with `write_zone`, atomically):
  {"rmm.example.com": {"a": ["203.0.113.20"], "ttl": 3},
   "gone.example.com": {"rcode": "NXDOMAIN"}, "bad.example.com": {"rcode": "SERVFAIL"},
   "slow.example.com": {"drop": true},
   "many.example.com": {"records": ["203.0.113.1", ...], "ttl": 60}}   (written one by one, repeats kept)
Names not in it get NXDOMAIN. UDP answers that do not fit 512 bytes (or the client's
EDNS size) go out truncated, so the client asks again over TCP, which is also served.
Messages are built and parsed by dnspython. Each query is logged to stdout as one line.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import socketserver
import struct
import threading

import dns.exception
import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset


def write_zone(path: str, zone: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(zone, f)
    os.replace(tmp, path)


class Zone:
    def __init__(self, path: str) -> None:
        self.path = path
        self._stamp = None
        self._zone: dict = {}
        self._lock = threading.Lock()

    def get(self) -> dict:
        with self._lock:
            try:
                st = os.stat(self.path)
                stamp = (st.st_mtime_ns, st.st_ino, st.st_size)
                if stamp != self._stamp:
                    with open(self.path) as f:
                        self._zone = json.load(f)
                    self._stamp = stamp
            except (OSError, ValueError):
                pass
            return self._zone


def answer(zone: dict, wire: bytes, limit: int | None) -> bytes | None:
    """The reply to one query (None: stay silent). `limit`: the UDP size, None on TCP."""
    q = dns.message.from_wire(wire)
    r = dns.message.make_response(q)
    r.flags |= dns.flags.AA
    name = q.question[0].name.to_text(omit_final_dot=True).lower()
    rdtype = q.question[0].rdtype
    entry = zone.get(name)
    print(f"query {name} {dns.rdatatype.to_text(rdtype)} {'udp' if limit else 'tcp'}", flush=True)
    if entry is None:
        r.set_rcode(dns.rcode.NXDOMAIN)
    elif entry.get("drop"):
        return None
    elif entry.get("rcode"):
        r.set_rcode(dns.rcode.from_text(entry["rcode"]))
    elif rdtype == dns.rdatatype.A and entry.get("a"):
        r.answer.append(dns.rrset.from_text_list(q.question[0].name, entry.get("ttl", 3), dns.rdataclass.IN,
                                                 dns.rdatatype.A, entry["a"]))
    if entry and entry.get("records") and rdtype == dns.rdatatype.A:
        wire = _raw_answer(r, entry["records"], entry.get("ttl", 3))  # repeats allowed, as a hostile server may
        if limit is not None and len(wire) > 512:
            r.answer = []
            r.flags |= dns.flags.TC
            return r.to_wire()
        return wire
    if limit is not None:
        size = max(512, q.payload if q.edns >= 0 else 512)
        try:
            return r.to_wire(max_size=size)
        except dns.exception.TooBig:
            r.answer = []
            r.flags |= dns.flags.TC
    return r.to_wire()


def serve(zone_path: str, address: str = "0.0.0.0", port: int = 53):
    """Start the UDP and TCP servers on threads of this process; returns both (their
    server_address gives the port when 0 was asked for; shutdown() stops them)."""
    zone = Zone(zone_path)

    class Udp(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            data, sock = self.request
            out = answer(zone.get(), data, 512)
            if out is not None:
                sock.sendto(out, self.client_address)

    class Tcp(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            head = self.rfile.read(2)
            if len(head) < 2:
                return
            out = answer(zone.get(), self.rfile.read(struct.unpack(">H", head)[0]), None)
            if out is not None:
                self.wfile.write(struct.pack(">H", len(out)) + out)

    socketserver.ThreadingUDPServer.allow_reuse_address = True
    socketserver.ThreadingTCPServer.allow_reuse_address = True
    udp = socketserver.ThreadingUDPServer((address, port), Udp)
    tcp = socketserver.ThreadingTCPServer((address, udp.server_address[1]), Tcp)
    for server in (udp, tcp):
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    return udp, tcp


def _raw_answer(r, records: list[str], ttl: int) -> bytes:
    """The reply with these A records written one by one (dnspython would merge repeats):
    each is the question's name (a pointer to offset 12), type A, class IN, ttl, 4 bytes."""
    head = r.to_wire()
    count = struct.pack(">H", len(records))
    rrs = b"".join(struct.pack(">HHHIH", 0xC00C, 1, 1, ttl, 4) + socket.inet_aton(a) for a in records)
    return head[:6] + count + head[8:] + rrs


def main() -> None:
    ap = argparse.ArgumentParser(prog="dnsserver")
    ap.add_argument("--zone", required=True)
    ap.add_argument("--address", default="0.0.0.0")
    ap.add_argument("--port", type=int, default=53)
    args = ap.parse_args()
    serve(args.zone, args.address, args.port)
    print("ready", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    socket.setdefaulttimeout(5)
    main()
