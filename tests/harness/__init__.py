"""Cordon's network-namespace test harness: real packets between namespaces it creates.

    with Lab() as lab:                                    # tests.harness.lab
        lab.probe("endpoint", "vendor", "tcp", 443, 4)    # -> Result(verdict=ALLOWED|BLOCKED|ERROR)
        lab.probe_all([Probe(...), ...])                  # concurrent, ~1 timeout per batch
        agent = Agent(lab, sensor_type="endpoint_sensor").start()   # tests.harness.driver
        story = Story(lab, agent, policies=[doc])         # tests.harness.scenarios
        step = story.isolate(); assert step.ok, step.render(lab)

Modules: netns (namespace helpers), lab (topology, responders, sweep), responder (echo
servers), probe (probes, ProbeLoop, Session), expect (independent expected tables),
table (truth tables, JSON, JUnit), driver (the real agent via the CLI), scenarios, demo.
"""
from . import netns
from .errors import CordonWrong, HarnessError
from .lab import DEFAULT_TOPOLOGY, Host, Lab, sweep
from .probe import ALLOWED, BLOCKED, ERROR, Probe, ProbeLoop, Result, Session, probe, run_probes

__all__ = ["netns", "CordonWrong", "HarnessError", "DEFAULT_TOPOLOGY", "Host", "Lab", "sweep", "ALLOWED", "BLOCKED", "ERROR",
           "Probe", "ProbeLoop", "Result", "Session", "probe", "run_probes"]
