"""The HTML reports in a real headless Chromium: the page loads with no console error and
no request but its own file, it renders one cell per probe of the JSON output, a wrong
cell (a mismatch the test injects, and real ERROR cells from a killed responder) is
visibly marked, and the fleet table sorts. Screenshots go to $CORDON_ARTIFACTS (default
out/report-screenshots/), kept by CI, never compared."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from console.fleet_html import render_fleet
from tests.conftest import ROOT, require
from tests.harness import ALLOWED, BLOCKED, Probe
from tests.harness.report import report_document, step_record
from tests.harness.report_html import render
from tests.harness.scenarios import Step
from tests.harness.table import Comparison, replay_command
from tests.headless import Chromium

require(shutil.which("chromium") is not None, "Debian's chromium (scripts/setup.sh installs it)")

ARTIFACTS = Path(os.environ.get("CORDON_ARTIFACTS", ROOT / "out" / "report-screenshots"))
CELLS = "document.querySelectorAll('td.cell').length"


def _style(page, selector: str, prop: str) -> str:
    return page.eval(f"getComputedStyle(document.querySelector({json.dumps(selector)}))"
                     f".getPropertyValue({json.dumps(prop)})")


def _loads_clean(page, path: Path) -> None:
    assert page.errors == [], page.errors
    assert page.requests == [path.resolve().as_uri()], page.requests


@pytest.mark.root
def test_real_probes_with_an_injected_mismatch_and_real_errors(lab, tmp_path):
    probes = [Probe(src, dst, proto, port, fam) for fam in (4, 6)
              for src, dst in (("endpoint", "vendor"), ("vendor", "endpoint"), ("endpoint", "outside"))
              for proto, port in (("tcp", 443), ("udp", 53), ("icmp", None))]
    lab.kill_responder("outside")   # its probes can only be ERROR
    results = lab.probe_all(probes)
    # No firewall in the lab: everything is reachable (DESIGN §1, normal). The test injects
    # one wrong expectation, so exactly that cell is a mismatch.
    injected = Probe("endpoint", "vendor", "tcp", 443, 6)
    expected = {p: BLOCKED if p == injected else ALLOWED for p in probes}
    step = Step("injected", "one expectation deliberately wrong", Comparison(expected, results, "injected"))
    doc = report_document([step_record(step, lab)], generated="test", lab=lab.runid)
    path = tmp_path / "report.html"
    path.write_text(render(doc))

    with Chromium() as browser:
        page = browser.open(path)
        _loads_clean(page, path)
        assert page.eval(CELLS) == len(doc["steps"][0]["table"]["probes"]) == len(probes)
        sel = f'td.cell[data-probe="{injected.label()}"]'
        assert page.eval(f"document.querySelector('{sel}').className") == "cell mismatch leak"
        assert _style(page, sel, "background-color") == "rgb(255, 0, 0)"
        assert page.eval(f"document.querySelector('{sel}').dataset.replay") == replay_command(lab, injected)
        # tcp/udp to the killed responder: ERROR (icmp is answered by the kernel itself)
        dead = [r for r in results if r.probe.dst == "outside" and r.probe.proto != "icmp"]
        assert dead and all(r.verdict == "ERROR" for r in dead), dead
        assert page.eval("document.querySelectorAll('td.cell.error').length") == len(dead)
        assert page.eval("document.querySelectorAll('td.cell.mismatch').length") == 1
        assert page.eval("document.getElementById('overall').textContent") == "MISMATCH"
        page.screenshot(ARTIFACTS / "injected-mismatch.png")


def _why_the_demo_failed(p) -> str:
    """The demo's verdict lines (steps, PROBLEM checks, wrong cells, SUMMARY) wherever they are
    in its output, then the tail of stderr: a tail of stdout alone can miss the cause."""
    keep = [l for l in p.stdout.splitlines() if l.lstrip().startswith(("###", "PROBLEM", "SUMMARY", "step:"))
            or "MISMATCH" in l or "replay:" in l]
    return f"exit {p.returncode}\n" + "\n".join(keep) + "\n--- stderr (tail) ---\n" + p.stderr[-2000:]


@pytest.mark.root
@pytest.mark.slow
def test_the_demo_report(tmp_path):
    html, js = tmp_path / "demo.html", tmp_path / "demo.json"
    p = subprocess.run([sys.executable, "-m", "tests.harness", "demo", "--json", str(js), "--html", str(html)],
                       cwd=ROOT, capture_output=True, text=True)
    assert p.returncode == 0, _why_the_demo_failed(p)
    tables = json.loads(js.read_text())
    with Chromium() as browser:
        page = browser.open(html)
        _loads_clean(page, html)
        assert page.eval(CELLS) == sum(len(t["probes"]) for t in tables) > 0
        assert page.eval("document.querySelectorAll('section.step').length") == len(tables)
        assert page.eval("document.querySelectorAll('td.cell.mismatch, td.cell.error').length") == 0
        assert page.eval("document.querySelectorAll('table.timeline tbody tr').length") == len(tables)
        page.screenshot(ARTIFACTS / "demo.png")


def test_fleet_page_sorts_and_marks_outliers(tmp_path):
    base = {"state": "isolated", "mode": "standard", "sensor_type": "endpoint_sensor", "stored_version": 3,
            "enforced_version": 3, "pending_version": None, "enforcing": True, "tamper": "blocked"}
    rows = [dict(base, agent=f"host-{i:02d}", last_seen=f"2026-12-01T22:{59 - i:02d}:00Z") for i in range(12)]
    rows[4].update(enforced_version=2)
    rows[9].update(state="normal", mode=None, enforced_version=None)
    path = tmp_path / "fleet.html"
    path.write_text(render_fleet(rows, generated="2026-12-01T23:00:00Z"))
    agents = "Array.from(document.querySelectorAll('tbody tr')).map(r => r.dataset.agent)"
    with Chromium() as browser:
        page = browser.open(path)
        _loads_clean(page, path)
        assert page.eval("document.querySelectorAll('tbody tr').length") == len(rows)
        assert page.eval("Array.from(document.querySelectorAll('tr.outlier')).map(r => r.dataset.agent)") == \
            ["host-04", "host-09"]
        assert _style(page, 'tr[data-agent="host-04"] td.col-enforced_version', "background-color") == \
            "rgb(255, 206, 203)"
        page.eval("document.querySelector('th[data-key=last_seen]').click()")
        assert page.eval(agents) == sorted(r["agent"] for r in rows)[::-1]   # oldest report first
        page.eval("document.querySelector('th[data-key=enforced_version]').click()")
        order = page.eval(agents)
        assert order[0] == "host-09" and order[1] == "host-04"   # '-' sorts first, then 2, then 3s
        assert page.errors == [], page.errors
        page.screenshot(ARTIFACTS / "fleet.png")
