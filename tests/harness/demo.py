"""`python -m tests.harness demo`: the lab, a real nats-server on the vendor host, two real
agents and `cordon-console`, and the story told as truth tables — normal -> policy v1 ->
isolate all over the vendor channel -> live policy v2 on both sensor types -> strict ->
offline release with a token -> release. Exit 1 on any mismatch. Everything happens in
the lab's namespaces and is torn down at the end."""
from __future__ import annotations

import sys
import time

from .console_story import TOPOLOGY, ConsoleStory
from .lab import Lab
from .report import report_document, step_record
from .report_html import render
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


def demo(json_path=None, junit_path=None, sensor_type: str = "endpoint_sensor", keep: bool = False,
         html_path=None) -> int:
    t0 = time.monotonic()
    steps, plan, records = [], [], []
    with Lab(topology=TOPOLOGY, log=_progress) as lab:
        cs = ConsoleStory(lab, [POLICY_V1, POLICY_V2], say=lambda m: print(m, end="", flush=True))
        try:
            _progress(f"nats-server on {cs.broker.url}; agents ep1 (endpoint_sensor, {lab.ns('endpoint')}) "
                      f"and ep2 (security_agent, {lab.ns('endpoint2')})")
            story = cs.start()
            _progress(f"{len(story.probes)} probes per table (ep1)")
            plan = cs.steps()
            for name, run in plan:
                _progress(f"step: {name} ...")
                step = run()
                steps.append(step)
                if html_path:
                    records.append(step_record(step, lab, cs.ep1.status() if cs.ep1.alive else None,
                                               story.model, cs.ep1.config))
                print(step.render(lab) + "\n", flush=True)
                _progress(f"step: {name}: {'ok' if step.ok else 'MISMATCH'} ({step.seconds:.1f}s)")
            if html_path:
                with open(html_path, "w") as f:
                    f.write(render(report_document(
                        records, generated=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        config=cs.ep1.config, lab=lab.runid)))
                _progress(f"report: {html_path}")
            if keep and not all(s.ok for s in steps):
                input(f"lab {lab.runid} kept up for the replay commands; Enter tears it down ")
        finally:
            cs.close()
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
    return 1 if bad or len(steps) < len(plan) else 0
