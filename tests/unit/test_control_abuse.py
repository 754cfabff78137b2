"""Issue 14 / DESIGN §7: the control channel under abuse by local unprivileged users.
Real Unix socket, real peer credentials, real uids (tests.users); in-memory firewall."""
import os
import statistics
import threading
import time

import pytest

from agent import client
from agent.errors import InvalidInput
from tests.control_client import abusers, exchange, memory_agent, request
from tests.users import NOBODY, as_user

root_only = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to another uid")


@pytest.fixture
def agent(tmp_path):
    with memory_agent(tmp_path / "state", prefix="cordon-abuse-") as served:
        yield served


@pytest.mark.parametrize("data, code, field", [
    (request("isolate", {"Strict": True}), "invalid", "args.Strict"),
    (request("release", {"reason": "x", "force": True}), "invalid", "args.force"),
    (request("status", {"verbose": True}), "invalid", "args.verbose"),
    (b'{"v": true, "cmd": "status"}\n', "bad_request", None),
    (b'{"v": 1.0, "cmd": "status"}\n', "bad_request", None),
    (b'{"v": 1, "cmd": "status", "extra": 1}\n', "bad_request", None),
    (b'{"v": 1, "cmd": "status", "cmd": "isolate"}\n', "bad_request", None),
    (b'{"v": 1, "cmd": "status", "args": ' + b"[" * 5000 + b"]" * 5000 + b"}\n", "bad_request", None),
    (b'{"v": 1, "cmd": "policy_set", "args": {"policy": ' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}}\n",
     "bad_request", None),
    (b'{"v": 1' + b"0" * 5000 + b', "cmd": "status"}\n', "bad_request", None),
    (b'{"v": 1, "cmd": "status\xff\xfe"}\n', "bad_request", None),
    (b'{"v": 1, "cmd": "policy_set", "args": {"policy": {"version": 99999999999999999999999}}}\n', "invalid", "version"),
])
def test_malformed_requests_get_an_error_reply_naming_the_problem(agent, data, code, field):
    path, engine, backend = agent
    reply = exchange(path, data)
    assert reply["ok"] is False and reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    if field:
        assert field in [e["field"] for e in reply["error"]["errors"]], reply
    assert backend.installed is None and engine.state.state == "normal"


def test_bad_request_maps_to_exit_2_in_the_client(agent):
    path, *_ = agent
    with pytest.raises(InvalidInput):
        client.call(path, "isolate", {"Strict": True})


def test_linear_duplicate_key_check():
    """Defect: the duplicate-key check was quadratic (60,000 keys took 47 s)."""
    from agent.policy import parse_json
    doc = "{" + ",".join(f'"k{i}": {i}' for i in range(60_000)) + "}"
    t0 = time.process_time()
    parse_json(doc)
    one = time.process_time() - t0
    doc2 = "{" + ",".join(f'"k{i}": {i}' for i in range(120_000)) + "}"
    t0 = time.process_time()
    parse_json(doc2)
    two = time.process_time() - t0
    print(f"duplicate-key check: 60k keys {one:.3f} s cpu, 120k keys {two:.3f} s cpu")
    with pytest.raises(InvalidInput) as info:
        parse_json('{"a": 1, "b": 2, "a": 3}')
    assert info.value.errors[0].field == "a"


def test_200_concurrent_status_clients_get_ok_or_busy_never_a_reset(agent):
    path, *_ = agent
    outcomes = []
    lock = threading.Lock()
    go = threading.Event()

    def one():
        go.wait()
        try:
            reply = exchange(path, request("status"))
            out = "ok" if reply["ok"] else reply["error"]["code"]
        except Exception as exc:  # a reset, a refused connect or silence
            out = repr(exc)
        with lock:
            outcomes.append(out)

    threads = [threading.Thread(target=one) for _ in range(200)]
    [t.start() for t in threads]
    go.set()
    [t.join() for t in threads]
    counts = {k: outcomes.count(k) for k in set(outcomes)}
    print(f"200 concurrent status clients: {counts}")
    assert set(outcomes) <= {"ok", "busy"}, counts
    assert outcomes.count("ok") > 0


@root_only
@pytest.mark.parametrize("n", [20, 64])
def test_idle_and_flooding_unprivileged_clients_cannot_stop_root(agent, n):
    path, engine, backend = agent
    os.chmod(path, 0o666)
    with abusers(path, n, NOBODY):
        latencies = []
        for i in range(6):
            t0 = time.monotonic()
            if i % 2 == 0:
                st = client.call(path, "isolate", {"strict": i % 4 == 0, "reason": f"round {i}"})
                assert st["state"] == "isolated" and backend.installed is not None
            else:
                st = client.call(path, "release", {})
                assert st["state"] == "normal" and backend.installed is None
            latencies.append(time.monotonic() - t0)
            assert client.call(path, "status")["state"] == st["state"]
        print(f"root latency with {n} idle + {n} flooding uid {NOBODY} clients: "
              f"median {statistics.median(latencies) * 1000:.1f} ms, max {max(latencies) * 1000:.1f} ms")


@root_only
def test_unprivileged_user_is_rate_limited_with_busy_not_a_reset(agent):
    path, *_ = agent
    os.chmod(path, 0o666)

    def hammer():
        codes = set()
        for _ in range(300):
            try:
                reply = exchange(path, request("status"))
            except Exception:
                return 98
            codes.add("ok" if reply["ok"] else reply["error"]["code"])
        return 0 if codes == {"ok", "busy"} else 97

    assert as_user(NOBODY, hammer) == 0
    assert client.call(path, "status")["state"] == "normal"  # root still served at once
