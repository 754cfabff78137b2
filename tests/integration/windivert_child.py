"""A process that holds a WinDivertBackend inside a test namespace (handles are scoped to
the network namespace of the process that opens them).

    ip netns exec cdn-xxx python -m tests.integration.windivert_child [STATE_DIR]

With STATE_DIR the backend is the agent's (it hands each plan to a guardian process,
platforms/windivert/guardian.py); without, this process alone holds the handles.

Reads one JSON command per line on stdin, answers one JSON line on stdout:
    {"cmd": "apply", "plan": Plan.to_json()}  -> {"ok": true, "seconds": 0.012}
    {"cmd": "clear"} | {"cmd": "read_back"} | {"cmd": "exit"}
Errors answer {"ok": false, "error": "..."}; the process keeps its handles.
"""
from __future__ import annotations

import json
import sys
import time

from platforms.plan import Plan
from platforms.windivert import WinDivertBackend


def main() -> int:
    backend = WinDivertBackend(state_dir=sys.argv[1] if len(sys.argv) > 1 else None)
    for line in sys.stdin:
        msg = json.loads(line)
        try:
            if msg["cmd"] == "apply":
                t0 = time.perf_counter()
                backend.apply(Plan.from_json(msg["plan"]))
                answer = {"ok": True, "seconds": time.perf_counter() - t0}
            elif msg["cmd"] == "clear":
                backend.clear()
                answer = {"ok": True}
            elif msg["cmd"] == "read_back":
                rb = backend.read_back()
                answer = {"ok": True, "present": rb.present, "digest": rb.digest, "details": rb.details}
            elif msg["cmd"] == "exit":
                backend.close()
                print(json.dumps({"ok": True}), flush=True)
                return 0
            else:
                answer = {"ok": False, "error": f"unknown cmd {msg['cmd']!r}"}
        except Exception as exc:  # noqa: BLE001 - reported to the test, which decides
            answer = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(answer), flush=True)
    backend.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
