"""The demo report (`report.report_document`) as one self-contained HTML page: no script,
no fetch, no external font or image (a Content-Security-Policy forbids them), every
value escaped. Pure: document in, text out.

Per step: the versions in force, the transition's leak/loss record, and for IPv4 and
IPv6 a grid of expected-vs-observed cells, one `td.cell` per probe, classed `allowed`,
`blocked`, `mismatch` (plus `leak` or `loss`) or `error`; every wrong cell carries its
replay command (title, `data-replay`, and the list under the grid). A timeline at the
top gives each step's duration, leaks, losses and versions.
"""
from __future__ import annotations

import json
from html import escape

CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1b1f24;background:#fff}
h1{font-size:1.5em;margin:0 0 .2em}h2{font-size:1.2em;margin:1.6em 0 .3em;border-top:1px solid #ccd;padding-top:.8em}
h3{font-size:1em;margin:.8em 0 .3em}code,.mono{font-family:ui-monospace,monospace;font-size:.92em}
.verdict{display:inline-block;padding:.1em .6em;border-radius:4px;font-weight:600;color:#fff}
.verdict.pass{background:#1a7f37}.verdict.fail{background:#cf222e}
table{border-collapse:collapse}th,td{padding:2px 6px}
table.timeline td,table.timeline th{border-bottom:1px solid #dde;text-align:left;vertical-align:top}
.bar{display:inline-block;height:.7em;background:#8c959f;vertical-align:middle;margin-right:.4em}
.bad{color:#cf222e;font-weight:600}.good{color:#1a7f37}
table.grid{margin:.2em 0 .6em}table.grid th{font-weight:500;font-size:.8em;white-space:nowrap}
table.grid thead th{writing-mode:vertical-rl;transform:rotate(180deg);text-align:left;padding:4px 1px}
table.grid tbody th{text-align:right;font-family:ui-monospace,monospace}
td.cell,td.none{width:18px;height:18px;padding:0;text-align:center;font:bold 12px ui-monospace,monospace;border:1px solid #fff}
td.allowed{background:#2da44e;color:#fff}td.blocked{background:#57606a;color:#fff}
td.mismatch{background:#ff0000;color:#fff;outline:3px solid #82071e;outline-offset:-3px}
td.error{background:#d4a72c;color:#000;outline:3px dashed #7d4e00;outline-offset:-3px}
td.none{background:#f6f8fa}
.legend span{display:inline-block;width:14px;height:14px;vertical-align:middle;margin:0 .3em 0 1em}
ul.wrong li{margin:.2em 0}ul.wrong code{background:#f6f8fa;padding:1px 4px;user-select:all}
.grids{display:flex;gap:2.5em;flex-wrap:wrap;align-items:flex-start}
.versions td{padding:0 1em 0 0}.explain{color:#57606a}
"""
SYMBOL = {"ALLOWED": "\u00b7", "BLOCKED": "\u2715", "ERROR": "!"}
_PROTO = {"tcp": 0, "udp": 1, "icmp": 2}


def e(value) -> str:
    return escape("" if value is None else str(value), quote=True)


def column(p: dict) -> str:
    c = p["proto"] if p["proto"] == "icmp" else f"{p['proto']}/{p['port']}"
    return c + (f"<{p['sport']}" if p.get("sport") else "")


def label(p: dict) -> str:
    return f"{p['src']}->{p['dst']} {column(p)} v{p['family']}"


def _column_key(p: dict):
    return (bool(p.get("sport")), _PROTO.get(p["proto"], 3), p.get("port") or 0, p.get("sport") or 0)


def cell_class(p: dict) -> str:
    if p["observed"] == "ERROR":
        return "error"
    if p["observed"] != p["expected"]:
        return "mismatch " + ("leak" if p["observed"] == "ALLOWED" else "loss")
    return p["observed"].lower()


def _cell(p: dict) -> str:
    ok = p["observed"] == p["expected"]
    tip = f"{label(p)}: expected {p['expected']}, observed {p['observed']}"
    if p.get("detail"):
        tip += f" ({p['detail']})"
    attrs = f' class="cell {cell_class(p)}" data-probe="{e(label(p))}"'
    attrs += f' data-expected="{e(p["expected"])}" data-observed="{e(p["observed"])}"'
    if not ok and p.get("replay"):
        tip += f"\nreplay: {p['replay']}"
        attrs += f' data-replay="{e(p["replay"])}"'
    return f'<td{attrs} title="{e(tip)}">{SYMBOL.get(p["observed"], "?")}{"" if ok else "*"}</td>'


def grid(probes: list[dict], family: int) -> str:
    rows = [p for p in probes if p["family"] == family]
    if not rows:
        return ""
    cols, seen = [], {}
    for p in sorted(rows, key=_column_key):
        cols.append(column(p)) if column(p) not in seen else None
        seen[column(p)] = True
    pairs = list(dict.fromkeys(f"{p['src']}->{p['dst']}" for p in rows))
    cells: dict[tuple[str, str], list[dict]] = {}
    for p in rows:
        cells.setdefault((f"{p['src']}->{p['dst']}", column(p)), []).append(p)
    out = [f'<table class="grid" data-family="{family}"><thead><tr><th>IPv{family}</th>']
    out += [f"<th>{e(c)}</th>" for c in cols]
    out.append("</tr></thead><tbody>")
    for pair in pairs:
        out.append(f"<tr><th>{e(pair)}</th>")
        for c in cols:
            here = cells.get((pair, c), [])
            # A pair x column holds one probe; duplicates (never expected) still get a cell each.
            out.append("".join(_cell(p) for p in here) if here else '<td class="none"></td>')
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _wrong_list(probes: list[dict]) -> str:
    wrong = [p for p in probes if p["observed"] != p["expected"]]
    if not wrong:
        return ""
    items = []
    for p in wrong:
        way = ("LEAK: " if p["observed"] == "ALLOWED" else "") + f"expected {p['expected']}, was {p['observed']}"
        replay = f' <br>replay: <code>{e(p["replay"])}</code>' if p.get("replay") else ""
        items.append(f'<li class="wrong-{cell_class(p).split()[0]}"><b>{e(label(p))}</b>: {e(way)}'
                     f'{" (" + e(p["detail"]) + ")" if p.get("detail") else ""}{replay}</li>')
    return f'<h3 class="bad">{len(wrong)} wrong cell(s)</h3><ul class="wrong">{"".join(items)}</ul>'


def _v(ver: dict | None, key: str) -> str:
    if not ver:
        return "-"
    got = ver.get(key)
    want = (ver.get("expected") or {}).get(key, got)
    text = "-" if got is None else str(got)
    if want != got:
        return f'<span class="bad" title="expected {e(want)}">{e(text)} (expected {e(want)})</span>'
    return e(text)


def _versions(ver: dict | None) -> str:
    if not ver:
        return '<p class="explain">versions: not recorded</p>'
    cells = [("state", "state"), ("mode", "mode"), ("policy stored", "stored"),
             ("policy enforced", "enforced"), ("policy pending", "pending"),
             ("config", "config"), ("agent", "agent")]
    return ('<table class="versions"><tr>' + "".join(f"<td>{e(n)}: <b>{_v(ver, k)}</b></td>" for n, k in cells)
            + "</tr></table>")


def _transition(tr: dict | None) -> str:
    if not tr:
        return ""
    leaks, losses, unknown = tr.get("leaks") or [], tr.get("losses") or [], tr.get("unknown") or []
    crossed = tr.get("crossed") or []
    head = (f'<p>during the transition: {e(tr.get("rounds"))} rounds, '
            f'<span class="{"bad" if leaks else "good"}">{len(leaks)} leaks</span>, '
            f'<span class="{"bad" if losses else "good"}">{len(losses)} losses</span>'
            + (f', <span class="bad">{len(unknown)} unknown</span>' if unknown else "")
            + (f', {len(crossed)} sent before the first rule (+{e(tr.get("first_rule"))}s) and lost with '
               'it: no conntrack state for their replies' if crossed else "") + '</p>')
    items = [f'<li class="bad">{kind} +{e(x.get("at"))}s {e(x.get("probe"))}: {e(x.get("detail"))}</li>'
             for kind, xs in (("LEAK", leaks), ("LOSS", losses), ("UNKNOWN", unknown)) for x in xs]
    items += [f'<li>CROSSED +{e(x.get("at"))}s {e(x.get("probe"))}: {e(x.get("detail"))}</li>' for x in crossed]
    return head + (f'<ul class="transition">{"".join(items)}</ul>' if items else "")


def _timeline(steps: list[dict]) -> str:
    longest = max([s.get("seconds") or 0 for s in steps] + [0.001])
    rows = []
    for i, s in enumerate(steps):
        tr, ver = s.get("transition"), s.get("versions") or {}
        secs = s.get("seconds")
        bar = f'<span class="bar" style="width:{int(120 * (secs or 0) / longest)}px"></span>' if secs else ""
        leaks = len(tr.get("leaks") or []) if tr else None
        losses = len(tr.get("losses") or []) if tr else None
        count = lambda n: "-" if n is None else f'<span class="{"bad" if n else "good"}">{n}</span>'
        rows.append(
            f'<tr class="step {"ok" if s.get("ok") else "failed"}"><td>{i + 1}</td>'
            f'<td><a href="#step-{i + 1}">{e(s.get("title"))}</a></td>'
            f'<td>{"<span class=good>ok</span>" if s.get("ok") else "<span class=bad>MISMATCH</span>"}</td>'
            f'<td class="mono">{bar}{"-" if secs is None else f"{secs:.1f}s"}</td>'
            f'<td>{"-" if not tr else e(tr.get("rounds"))}</td><td>{count(leaks)}</td><td>{count(losses)}</td>'
            f'<td>{_v(ver, "state")} / {_v(ver, "mode")}</td><td>{_v(ver, "stored")}</td>'
            f'<td>{_v(ver, "enforced")}</td><td>{_v(ver, "pending")}</td><td class="mono">{_v(ver, "config")}</td></tr>')
    return ('<table class="timeline"><thead><tr><th>#</th><th>step</th><th>result</th><th>duration</th>'
            '<th>loop rounds</th><th>leaks</th><th>losses</th><th>state / mode</th><th>policy stored</th>'
            '<th>enforced</th><th>pending</th><th>config</th></tr></thead><tbody>'
            + "".join(rows) + "</tbody></table>")


def _step(i: int, s: dict) -> str:
    t = s.get("table") or {"probes": []}
    probes = t.get("probes") or []
    wrong = sum(p["observed"] != p["expected"] for p in probes)
    problems = "".join(f'<li class="bad">{e(p)}</li>' for p in s.get("problems") or [])
    return (f'<section class="step" id="step-{i + 1}"><h2>{i + 1}. {e(s.get("title"))} '
            f'<span class="verdict {"pass" if s.get("ok") else "fail"}">{"ok" if s.get("ok") else "MISMATCH"}'
            f'</span></h2><p class="explain">{e(s.get("explanation"))}</p>{_versions(s.get("versions"))}'
            f'{_transition(s.get("transition"))}'
            f'{"<ul class=problems>" + problems + "</ul>" if problems else ""}'
            f'<p>{len(probes) - wrong} correct, <span class="{"bad" if wrong else "good"}">{wrong} incorrect</span>'
            f' of {len(probes)} probes</p><div class="grids">{grid(probes, 4)}{grid(probes, 6)}</div>{_wrong_list(probes)}</section>')


def _figures(figures: dict | None) -> str:
    if not figures:
        return ""
    rows = "".join(f'<tr><td>{e(k)}</td><td class="mono">{e(v)}</td></tr>' for k, v in figures.items())
    return f'<h2>Timings (s)</h2><table class="timeline figures"><tbody>{rows}</tbody></table>'


def render(doc: dict | list) -> str:
    """The whole page. `doc`: a `report.report_document`, or the bare table list of `demo --json`."""
    if isinstance(doc, list):
        from .report import from_tables
        doc = from_tables(doc)
    steps = doc.get("steps") or []
    n = sum(len((s.get("table") or {}).get("probes") or []) for s in steps)
    wrong = sum(p["observed"] != p["expected"] for s in steps for p in (s.get("table") or {}).get("probes") or [])
    bad = [s.get("title") for s in steps if not s.get("ok")]
    ok = bool(doc.get("ok")) and not bad and bool(steps)
    legend = "".join(f'<span class="{c}" style="{st}"></span>{e(t)}' for c, st, t in (
        ("allowed", "background:#2da44e", "allowed"), ("blocked", "background:#57606a", "blocked"),
        ("mismatch", "background:#ff0000", "mismatch (* observed differs from expected)"),
        ("error", "background:#d4a72c", "error (no verdict: receiver or probe failed)")))
    meta = " · ".join(x for x in (
        f"generated {e(doc.get('generated'))}" if doc.get("generated") else "",
        f"lab {e(doc.get('lab'))}" if doc.get("lab") else "",
        f"sensor_type {e(doc.get('sensor_type'))}" if doc.get("sensor_type") else "",
        f"config {e(doc.get('config'))}" if doc.get("config") else "") if x)
    data = json.dumps(doc, sort_keys=True).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{e(doc.get('title'))}</title><style>{CSS}</style></head><body>"
        f'<h1>{e(doc.get("title"))} <span class="verdict {"pass" if ok else "fail"}" id="overall">'
        f'{"all steps match" if ok else "MISMATCH"}</span></h1><p class="explain">{meta}</p>'
        f'<p>{len(steps)} steps, {n} probes: {n - wrong} correct, '
        f'<span class="{"bad" if wrong else "good"}">{wrong} incorrect</span>'
        f'{" (in: " + e(", ".join(map(str, bad))) + ")" if bad else ""}</p>'
        f'<p class="legend">{legend}</p><h2>Timeline</h2>{_timeline(steps)}{_figures(doc.get("figures"))}'
        + "".join(_step(i, s) for i, s in enumerate(steps))
        + f'<script type="application/json" id="report-data">{data}</script></body></html>\n')
