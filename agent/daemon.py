"""`cordon run`: restore enforcement first, then serve the control socket and watch
for tampering until SIGTERM/SIGINT. Stopping never lifts isolation."""
from __future__ import annotations

import os
import signal
import socket
import threading

from agent import channel as console_channel
from agent import instance, log as audit
from agent.config import Config
from agent.engine import Engine
from agent.errors import ApplyFailed
from agent.log import RateLimited, configure
from agent.server import ControlServer
from agent.store import Store
from platforms import backend_class
from platforms.base import BackendUnavailable

VERIFY_INTERVAL_S = 0.5   # tamper check when the backend offers no change events
EVENT_VERIFY_S = 5.0      # slow safety-net check when it does
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.2, 5.0


def sd_notify(message: str) -> None:
    """Tell systemd (Type=notify) about readiness / watchdog; a no-op elsewhere."""
    target = os.environ.get("NOTIFY_SOCKET")
    if not target:
        return
    if target.startswith("@"):
        target = "\0" + target[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        try:
            s.sendto(message.encode(), target)
        except OSError:
            pass


def watch(engine: Engine, stop: threading.Event, log) -> None:
    """Re-apply within a second when the rules in force differ from the plan."""
    events = engine.backend.capabilities().change_events
    watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
    backoff = 0.0
    while not stop.is_set():
        if backoff:
            stop.wait(backoff)  # the firewall refused a repair: retry, but never spin
        elif events:
            engine.backend.wait_for_change(min(EVENT_VERIFY_S, watchdog_s) if watchdog_s else EVENT_VERIFY_S)
        else:
            stop.wait(VERIFY_INTERVAL_S)
        if stop.is_set():
            return
        try:
            engine.reconcile()
            backoff = 0.0
        except Exception as exc:  # the watch must outlive any single failure
            if not isinstance(exc, ApplyFailed):  # ApplyFailed is already logged as apply_failed
                log.error("watch_failed", error=repr(exc))
            backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, backoff * 2))
        report_degraded(engine)
        if watchdog_s:
            sd_notify("WATCHDOG=1")


_last_status: list[str | None] = [None]


def report_degraded(engine: Engine) -> None:
    """STATUS= for systemd whenever the engine's degraded reason changes."""
    reason = engine.degraded
    if reason != _last_status[0]:
        _last_status[0] = reason
        sd_notify(f"STATUS=degraded: {reason}" if reason else "STATUS=enforcing the stored state")


def run(config: Config) -> int:
    # Before anything touches the state dir, the socket or the firewall: a safe dir, and
    # only one agent per state dir (a second one must not take the socket over).
    instance.check_state_dir(config.state_dir)
    lock_fd = instance.acquire(config.state_dir)  # noqa: F841 - held until the process exits
    log = configure(config.audit_log)
    backend = backend_class(config.backend)(state_dir=config.state_dir)
    try:
        probes = backend.probe()  # kernel-dependent capabilities, tried in this namespace
    except BackendUnavailable:
        raise
    except Exception as exc:  # a failed probe must not stop an agent that may be isolating
        log.error("backend_probe_failed", error=repr(exc))
        probes = []
    log.info("backend_probed", backend=backend.name,
             probes=[{"name": p.name, "present": p.present, "evidence": p.evidence} for p in probes])
    engine = Engine(config, Store(config.state_dir), backend, log, health=audit.health)
    stop = threading.Event()

    def on_signal(signum, _frame):
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    try:
        engine.start()   # enforcement first: nothing is served before it holds
    except BackendUnavailable:
        raise    # this backend cannot run here at all: exit 1 with the reason
    except Exception as exc:  # anything else: stay up in the most isolated state; the watch retries
        engine.degraded = engine.degraded or f"start failed: {exc}"
        log.error("start_degraded", error=repr(exc))
    report_degraded(engine)
    server = ControlServer(config.control_socket, engine, log, rejections=RateLimited(log))
    # The release gate is in place before the socket serves; the channel has its own thread.
    channel = console_channel.start(config, engine, server, log)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    threading.Thread(target=watch, args=(engine, stop, log), name="watch", daemon=True).start()
    log.info("agent_started", pid=os.getpid(), backend=backend.name, sensor_type=config.sensor_type,
             state=engine.state.state, mode=engine.state.mode)
    sd_notify("READY=1")
    while not stop.wait(3600):
        pass
    sd_notify("STOPPING=1")
    if channel is not None:
        channel.stop()
    server.close()
    backend.close()    # handles only: isolation stays in force where the platform allows
    log.info("agent_stopped", state=engine.state.state)
    return 0
