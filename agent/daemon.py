"""`cordon run`: restore enforcement first, then serve the control channel and watch
for tampering until SIGTERM/SIGINT (or the Windows SCM's stop). Stopping never lifts isolation."""
from __future__ import annotations

import os
import signal
import socket
import threading
import time

from agent import channel as console_channel
from agent import instance, log as audit
from agent.config import Config
from agent.engine import Engine
from agent.errors import ApplyFailed
from agent.log import RateLimited, audit_log_path, configure, reopen_audit_log
from agent.refresher import Refresher
from agent.control import control_server
from agent.store import Store
from platforms import backend_class
from platforms.base import BackendUnavailable

VERIFY_INTERVAL_S = 0.5   # tamper check when the backend offers no change events
EVENT_VERIFY_S = 5.0      # slow safety-net check when it does
MIN_BACKOFF_S, MAX_BACKOFF_S = 0.2, 5.0
MIN_LOOK_S = 0.05         # never a busy wait


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


class ServiceNotifier:
    """systemd's view of the agent: READY=1 only once the firewall enforces what the stored
    state says (DESIGN §8), and a STATUS= line whenever what `systemctl status` should say
    changes."""

    def __init__(self) -> None:
        self.ready = False
        self._status = None

    def update(self, engine: Engine, problem: str | None = None) -> None:
        s = engine.state
        if problem is not None:
            text = f"NOT ENFORCING the stored state ({s.state}): {problem}; retrying"
        elif s.state != "isolated":
            text = "normal: no Cordon rules in force"
        elif s.mode == "strict":
            text = "isolated (strict): vendor only"
        else:
            version = s.isolation_policy.version if s.isolation_policy else None
            text = f"isolated (standard), policy {f'v{version}' if version else 'none'}"
        if problem is None and not self.ready:
            self.ready = True
            sd_notify(f"READY=1\nSTATUS={text}")
            self._status = text
        elif text != self._status:
            sd_notify(f"STATUS={text}")
            self._status = text


def next_look_s(engine: Engine, watchdog_s: float, now: float) -> float:
    """How long the watch may wait for a change event before it looks anyway: the safety
    net's EVENT_VERIFY_S, less for the watchdog, less again when a lapse was excused (an
    element re-added as its time came sends no event when the excuse ends)."""
    wait = min(EVENT_VERIFY_S, watchdog_s) if watchdog_s else EVENT_VERIFY_S
    if engine.recheck_at is not None and engine.recheck_at > now:  # past: the last look was after it
        wait = min(wait, max(MIN_LOOK_S, engine.recheck_at - now))
    return wait


def watch(engine: Engine, stop: threading.Event, log, notifier: ServiceNotifier | None = None) -> None:
    """Re-apply within a second when the rules in force differ from the plan."""
    events = engine.backend.capabilities().change_events
    watchdog_s = int(os.environ.get("WATCHDOG_USEC", "0")) / 2e6
    backoff = 0.0
    while not stop.is_set():
        if backoff:
            stop.wait(backoff)  # the firewall refused a repair: retry, but never spin
        elif events:
            engine.backend.wait_for_change(next_look_s(engine, watchdog_s, time.time()))
        else:
            stop.wait(VERIFY_INTERVAL_S)
        if stop.is_set():
            return
        try:
            engine.reconcile()
            backoff = 0.0
            if notifier is not None:
                notifier.update(engine)
        except Exception as exc:  # the watch must outlive any single failure
            if notifier is not None:
                notifier.update(engine, problem=str(exc) or repr(exc))
            if not isinstance(exc, ApplyFailed):  # ApplyFailed is already logged as apply_failed
                log.error("watch_failed", error=repr(exc))
            backoff = min(MAX_BACKOFF_S, max(MIN_BACKOFF_S, backoff * 2))
        if watchdog_s:
            sd_notify("WATCHDOG=1")


def run(config: Config, stop: threading.Event | None = None, on_serving=None) -> int:
    """The agent until SIGTERM/SIGINT, or until `stop` is set when a service manager drives it
    from another thread (Windows: platforms.windows.service); on_serving() is called once the
    control channel answers (the SCM's SERVICE_RUNNING)."""
    if stop is None and hasattr(signal, "SIGHUP"):
        signal.signal(signal.SIGHUP, lambda _signum, _frame: reopen_audit_log())  # before anything else
    # Before anything touches the state dir, the socket or the firewall: a safe dir, and
    # only one agent per state dir (a second one must not take the socket over).
    instance.check_state_dir(config.state_dir)
    lock_fd = instance.acquire(config.state_dir)  # held until the agent stops (or the process dies)
    try:
        return _run(config, stop, on_serving)
    finally:
        os.close(lock_fd)


def _run(config: Config, stop: threading.Event | None, on_serving) -> int:
    log = configure(audit_log_path(config.audit_log))
    notifier = ServiceNotifier()
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
    if stop is None:
        stop = threading.Event()

        def on_signal(signum, _frame):
            stop.set()

        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)

    start_problem = None
    try:
        engine.start()   # enforcement first: nothing is served before it holds
    except BackendUnavailable:
        raise    # this backend cannot run here at all: exit 1 with the reason
    except Exception as exc:  # anything else: stay up in the most isolated state; the watch retries
        engine.degraded = engine.degraded or f"start failed: {exc}"
        log.error("start_degraded", error=repr(exc))
    start_problem = engine.degraded  # the engine degrades instead of raising (issue 14)
    server = control_server(config.control_socket, engine, log, rejections=RateLimited(log))
    # The release gate is in place before the socket serves; the channel has its own thread.
    channel = console_channel.start(config, engine, server, log)
    threading.Thread(target=server.serve_forever, name="control", daemon=True).start()
    log.info("agent_started", pid=os.getpid(), backend=backend.name, sensor_type=config.sensor_type,
             state=engine.state.state, mode=engine.state.mode)
    notifier.update(engine, problem=start_problem)  # READY=1 only if the start enforced the state
    if on_serving is not None:
        on_serving()   # the SCM must see RUNNING even when degraded, or it could not stop the agent
    threading.Thread(target=watch, args=(engine, stop, log, notifier), name="watch", daemon=True).start()
    threading.Thread(target=Refresher(engine).loop, args=(stop,), name="refresh", daemon=True).start()
    while not stop.wait(3600):
        pass
    sd_notify("STOPPING=1")
    if channel is not None:
        channel.stop()
    server.close()
    backend.close()    # handles only: isolation stays in force where the platform allows
    log.info("agent_stopped", state=engine.state.state)
    return 0
