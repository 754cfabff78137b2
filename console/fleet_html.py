"""`cordon-console fleet --html FILE`: the fleet as one self-contained HTML page. Pure:
rows in (the `fleet --json` rows), text out; every value escaped; no fetch, no external
font; one small inline script (allowed by its hash in the page's Content-Security-Policy)
sorts the table when a column header is clicked.

For each compared column the value held by more than half of the agents is the
majority; a cell that differs from it is classed `differs`, and its row `outlier`.
"""
from __future__ import annotations

import base64
import hashlib
from collections import Counter
from html import escape

COLUMNS = (  # (key, header, compared with the majority)
    ("agent", "agent", False), ("state", "state", True), ("mode", "mode", True),
    ("sensor_type", "sensor", True), ("stored_version", "stored", True),
    ("enforced_version", "enforced", True), ("pending_version", "pending", True),
    ("enforcing", "enforcing", True), ("tamper", "tamper", True), ("last_seen", "last seen", False),
)

SCRIPT = """
document.querySelectorAll('table.fleet th').forEach(function (th, col) {
  th.addEventListener('click', function () {
    var body = th.closest('table').tBodies[0];
    var asc = th.getAttribute('aria-sort') !== 'ascending';
    th.parentNode.querySelectorAll('th').forEach(function (h) { h.removeAttribute('aria-sort'); });
    th.setAttribute('aria-sort', asc ? 'ascending' : 'descending');
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
      var nx = x === '' ? NaN : Number(x), ny = y === '' ? NaN : Number(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  });
});
"""
CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24}
h1{font-size:1.4em}table{border-collapse:collapse}
th,td{padding:3px 10px;border-bottom:1px solid #dde;text-align:left}
th{cursor:pointer;user-select:none;background:#f6f8fa}th[aria-sort=ascending]::after{content:" \\25b2"}
th[aria-sort=descending]::after{content:" \\25bc"}
tr.outlier{background:#fff8c5}td.differs{background:#ffcecb;color:#82071e;font-weight:700}
td.state-isolated{font-weight:600}.explain{color:#57606a}
"""


def _csp() -> str:
    digest = base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode()
    return f"default-src 'none'; style-src 'unsafe-inline'; script-src 'sha256-{digest}'"


def _text(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def majority(rows: list[dict]) -> dict[str, object]:
    """column -> the value more than half of the agents hold (columns without one are absent)."""
    out = {}
    for key, _, compared in COLUMNS:
        if not compared or not rows:
            continue
        value, n = Counter(_text(r.get(key)) for r in rows).most_common(1)[0]
        if n * 2 > len(rows):
            out[key] = value
    return out


def render_fleet(rows: list[dict], generated: str = "", title: str = "Cordon fleet") -> str:
    major = majority(rows)
    body, n_odd = [], 0
    for r in rows:
        cells, odd = [], False
        for key, _, _ in COLUMNS:
            text = _text(r.get(key))
            cls = [f"col-{key}"] + ([f"state-{text}"] if key == "state" else [])
            if key in major and text != major[key]:
                cls.append("differs")
                odd = True
            tip = f' title="fleet majority: {escape(major[key])}"' if "differs" in cls else ""
            sort = "" if r.get(key) is None else r.get(key)
            cells.append(f'<td class="{" ".join(escape(c) for c in cls)}" data-sort="{escape(_text(sort) if sort != "" else "")}"'
                         f"{tip}>{escape(text)}</td>")
        n_odd += odd
        body.append(f'<tr class="agent{" outlier" if odd else ""}" data-agent="{escape(_text(r.get("agent")))}">'
                    + "".join(cells) + "</tr>")
    head = "".join(f'<th scope="col" data-key="{k}">{escape(h)}</th>' for k, h, _ in COLUMNS)
    summary = (f"{len(rows)} agent(s); {n_odd} differ from the fleet's majority"
               + (" (" + ", ".join(f"{k}: {escape(v)}" for k, v in major.items()) + ")" if major else ""))
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f'<meta http-equiv="Content-Security-Policy" content="{_csp()}">'
            f"<title>{escape(title)}</title><style>{CSS}</style></head><body>"
            f"<h1>{escape(title)}</h1><p class=\"explain\">{escape(generated and 'generated ' + generated)}</p>"
            f'<p id="summary">{summary}</p>'
            f'<p class="explain">Click a column header to sort. Highlighted cells differ from the value '
            f"most agents report.</p>"
            f'<table class="fleet"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
            f"{'<p>(no agents have reported yet)</p>' if not rows else ''}"
            f"<script>{SCRIPT}</script></body></html>\n")
