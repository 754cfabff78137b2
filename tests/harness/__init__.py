"""Cordon's network-namespace test harness: lab, probes, expected tables, agent driver."""
from .lab import DEFAULT_TOPOLOGY, Host, Lab, sweep
from .probe import ALLOWED, BLOCKED, ERROR, Probe, ProbeLoop, Result, Session, probe, run_probes

__all__ = ["DEFAULT_TOPOLOGY", "Host", "Lab", "sweep", "ALLOWED", "BLOCKED", "ERROR",
           "Probe", "ProbeLoop", "Result", "Session", "probe", "run_probes"]
