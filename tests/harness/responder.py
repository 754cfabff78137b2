"""Echo responder run inside one lab namespace:
`ip netns exec NS python -m tests.harness.responder --ctl PATH --ports 22,443`.

TCP and UDP echo on IPv4 and IPv6 for each port (a line / datagram holding a nonce is
recorded and echoed back), ICMP echo requests recorded through raw sockets (the kernel
answers them). A Unix control socket (a file path, so reachable from any network
namespace and never affected by isolation) answers `SEEN nonce`, `PING`, `PORTS p,q`.
"""
from __future__ import annotations

import argparse
import asyncio
import ctypes
import os
import signal
import socket
import struct

MAX_LINE = 256
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)


MAX_SEEN = 1_000_000


class Responder:
    """`seen_log`: a file every new nonce is appended to and that is read back at start,
    so `SEEN` also answers for what an earlier run of the responder received (a guest
    that rebooted: the nonces that reached its old responder during the shutdown)."""

    def __init__(self, seen_log: str | None = None) -> None:
        self.seen: set[str] = set()
        self.ports: set[int] = set()
        self._keep: list = []  # servers, transports, raw sockets
        self._log = None
        if seen_log:
            os.makedirs(os.path.dirname(seen_log) or ".", exist_ok=True)
            with open(seen_log, "a+", encoding="ascii", errors="replace") as f:
                f.seek(0)
                self.seen.update(line.strip() for line in f if line.strip())
            self._log = os.open(seen_log, os.O_WRONLY | os.O_APPEND)

    def record(self, data: bytes) -> str:
        nonce = data.decode("ascii", "replace").strip().strip("\0")
        if nonce and nonce not in self.seen and len(self.seen) < MAX_SEEN:
            self.seen.add(nonce)
            if self._log is not None and nonce.isalnum():  # one line per nonce: nothing else
                os.write(self._log, nonce.encode() + b"\n")  # in the kernel at once; an orderly reboot syncs it
        return nonce

    async def listen(self, port: int) -> None:
        if port in self.ports:
            return
        self.ports.add(port)
        loop = asyncio.get_running_loop()
        for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
            t = socket.socket(family, socket.SOCK_STREAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # probes may send from this port
            if family == socket.AF_INET6:
                t.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            t.bind((addr, port))
            self._keep.append(await asyncio.start_server(self._tcp, sock=t, backlog=512))
            u = socket.socket(family, socket.SOCK_DGRAM)
            u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
            else:
                u.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
            u.bind((addr, port))
            u.setblocking(False)
            loop.add_reader(u.fileno(), self._udp, u)
            self._keep.append(u)

    def _udp(self, u: socket.socket) -> None:
        """Echo a datagram from the address it was sent to: a host with several
        addresses would otherwise answer from another one and the client drop it."""
        try:
            data, anc, _flags, peer = u.recvmsg(MAX_LINE, 256)
        except (BlockingIOError, ConnectionError):
            return
        self.record(data)
        reply_anc = []
        for level, kind, blob in anc:
            if level == socket.IPPROTO_IP and kind == IP_PKTINFO:
                # struct in_pktinfo {ifindex; spec_dst; addr}: answer from addr
                reply_anc = [(level, kind, struct.pack("=i4s4s", 0, blob[8:12], b"\0" * 4))]
            elif level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO:
                reply_anc = [(level, kind, blob[:16] + struct.pack("=i", 0))]
        try:
            u.sendmsg([data], reply_anc, 0, peer)
        except OSError:
            pass

    async def _tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                self.record(line[:MAX_LINE])
                writer.write(line[:MAX_LINE])
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except asyncio.CancelledError:
            # the responder is stopping with this connection open: end quietly. (Re-raising
            # makes Python 3.11's stream callback print a traceback per open connection.)
            pass
        finally:
            writer.close()

    def watch_icmp(self) -> None:
        loop = asyncio.get_running_loop()
        for family, proto, echo_request, header in (
            (socket.AF_INET, socket.IPPROTO_ICMP, 8, None),
            (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 0),
        ):
            s = socket.socket(family, socket.SOCK_RAW, proto)
            s.setblocking(False)
            loop.add_reader(s.fileno(), self._icmp, s, echo_request, header)
            self._keep.append(s)

    def _icmp(self, s: socket.socket, echo_request: int, header: int | None) -> None:
        try:
            data = s.recv(2048)
        except BlockingIOError:
            return
        off = (data[0] & 0x0F) * 4 if header is None else header  # IPv4 raw includes the IP header
        if len(data) > off + 8 and data[off] == echo_request:
            self.record(data[off + 8:])

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                cmd, _, arg = line.decode().strip().partition(" ")
                if cmd == "SEEN":
                    answer = "YES" if arg in self.seen else "NO"
                elif cmd == "PING":
                    answer = "PONG"
                elif cmd == "PORTS":
                    try:
                        for p in arg.split(","):
                            await self.listen(int(p))
                        answer = "OK"
                    except (OSError, ValueError) as e:
                        answer = f"ERR {e}"
                else:
                    answer = "ERR unknown command"
                writer.write((answer + "\n").encode())
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()


async def serve(ctl: str, ports: list[int], seen_log: str | None = None) -> None:
    r = Responder(seen_log)
    for p in ports:
        await r.listen(p)
    r.watch_icmp()
    if os.path.exists(ctl):
        os.unlink(ctl)
    server = await asyncio.start_unix_server(r.control, path=ctl)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main() -> None:
    ap = argparse.ArgumentParser(prog="responder")
    ap.add_argument("--ctl", required=True, help="path of the Unix control socket")
    ap.add_argument("--ports", default="", help="comma-separated TCP/UDP ports")
    ap.add_argument("--seen-log", default=None, help="file that keeps the nonces received across restarts")
    args = ap.parse_args()
    # Die with the harness even if it is killed with SIGKILL (PR_SET_PDEATHSIG).
    ctypes.CDLL(None).prctl(1, signal.SIGTERM)
    if os.getppid() == 1:
        return
    asyncio.run(serve(args.ctl, [int(p) for p in args.ports.split(",") if p], args.seen_log))


if __name__ == "__main__":
    main()
