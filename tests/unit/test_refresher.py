"""The engine's side of DESIGN §11 with an in-memory backend and a fake resolver: names
resolved before a plan is applied, refreshed when due, expired exceptions dropped with
an audit event, a kernel lapse not taken for tamper."""
import time

from agent.config import parse_config
from agent.engine import Engine
from agent.refresher import Refresher
from agent.store import Store
from platforms.plan import HostAddresses
from tests.harness.waits import wait_for_clock
from tests.unit.memory_backend import MemoryBackend

NAME = "rmm.example.com"


class Log:
    def __init__(self):
        self.events = []

    def _log(self, event, **kw):
        self.events.append((event, kw))
    info = warning = error = _log

    def of(self, kind):
        return [kw for e, kw in self.events if e == kind]


def engine(tmp_path, answers):
    config = parse_config({"vendor": {"endpoints": [{"address": "198.51.100.10", "protocol": "tcp", "ports": "443"}],
                                      "dns_servers": ["192.0.2.53"]},
                           "exceptions": {"min_host_ttl": 1}})
    log = Log()
    e = Engine(config, Store(str(tmp_path)), MemoryBackend(), log)
    e.hosts._resolve = lambda host, servers, min_ttl: answers[host]()
    e.start()
    return e, log


def exception_atoms(e):
    return {a for a in e.backend.installed[1] if a[0] == "out" and a[2].startswith("203.")}


def test_names_resolve_before_isolating_and_follow_a_change(tmp_path):
    current = {"a": ("203.0.113.20",)}
    answers = {NAME: lambda: HostAddresses(NAME, current["a"], time.time() + 1, None, 1)}
    e, log = engine(tmp_path, answers)
    e.set_policy({"enabled": True, "outbound": [{"protocol": "tcp", "host": NAME, "ports": "443"}]}, {})
    e.isolate("standard", None, {})
    assert exception_atoms(e) == {("out", "tcp", "203.0.113.20/32", 443, 443)}
    current["a"] = ("203.0.113.21", "203.0.113.22")
    r = Refresher(e)
    assert r.next_due() is not None and r.next_due() <= time.time() + 1
    wait_for_clock(r.next_due())
    assert r.refresh() is True
    assert exception_atoms(e) == {("out", "tcp", f"203.0.113.{i}/32", 443, 443) for i in (21, 22)}
    assert e.status()["exceptions"]["hosts"][0]["addresses"] == ["203.0.113.21", "203.0.113.22"]
    assert log.of("rules_refreshed") and not log.of("tamper_detected")


def test_a_failed_name_allows_nothing(tmp_path):
    answers = {NAME: lambda: HostAddresses(NAME, error="NXDOMAIN: the name does not exist")}
    e, _ = engine(tmp_path, answers)
    e.set_policy({"enabled": True, "outbound": [{"protocol": "tcp", "host": NAME, "ports": "443"}]}, {})
    e.isolate("standard", None, {})
    assert exception_atoms(e) == set()
    assert e.status()["backend"]["enforcing"] is True
    assert e.status()["exceptions"]["hosts"][0]["error"].startswith("NXDOMAIN")


def test_expiry_drops_the_exception_logs_it_once_and_is_not_tamper(tmp_path):
    e, log = engine(tmp_path, {})
    ends = time.time() + 1.5
    from agent.fields import format_utc
    e.set_policy({"enabled": True, "outbound": [{"name": "support", "protocol": "tcp", "address": "203.0.113.5",
                                                 "ports": "22", "expires_at": format_utc(ends)}]}, {})
    e.isolate("standard", None, {})
    assert exception_atoms(e) == {("out", "tcp", "203.0.113.5/32", 22, 22)}
    # The kernel's timeout ran out a moment before the agent's clock: that is not tamper.
    dhcp, atoms = e.backend.installed
    e.backend.installed = (dhcp, frozenset(a for a in atoms if a[2] != "203.0.113.5/32"))
    assert e.reconcile() is False and not log.of("tamper_detected")
    wait_for_clock(ends)
    r = Refresher(e)
    r.refresh()
    r.refresh()
    assert exception_atoms(e) == set()
    [event] = log.of("exception_expired")
    assert event["exception"] == "support" and event["expires_at"] == format_utc(ends)
    assert e.status()["exceptions"]["expiring"][0]["expired"] is True


def test_an_exception_gone_long_before_its_time_is_tamper(tmp_path):
    e, log = engine(tmp_path, {})
    from agent.fields import format_utc
    e.set_policy({"enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "22",
                                                 "expires_at": format_utc(time.time() + 600)}]}, {})
    e.isolate("standard", None, {})
    dhcp, atoms = e.backend.installed
    e.backend.installed = (dhcp, frozenset(a for a in atoms if a[2] != "203.0.113.5/32"))
    assert e.reconcile() is True and log.of("tamper_detected")
    assert exception_atoms(e) == {("out", "tcp", "203.0.113.5/32", 22, 22)}


def test_a_kernel_timeout_running_out_after_the_agent_clock_is_not_tamper(tmp_path):
    """The kernel drops an element at its own moment, after the agent's clock passed its
    expires_at (the batch went out after the timeout was computed): still in force a
    moment past its time is not tamper; the same flow still there long after it is."""
    e, log = engine(tmp_path, {})
    from agent.fields import format_utc
    ends = round(time.time()) + 2
    e.set_policy({"enabled": True, "outbound": [{"protocol": "tcp", "address": "203.0.113.5", "ports": "22",
                                                 "expires_at": format_utc(ends)}]}, {})
    e.isolate("standard", None, {})
    held = e.backend.installed
    wait_for_clock(ends + 0.3)
    assert e.reconcile() is False and not log.of("tamper_detected"), "a lapse a moment late is not tamper"
    # An excused lapse sends no event when the excuse ends: the watch looks again by then.
    from agent.daemon import EVENT_VERIFY_S, next_look_s
    assert e.recheck_at is not None and e.recheck_at <= ends + 2.0, "look again when its excuse ends, not later"
    now = time.time()
    assert 0 < next_look_s(e, 0, now) <= e.recheck_at - now + 0.05 < EVENT_VERIFY_S
    assert next_look_s(e, 0, e.recheck_at + 0.01) == EVENT_VERIFY_S, "once past, the usual safety net"
    dhcp, atoms = held
    e.backend.installed = (dhcp, atoms | {("out", "tcp", "203.0.113.99/32", 22, 22)})
    assert e.reconcile() is True and log.of("tamper_detected"), "a flow no plan holds is tamper at any moment"
    assert exception_atoms(e) == set()
    e.backend.installed = held
    wait_for_clock(ends + 2.5)
    assert e.reconcile() is True, "an expired exception still held seconds after its time is tamper"
    assert exception_atoms(e) == set()


def test_commands_and_status_do_not_wait_on_a_slow_resolver(tmp_path):
    """A refresh resolves outside the engine lock: while the resolvers hang (unreachable,
    or a hostile one answering slowly), status and release still go through, and the late
    answer does not bring back a name the release dropped."""
    import threading
    asked, go_on, answered = threading.Event(), threading.Event(), threading.Event()
    state = {"slow": False}

    def answer():
        if state["slow"]:
            asked.set()
            go_on.wait(60)  # with the engine lock held this times out and status waits for it
            answered.set()
        return HostAddresses(NAME, ("203.0.113.20",), time.time() + 1, None, 1)
    e, _ = engine(tmp_path, {NAME: answer})
    e.set_policy({"enabled": True, "outbound": [{"protocol": "tcp", "host": NAME, "ports": "443"}]}, {})
    e.isolate("standard", None, {})
    state["slow"] = True
    r = Refresher(e)
    while time.time() < r.next_due():
        time.sleep(0.02)
    worker = threading.Thread(target=r.refresh)
    worker.start()
    try:
        assert asked.wait(120), "the refresh never asked the resolver"
        # The resolver is blocked until go_on: if the engine lock were held, these would hang.
        assert e.status()["state"] == "isolated"
        e.release(None, {})
        assert e.status()["state"] == "normal"
        assert not answered.is_set(), "status and release waited for the resolver"
    finally:
        go_on.set()
        worker.join(120)
    assert not worker.is_alive()
    assert e.hosts.current() == {}  # the late answer for the released policy's name was pruned
    assert e.backend.installed is None or not exception_atoms(e)
