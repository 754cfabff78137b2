"""The VM tier's CtlProxy (tests/vm/lab.py) forwards responder control requests to the guest.
A request the guest never answers must not keep a thread once its asker has gone: under load
each waiter's guard grows with the load, and waiters piled up to 18,000 threads in one run."""
import socket
import threading
import time

from tests.harness.lab import load_factor
from tests.vm.lab import CtlProxy


def test_a_waiter_ends_when_its_asker_hangs_up(tmp_path):
    port_path, listen_path = str(tmp_path / "port"), str(tmp_path / "ctl")
    guest = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # a guest that reads and never answers
    guest.bind(port_path)
    guest.listen(1)
    forwarded = threading.Semaphore(0)

    def read_forever():
        conn, _ = guest.accept()
        with conn, conn.makefile("rb") as f:
            for _ in f:
                forwarded.release()
    threading.Thread(target=read_forever, daemon=True).start()
    proxy = CtlProxy(listen_path, port_path)
    try:
        before = threading.active_count() + 1  # the guest port's reader, once connected
        for _ in range(20):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as c:
                c.connect(listen_path)
                c.sendall(b"SEEN 0123456789abcdef\n")
                assert forwarded.acquire(timeout=20 * load_factor()), "the proxy did not forward the request"
        # Each asker hung up at once; within a few 0.2 s checks every waiter is gone (the
        # guard alone would keep them 30 s x load).
        deadline = time.monotonic() + 20 * load_factor()
        while threading.active_count() > before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert threading.active_count() <= before + 1, threading.enumerate()
    finally:
        proxy.close()
        guest.close()
