"""Expected vs observed reachability, printed as truth tables in the manner of the
Kubernetes network-policy e2e tests: `.` allowed, `X` blocked, `!` error, and a `*`
after every cell where the observation differs from the expectation."""
from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from .errors import CordonWrong, HarnessError
from .probe import ERROR, SYMBOL, Probe, Result
from .verbs import log, section


@dataclass(frozen=True)
class Row:
    probe: Probe
    expected: str
    result: Result

    @property
    def ok(self) -> bool:
        return self.expected == self.result.verdict


def replay_command(lab, p: Probe) -> str:
    """A shell command (run from the repository root while the lab is up) that repeats
    one probe's round trip; the lab says how (Lab.replay_command)."""
    return lab.replay_command(p)


def _column_key(col: str):
    proto, _, rest = col.partition("/")
    port, _, sport = rest.partition("<")
    return (sport != "", {"tcp": 0, "udp": 1, "icmp": 2}.get(proto, 3), int(port or 0), sport)


class Comparison:
    def __init__(self, expected: dict[Probe, str], results: list[Result], title: str = "") -> None:
        missing = [r.probe for r in results if r.probe not in expected]
        if missing:
            raise KeyError(f"no expectation for {missing[0].label()}")
        self.title = title
        self.rows = [Row(r.probe, expected[r.probe], r) for r in results]

    @property
    def correct(self) -> int:
        return sum(r.ok for r in self.rows)

    @property
    def incorrect(self) -> int:
        return len(self.rows) - self.correct

    @property
    def mismatches(self) -> list[Row]:
        return [r for r in self.rows if not r.ok]

    def render(self, lab=None) -> str:
        out = [f"== {self.title}"] if self.title else []
        for family in sorted({r.probe.family for r in self.rows}):
            rows = [r for r in self.rows if r.probe.family == family]
            cols = sorted({r.probe.column() for r in rows}, key=_column_key)
            pairs = list(dict.fromkeys(f"{r.probe.src}->{r.probe.dst}" for r in rows))
            cells = {(f"{r.probe.src}->{r.probe.dst}", r.probe.column()):
                     SYMBOL[r.result.verdict] + ("" if r.ok else "*") for r in rows}
            lw = max(len(p) for p in pairs + [f"IPv{family}"])
            widths = [max(len(c), 2) for c in cols]
            out.append(f"{'IPv%d' % family:<{lw}}  " + " ".join(c.ljust(w) for c, w in zip(cols, widths)))
            for p in pairs:
                out.append(f"{p:<{lw}}  " + " ".join(cells.get((p, c), "").ljust(w)
                                                    for c, w in zip(cols, widths)).rstrip())
            out.append("")
        out.append(f"correct: {self.correct}, incorrect: {self.incorrect}")
        for r in self.mismatches:
            out.append(f"  MISMATCH {r.probe.label()}: expected {r.expected}, observed "
                       f"{r.result.verdict} ({r.result.detail})")
            if lab is not None:
                out.append(f"    replay: {replay_command(lab, r.probe)}")
        return "\n".join(out)

    def to_json(self, lab=None) -> dict:
        return {
            "title": self.title, "correct": self.correct, "incorrect": self.incorrect,
            "probes": [{
                "src": r.probe.src, "dst": r.probe.dst, "proto": r.probe.proto,
                "port": r.probe.port, "family": r.probe.family, "sport": r.probe.sport,
                "expected": r.expected, "observed": r.result.verdict, "ok": r.ok,
                "detail": r.result.detail, "seconds": r.result.seconds,
                **({"replay": replay_command(lab, r.probe)} if lab is not None else {}),
            } for r in self.rows],
        }


def expect_table(comparison: Comparison, lab=None) -> Comparison:
    """The asserting check of a whole matrix: returns `comparison` if every cell is as
    expected, else raises with the full printed table (expected vs observed, each wrong
    cell's direction and replay command). `CordonWrong` if any cell was ALLOWED or
    BLOCKED against the expectation (a leak or a loss); `HarnessError` if the only wrong
    cells are ERROR (the lab could not tell)."""
    with section(f"expect_table: {comparison.title or 'matrix'} ({len(comparison.rows)} probes)"):
        if not comparison.mismatches:
            return comparison
        text = comparison.render(lab)
        log.info("%s", text)
        if all(r.result.verdict == ERROR for r in comparison.mismatches):
            raise HarnessError(f"the lab could not tell (ERROR cells):\n{text}")
        raise CordonWrong(text)


def junit_xml(comparisons: list[Comparison], lab=None, suite: str = "cordon-reachability") -> str:
    root = ET.Element("testsuites")
    for c in comparisons:
        s = ET.SubElement(root, "testsuite", name=c.title or suite, tests=str(len(c.rows)),
                          failures=str(c.incorrect), errors="0")
        for r in c.rows:
            case = ET.SubElement(s, "testcase", classname=f"{suite}.{c.title or 'matrix'}",
                                 name=r.probe.label(), time=str(r.result.seconds))
            if not r.ok:
                f = ET.SubElement(case, "failure",
                                  message=f"expected {r.expected}, observed {r.result.verdict}")
                f.text = r.result.detail + (f"\nreplay: {replay_command(lab, r.probe)}" if lab else "")
    return ET.tostring(root, encoding="unicode")


def dump_json(comparisons: list[Comparison], lab=None) -> str:
    return json.dumps([c.to_json(lab) for c in comparisons], indent=1)
