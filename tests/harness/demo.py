"""`python -m tests.harness demo`: the lab, the real agent, and the story told as truth
tables — normal -> isolated -> policy update -> strict -> released. Exit 1 on any
mismatch. Everything happens in the lab's namespaces and is torn down at the end."""
from __future__ import annotations

import sys
import time

from .driver import Agent
from .lab import Lab
from .scenarios import Story
from .table import dump_json, junit_xml

POLICY_V1 = {
    "version": 1, "enabled": True,
    "inbound": [{"name": "Jump host RDP", "protocol": "tcp", "address": "203.0.113.5", "ports": "3389"}],
    "outbound": [{"name": "RMM over SSH", "protocol": "tcp", "address": "203.0.113.20", "ports": "22"}],
}
POLICY_V2 = {
    "version": 2, "enabled": True,
    "inbound": [{"name": "Jump host RDP+SSH", "protocol": "tcp", "address": "203.0.113.5", "ports": "22, 3389"}],
    "outbound": [{"name": "Self-hosted RMM", "protocol": "any", "address": "203.0.113.20", "ports": "any"}],
}


def _progress(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def demo(json_path=None, junit_path=None, sensor_type: str = "endpoint_sensor", keep: bool = False) -> int:
    t0 = time.monotonic()
    steps = []
    with Lab(log=_progress) as lab:
        agent = Agent(lab, sensor_type=sensor_type)
        try:
            _progress(f"starting the agent in {lab.ns('endpoint')} ({sensor_type})")
            agent.start()
            story = Story(lab, agent, policies=[POLICY_V1, POLICY_V2])
            _progress(f"{len(story.probes)} probes per table")
            plan = [
                ("baseline", story.baseline),
                ("policy v1 while normal", lambda: story.policy_update(POLICY_V1)),
                ("isolate", story.isolate),
                ("policy v2 while isolated", lambda: story.policy_update(POLICY_V2)),
                ("strict", story.strict),
                ("release", story.release),
            ]
            for name, run in plan:
                _progress(f"step: {name} ...")
                step = run()
                steps.append(step)
                print(step.render(lab) + "\n", flush=True)
                _progress(f"step: {name}: {'ok' if step.ok else 'MISMATCH'} ({step.seconds:.1f}s)")
            if keep and not all(s.ok for s in steps):
                input(f"lab {lab.runid} kept up for the replay commands; Enter tears it down ")
        finally:
            agent.close()
    if json_path:
        with open(json_path, "w") as f:
            f.write(dump_json([s.comparison for s in steps]))
    if junit_path:
        with open(junit_path, "w") as f:
            f.write(junit_xml([s.comparison for s in steps]))
    bad = [s.title for s in steps if not s.ok]
    print("SUMMARY: " + ("all steps match" if not bad else f"mismatches in: {', '.join(bad)}")
          + f"; {sum(s.comparison.correct for s in steps)} correct, "
          f"{sum(s.comparison.incorrect for s in steps)} incorrect; {time.monotonic() - t0:.1f}s, lab torn down")
    return 1 if bad or len(steps) < 6 else 0
