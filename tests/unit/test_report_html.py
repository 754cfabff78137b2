"""The HTML renderers on documents built here: one cell per probe, the class of each cell
from its expected/observed pair, replay commands on wrong cells, everything escaped, no
external reference; the fleet page marks the agents that differ from the majority."""
from __future__ import annotations

import itertools
from html.parser import HTMLParser

from console.fleet_html import render_fleet
from tests.harness.report import failed_record, from_tables, report_document
from tests.harness.report_html import render

HOSTILE = '<script>alert(1)</script>"\'&'


class Collect(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.tags, self.text = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> Collect:
    c = Collect()
    c.feed(page)
    return c


def _probes(observed_for):
    """Every (src,dst,proto,port,family) of a small matrix; observed_for(i) picks the outcome."""
    out = []
    combos = itertools.product((("endpoint", "vendor"), ("outside", "endpoint")),
                               (("tcp", 443), ("udp", 53), ("icmp", None)), (4, 6))
    for i, ((src, dst), (proto, port), fam) in enumerate(combos):
        expected = "BLOCKED" if src == "outside" else "ALLOWED"
        out.append({"src": src, "dst": dst, "proto": proto, "port": port, "family": fam, "sport": None,
                    "expected": expected, "observed": observed_for(i, expected), "detail": f"d{i}",
                    "seconds": 0.1, "replay": f"python -m tests.harness probe ns{i} x {proto}"})
    return out


def _doc(probes, title="t"):
    table = {"title": title, "probes": probes}
    step = {"title": title, "explanation": HOSTILE, "ok": all(p["observed"] == p["expected"] for p in probes),
            "seconds": 1.5, "problems": [], "transition": {"rounds": 3, "leaks": [], "losses": [
                {"at": 0.2, "probe": "endpoint->vendor tcp/443 v4", "detail": HOSTILE}]},
            "versions": {"state": "isolated", "mode": "standard", "stored": 2, "enforced": 1, "pending": None,
                         "config": "abc", "agent": "0.1.0",
                         "expected": {"state": "isolated", "mode": "standard", "stored": 2, "enforced": 2}},
            "table": table}
    return report_document([step], generated="2026-12-01T00:00:00Z")


def test_one_cell_per_probe_classed_by_its_outcome():
    flip = {"ALLOWED": "BLOCKED", "BLOCKED": "ALLOWED"}
    probes = _probes(lambda i, exp: "ERROR" if i == 5 else flip[exp] if i in (1, 8) else exp)
    page = parse(render(_doc(probes)))
    cells = [a for t, a in page.tags if t == "td" and "cell" in a.get("class", "").split()]
    assert len(cells) == len(probes)
    by_probe = {c["data-probe"]: c for c in cells}
    for i, p in enumerate(probes):
        c = by_probe[f"{p['src']}->{p['dst']} {p['proto'] if p['proto'] == 'icmp' else p['proto'] + '/' + str(p['port'])} v{p['family']}"]
        classes = set(c["class"].split())
        if i == 5:
            assert "error" in classes and c["data-replay"] == p["replay"]
        elif i in (1, 8):
            assert "mismatch" in classes and c["data-replay"] == p["replay"]
            assert ("leak" if p["expected"] == "BLOCKED" else "loss") in classes
        else:
            assert classes == {"cell", p["expected"].lower()} and "data-replay" not in c


def test_everything_is_escaped_and_nothing_external():
    probes = _probes(lambda i, exp: exp)
    probes[0]["detail"] = HOSTILE
    probes[0]["observed"] = "BLOCKED"
    probes[0]["replay"] = HOSTILE
    doc = _doc(probes, title=HOSTILE)
    text = render(doc)
    page = parse(text)
    assert "<script>alert" not in text
    scripts = [a for t, a in page.tags if t == "script"]
    assert scripts == [{"type": "application/json", "id": "report-data"}]   # data only, never run
    assert not [a for t, a in page.tags if t in ("link", "img", "iframe", "object", "embed")]
    assert not any(v and ("http:" in v or "https:" in v or v.startswith("//"))
                   for _, a in page.tags for k, v in a.items() if k in ("src", "href"))
    assert HOSTILE in "".join(page.text)  # shown, as text


def test_timeline_flags_a_version_other_than_expected():
    text = render(_doc(_probes(lambda i, exp: exp)))
    assert "1 (expected 2)" in text        # enforced 1 while the model expects 2
    assert "LOSS +0.2s" in text


def test_bare_demo_json_list_renders():
    probes = _probes(lambda i, exp: exp)
    doc = from_tables([{"title": "normal", "correct": len(probes), "incorrect": 0, "probes": probes}])
    page = parse(render([{"title": "normal", "correct": len(probes), "incorrect": 0, "probes": probes}]))
    assert doc["ok"] and sum(1 for t, a in page.tags if t == "td" and "cell" in a.get("class", "")) == len(probes)


def test_a_broken_step_and_the_runs_timings_are_shown():
    """The VM tier's page: a step that raised has no table but fails the run; the figures
    (boot and reboot times) are a table of their own, escaped."""
    ok = _doc(_probes(lambda i, exp: exp))["steps"][0]
    doc = report_document([ok, failed_record("reboot", f"ERROR HarnessError: {HOSTILE}", 12.5)],
                          figures={"boot: shell after power-on": 31.2, HOSTILE: 1})
    text = render(doc)
    page = parse(text)
    assert not doc["ok"]
    overall = [a for t, a in page.tags if a.get("id") == "overall"][0]
    assert "fail" in overall["class"].split()
    failed_rows = [a for t, a in page.tags if t == "tr" and "failed" in a.get("class", "").split()]
    assert len(failed_rows) == 1
    cells = [a for t, a in page.tags if t == "td" and "cell" in a.get("class", "").split()]
    assert len(cells) == len(ok["table"]["probes"])    # the broken step adds no cell
    figure_tables = [a for t, a in page.tags if t == "table" and "figures" in a.get("class", "").split()]
    assert len(figure_tables) == 1
    words = "".join(page.text)
    assert "boot: shell after power-on" in words and "31.2" in words and HOSTILE in words
    assert "<script>alert" not in text


def _row(agent, **kw):
    base = {"agent": agent, "state": "isolated", "mode": "standard", "sensor_type": "endpoint_sensor",
            "stored_version": 2, "enforced_version": 2, "pending_version": None, "enforcing": True,
            "tamper": "blocked", "last_seen": "2026-12-01T22:00:00Z"}
    return {**base, **kw}


def test_fleet_marks_the_cells_that_differ_from_the_majority():
    rows = [_row("a1"), _row("a2"), _row("a3", enforced_version=1, pending_version=2),
            _row("a4", state="normal", mode=None, enforced_version=None), _row(HOSTILE)]
    page = parse(render_fleet(rows, generated="now"))
    trs = [a for t, a in page.tags if t == "tr" and "agent" in a.get("class", "").split()]
    assert [t["data-agent"] for t in trs] == [r["agent"] for r in rows]
    outliers = {t["data-agent"] for t in trs if "outlier" in t["class"].split()}
    assert outliers == {"a3", "a4"}
    differs = [a["class"] for t, a in page.tags if t == "td" and "differs" in a.get("class", "").split()]
    assert sorted(c.split()[0] for c in differs) == sorted(
        ["col-enforced_version", "col-pending_version", "col-state", "col-mode", "col-enforced_version"])
    assert "<script>alert" not in render_fleet(rows)


def test_fleet_without_majority_marks_nothing():
    rows = [_row("a1", state="normal"), _row("a2")]
    page = parse(render_fleet(rows))
    assert not [a for t, a in page.tags if t == "td" and "differs" in a.get("class", "")]
    assert "(no agents have reported yet)" in render_fleet([])
