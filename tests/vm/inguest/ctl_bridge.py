"""Run inside the guest: carries the harness's responder control requests (SEEN, PING,
PORTS) between the virtio serial port /dev/virtio-ports/cordon.responder (host side: a unix
socket of QEMU) and the guest responder's unix control socket. Lines are "ID REQUEST" and
"ID ANSWER", so late answers are never mistaken for another request's.
"""
import os
import socket
import sys
import threading
import time

PORT = "/dev/virtio-ports/cordon.responder"
CTL = sys.argv[1] if len(sys.argv) > 1 else "/run/cordon-test/responder.ctl"
lock = threading.Lock()


def answer(out, ident, request):
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(30)  # a guard against a hung responder; the host's caller decides
            s.connect(CTL)
            s.sendall(request.encode() + b"\n")
            reply = s.makefile().readline().strip() or "ERR empty"
    except OSError as e:
        reply = f"ERR {e}"
    with lock:
        os.write(out, f"{ident} {reply}\n".encode())


def main():
    while True:
        fd = os.open(PORT, os.O_RDWR)
        buf = b""
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:  # host side not connected: try again shortly
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                ident, _, request = line.decode(errors="replace").strip().partition(" ")
                if ident:
                    threading.Thread(target=answer, args=(fd, ident, request), daemon=True).start()
        os.close(fd)
        time.sleep(0.2)


if __name__ == "__main__":
    main()
