"""The demo's results as one JSON document, the input of `report_html.render`: per step
its table (`Comparison.to_json`, with replay commands), duration, the leak/loss record of
its transition, and the versions in force (observed from `cordon status --json`, expected
from the model).

    doc = report_document([step_record(step, lab, agent.status(), story.model) ...],
                          config=agent.config, generated="2026-12-01T22:00:00Z")
"""
from __future__ import annotations

import hashlib
import json


def _loop_json(loop) -> dict | None:
    if loop is None:
        return None
    return {"rounds": loop.rounds, "clean": loop.clean,
            "leaks": [{"at": round(t, 3), "probe": p.label(), "detail": d} for t, p, d in loop.leaks],
            "losses": [{"at": round(t, 3), "probe": p.label(), "detail": d} for t, p, d in loop.losses],
            "unknown": [{"at": round(t, 3), "probe": p.label(), "detail": d} for t, p, d in loop.unknown],
            "crossed": [{"at": round(t, 3), "probe": p.label(), "detail": d} for t, p, d in loop.crossed],
            "first_rule": None if loop.first_rule is None else round(loop.first_rule, 3)}


def versions(status: dict | None, model=None, config: dict | None = None) -> dict:
    """What `cordon status --json` said right after a step, next to what the model expects."""
    st = status or {}
    pol = st.get("policy") or {}
    out = {"state": st.get("state"), "mode": st.get("mode"),
           "stored": pol.get("stored_version"), "enforced": pol.get("enforced_version"),
           "pending": pol.get("pending_version"), "agent": (st.get("agent") or {}).get("version"),
           "config": config_fingerprint(config) if config else None}
    if model is not None:
        out["expected"] = {"state": model.state, "mode": model.mode,
                           "stored": (model.stored or {}).get("version"),
                           "enforced": (model.enforced or {}).get("version")
                           if model.state == "isolated" and model.mode == "standard" else None}
    return out


def config_fingerprint(config: dict) -> str:
    """First 12 hex digits of the SHA-256 of the agent config (canonical JSON)."""
    canon = json.dumps(config, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canon.encode()).hexdigest()[:12]


def step_record(step, lab=None, status: dict | None = None, model=None, config: dict | None = None) -> dict:
    return {"title": step.title, "explanation": step.explanation, "ok": step.ok,
            "seconds": step.seconds, "problems": list(step.problems),
            "transition": _loop_json(step.loop), "versions": versions(status, model, config),
            "table": step.comparison.to_json(lab)}


def failed_record(title: str, problem: str, seconds: float | None = None) -> dict:
    """A step that broke before it had a table (an exception, a teardown left-over)."""
    return {"title": title, "explanation": "", "ok": False, "seconds": seconds, "problems": [problem],
            "transition": None, "versions": None, "table": None}


def report_document(steps: list[dict], title: str = "Cordon lab demo", generated: str = "",
                    config: dict | None = None, lab: str = "", figures: dict | None = None) -> dict:
    """`figures`: named measurements of the run (seconds), shown as a table (the VM tier's
    boot and reboot times)."""
    return {"kind": "cordon-report", "title": title, "generated": generated, "lab": lab,
            "sensor_type": (config or {}).get("sensor_type"),
            "config": config_fingerprint(config) if config else None,
            "ok": all(s["ok"] for s in steps) and bool(steps), "steps": steps,
            "figures": dict(figures or {})}


def from_tables(tables: list[dict], title: str = "Cordon reachability") -> dict:
    """A report from the bare list that `demo --json` writes (tables only)."""
    steps = [{"title": t.get("title", ""), "explanation": "", "ok": t.get("incorrect", 1) == 0,
              "seconds": None, "problems": [], "transition": None, "versions": None, "table": t}
             for t in tables]
    return report_document(steps, title=title)
