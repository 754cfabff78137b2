"""A fake macOS pfctl for tests: pf cannot run on Linux.

Written from pf.conf(5)/pfctl(8), not from Cordon's renderer: it has its own small
parser for the rule subset below and rejects anything else the way pfctl reports
it ("stdin:3: syntax error"), prints rules back in pfctl's normalised form (lists
expanded, `port = https`, `flags S/SA keep state` defaults spelled out), keeps
anchors, tables, states, the enabled flag and enable tokens, records every call, and
can evaluate a packet against what is loaded (first `quick` match or last match,
anchors expanded in place, default pass) as an oracle.

Anchors as pf(4) keeps them (xnu bsd/net/pf_ruleset.c, pf.c): a path names a node in a tree;
an anchor rule's name is relative to the ruleset that holds it and creates its target (empty)
when loaded; `anchor "X/*"` evaluates X's children one after the other in strcmp order of
their paths, not descending further; a `quick` match anywhere ends the whole evaluation.
An anchor left empty, childless and unreferenced (after `-F all`) is removed, and
`-a NAME -sr` then fails with DIOCGETRULES: Invalid argument. `-a NAME -s Anchors` lists
NAME's children.

Grammar subset (pf.conf(5), PACKET FILTERING / TABLES / ANCHORS):
  table  <name> [const|persist|counters]... [{ host, ... }]
  action [in|out] [log] [quick] [on ifname] [inet|inet6] [proto (name | { name, ... })]
         (all | from hosts [port ports] to hosts [port ports])
         [flags (F/F | any)] [(keep|modulate) state | no state]
  action = pass | block [drop|return]
  hosts  = (omitted: any) | any | [!]address[/bits] | <table> | { host, ... }
  ports  = [= | != | < | <= | > | >=] port | port : port | port >< port | port <> port | { ... }
  main ruleset only: scrub-anchor, nat-anchor, rdr-anchor, dummynet-anchor, anchor "name",
  load anchor "name" from "file"
"""
from __future__ import annotations

import getopt
import ipaddress
import re
from dataclasses import dataclass, field

# A few entries of macOS /etc/services: pfctl prints `port = NAME` for these.
SERVICES = {22: "ssh", 53: "domain", 67: "bootps", 68: "bootpc", 80: "http", 443: "https",
            3389: "ms-wbt-server"}
SERVICE_PORTS = {v: k for k, v in SERVICES.items()}
PROTOCOLS = {"tcp", "udp", "icmp", "icmp6", "esp", "gre"}

STOCK_PF_CONF = """\
scrub-anchor "com.apple/*"
nat-anchor "com.apple/*"
rdr-anchor "com.apple/*"
dummynet-anchor "com.apple/*"
anchor "com.apple/*"
load anchor "com.apple" from "/etc/pf.anchors/com.apple"
"""
STOCK_COM_APPLE = """\
scrub-anchor "100.InternetSharing/*"
nat-anchor "100.InternetSharing/*"
rdr-anchor "100.InternetSharing/*"
anchor "100.InternetSharing/*"
anchor "200.AirDrop/*"
anchor "250.ApplicationFirewall/*"
dummynet-anchor "300.NetworkLinkConditioner/*"
anchor "300.NetworkLinkConditioner/*"
"""


class ParseError(Exception):
    pass


@dataclass
class Host:
    kind: str  # any | addr | table
    value: object = None  # ip_network or table name
    neg: bool = False

    def text(self) -> str:
        if self.kind == "any":
            return "any"
        body = f"<{self.value}>" if self.kind == "table" else _net_text(self.value)
        return ("! " if self.neg else "") + body


@dataclass
class Port:
    op: str  # = != < <= > >= : >< <>
    a: int
    b: int = 0

    def matches(self, p: int | None) -> bool:
        if p is None:
            return False
        return {"=": p == self.a, "!=": p != self.a, "<": p < self.a, "<=": p <= self.a,
                ">": p > self.a, ">=": p >= self.a, ":": self.a <= p <= self.b,
                "><": self.a < p < self.b, "<>": p < self.a or p > self.b}[self.op]

    def text(self) -> str:
        if self.op in ("=", "!="):
            return f"port {self.op} {SERVICES.get(self.a, self.a)}"
        if self.op == ":":
            return f"port {self.a}:{self.b}"
        if self.op in ("><", "<>"):
            return f"port {self.a} {self.op} {self.b}"
        return f"port {self.op} {self.a}"


@dataclass
class Rule:
    """One expanded rule (no lists left), as the kernel holds it."""

    action: str  # pass | block
    block_mode: str = "drop"
    direction: str | None = None
    quick: bool = False
    iface: str | None = None
    af: str | None = None
    proto: str | None = None
    src: Host = field(default_factory=lambda: Host("any"))
    sport: Port | None = None
    dst: Host = field(default_factory=lambda: Host("any"))
    dport: Port | None = None
    flags: str | None = None  # "S/SA", "any" or None (not given)
    state: str | None = None  # keep | no | None (not given)
    anchor: str | None = None  # anchor call: name

    def text(self) -> str:
        if self.anchor is not None:
            return f'anchor "{self.anchor}" all'
        out = ["pass" if self.action == "pass" else f"block {self.block_mode}"]
        for word in (self.direction, "quick" if self.quick else None,
                     f"on {self.iface}" if self.iface else None, self.af,
                     f"proto {self.proto}" if self.proto else None):
            if word:
                out.append(word)
        if self.src.kind == "any" and self.dst.kind == "any" and not self.sport and not self.dport:
            out.append("all")
        else:
            out += ["from", self.src.text()] + ([self.sport.text()] if self.sport else [])
            out += ["to", self.dst.text()] + ([self.dport.text()] if self.dport else [])
        keep = self.action == "pass" and self.state != "no"
        flags = self.flags
        if flags is None and keep and self.proto in (None, "tcp"):
            flags = "S/SA"  # pf's default for stateful pass rules
        if flags:
            out.append(f"flags {flags}")
        if keep:
            out.append("keep state")
        elif self.action == "pass":
            out.append("no state")
        return " ".join(out)


@dataclass
class Ruleset:
    rules: list = field(default_factory=list)
    tables: dict = field(default_factory=dict)  # name -> list[ip_network]
    extra: list = field(default_factory=list)   # main only: scrub-anchor etc., printed first
    loads: list = field(default_factory=list)   # main only: (anchor, file)


@dataclass
class FakeState:
    proto: str
    direction: str  # out | in
    local: str
    local_port: int | None
    remote: str
    remote_port: int | None
    iface: str = "ALL"

    def line(self) -> str:
        arrow = "->" if self.direction == "out" else "<-"
        return f"{self.iface} {self.proto} {_ep(self.local, self.local_port)} {arrow} " \
               f"{_ep(self.remote, self.remote_port)}       ESTABLISHED:ESTABLISHED"


def _ep(addr: str, port: int | None) -> str:
    if port is None:
        return addr
    return f"{addr}[{port}]" if ":" in addr else f"{addr}:{port}"


def _net_text(net) -> str:
    return str(net.network_address) if net.prefixlen == net.max_prefixlen else str(net)


# ------------------------------------------------------------------ parser

_TOKEN = re.compile(r'"[^"]*"|<[^>\s]*>|!=|<=|>=|><|<>|[{}(),=<>!/]|[^\s{}(),=<>!"/]+')


def _tokens(line: str) -> list[str]:
    return _TOKEN.findall(line)


class _P:
    def __init__(self, toks: list[str]):
        self.t, self.i = toks, 0

    def peek(self, k: int = 0) -> str | None:
        return self.t[self.i + k] if self.i + k < len(self.t) else None

    def take(self, *want: str) -> str:
        tok = self.peek()
        if tok is None or (want and tok not in want):
            raise ParseError("syntax error")
        self.i += 1
        return tok

    def accept(self, *want: str) -> bool:
        if self.peek() in want:
            self.i += 1
            return True
        return False

    def done(self) -> bool:
        return self.i == len(self.t)

    def list_of(self, item):
        if self.accept("{"):
            items = [item()]
            while not self.accept("}"):
                self.accept(",")
                items.append(item())
            return items
        return [item()]


def _port_number(tok: str) -> int:
    if tok.isdigit():
        n = int(tok)
    elif tok in SERVICE_PORTS:
        n = SERVICE_PORTS[tok]
    else:
        raise ParseError("syntax error")
    if not 0 <= n <= 65535:
        raise ParseError("illegal port value")
    return n


def _port_item(p: _P) -> Port:
    tok = p.take()
    if tok in ("=", "!=", "<", "<=", ">", ">="):
        return Port(tok, _port_number(p.take()))
    if re.fullmatch(r"\d+:\d+", tok):
        a, b = (_port_number(x) for x in tok.split(":"))
        return Port(":", a, b)
    a = _port_number(tok)
    if p.peek() in ("><", "<>"):
        op = p.take()
        return Port(op, a, _port_number(p.take()))
    if p.peek() == ":":  # "5000 : 5010" with spaces
        p.take()
        return Port(":", a, _port_number(p.take()))
    return Port("=", a)


def _address(tok: str, p: _P):
    text = tok
    if p.peek() == "/":
        p.take()
        text += "/" + p.take()
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ParseError(f"no IP address found for {text}") from None


def _host(p: _P) -> Host:
    neg = p.accept("!")
    tok = p.take()
    if tok == "any" and not neg:
        return Host("any")
    if tok.startswith("<") and tok.endswith(">") and len(tok) > 2:
        return Host("table", tok[1:-1], neg)
    if tok in ("{", "}", ",", "to", "from", "port", "all"):
        raise ParseError("syntax error")
    return Host("addr", _address(tok, p), neg)


def parse_rule_line(line: str) -> list[Rule]:
    """Parse one filter rule; return it expanded (one Rule per list combination)."""
    p = _P(_tokens(line))
    action = p.take("pass", "block")
    mode = "drop"
    if action == "block" and p.peek() in ("drop", "return"):
        mode = p.take()
    base = dict(action=action, block_mode=mode)
    if p.peek() in ("in", "out"):
        base["direction"] = p.take()
    p.accept("log")
    base["quick"] = p.accept("quick")
    if p.accept("on"):
        base["iface"] = p.take()
        if not re.fullmatch(r"[a-z]+\d*", base["iface"]):
            raise ParseError("syntax error")
    if p.peek() in ("inet", "inet6"):
        base["af"] = p.take()
    protos = [None]
    if p.accept("proto"):
        protos = p.list_of(p.take)
        for proto in protos:
            if proto not in PROTOCOLS:
                raise ParseError(f"unknown protocol {proto}")
    srcs, sports, dsts, dports = [Host("any")], [None], [Host("any")], [None]
    if p.accept("all"):
        pass
    else:
        if p.accept("from"):
            srcs = [Host("any")] if p.peek() == "port" else p.list_of(lambda: _host(p))
            if p.accept("port"):
                sports = p.list_of(lambda: _port_item(p))
        if p.accept("to"):
            dsts = [Host("any")] if p.peek() == "port" else p.list_of(lambda: _host(p))
            if p.accept("port"):
                dports = p.list_of(lambda: _port_item(p))
    flags = state = None
    while not p.done():
        if p.accept("flags"):
            if p.accept("any"):
                flags = "any"
            else:
                a = p.take() if p.peek() != "/" else ""
                p.take("/")
                b = p.take()
                if not re.fullmatch(r"[FSRPAUEW]*", a) or not re.fullmatch(r"[FSRPAUEW]+", b):
                    raise ParseError("syntax error")
                flags = f"{a}/{b}"
        elif p.accept("keep", "modulate"):
            p.take("state")
            state = "keep"
        elif p.accept("no"):
            p.take("state")
            state = "no"
        else:
            raise ParseError("syntax error")
    if (sports != [None] or dports != [None]) and any(pr not in ("tcp", "udp") for pr in protos):
        raise ParseError("port only applies to tcp/udp")
    if flags not in (None, "any") and any(pr not in (None, "tcp") for pr in protos):
        raise ParseError("flags only apply to tcp")
    if "icmp" in protos and base.get("af") == "inet6":
        raise ParseError("icmp not allowed with inet6")
    return [Rule(**base, proto=pr, src=s, sport=sp, dst=d, dport=dp, flags=flags, state=state)
            for pr in protos for s in srcs for sp in sports for d in dsts for dp in dports]


def parse_ruleset(text: str, main: bool) -> tuple[Ruleset, list[str]]:
    """Parse a whole file; errors are reported per line like pfctl: `stdin:N: msg`."""
    rs, errors = Ruleset(), []
    joined = text.replace("\\\n", " ")
    for n, raw in enumerate(joined.split("\n"), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        try:
            _statement(line, rs, main)
        except ParseError as exc:
            errors.append(f"stdin:{n}: {exc}")
    return rs, errors


def _statement(line: str, rs: Ruleset, main: bool) -> None:
    toks = _tokens(line)
    head = toks[0]
    if head == "table":
        p = _P(toks[1:])
        name = p.take()
        if not (name.startswith("<") and name.endswith(">")) or len(name) > 33:
            raise ParseError("syntax error")
        while p.peek() in ("const", "persist", "counters"):
            p.take()
        nets = []
        if not p.done():
            hosts = p.list_of(lambda: _host(p))
            if any(h.kind != "addr" for h in hosts):
                raise ParseError("syntax error")
            nets = [h.value for h in hosts]
        if not p.done():
            raise ParseError("syntax error")
        if name[1:-1] in rs.tables:
            raise ParseError(f"table <{name[1:-1]}> redefined")
        rs.tables[name[1:-1]] = nets
        return
    if head in ("scrub-anchor", "nat-anchor", "rdr-anchor", "dummynet-anchor", "anchor", "load"):
        if not main:
            raise ParseError("syntax error")  # keep the fake to what Cordon's anchor may contain
        if head == "load":
            m = re.fullmatch(r'load anchor "([^"]+)" from "([^"]+)"', line)
            if not m:
                raise ParseError("syntax error")
            rs.loads.append((m[1], m[2]))
        elif head == "anchor":
            m = re.fullmatch(r'anchor "([^"]+)"(?: all)?', line)
            if not m:
                raise ParseError("syntax error")
            rs.rules.append(Rule("anchor", anchor=m[1]))
        else:
            m = re.fullmatch(rf'{head} "([^"]+)"', line)
            if not m:
                raise ParseError("syntax error")
            if head == "scrub-anchor":
                rs.extra.append(f'scrub-anchor "{m[1]}" all fragment reassemble')
        return
    rs.rules.extend(parse_rule_line(line))


# ------------------------------------------------------------------ the fake


@dataclass
class Out:
    rc: int
    stdout: str = ""
    stderr: str = ""


class FakePfctl:
    """Call it like the backend's runner: fake(argv, stdin) -> object with rc/stdout/stderr."""

    _boots = 0

    def __init__(self) -> None:
        self.files = {"/etc/pf.conf": STOCK_PF_CONF, "/etc/pf.anchors/com.apple": STOCK_COM_APPLE}
        self.main = Ruleset()
        self.anchors: dict[str, Ruleset] = {}
        self.enabled = False
        self.tokens: dict[str, str] = {}
        FakePfctl._boots += 1  # tokens differ across "boots", as the kernel's do
        self._next_token = 6920157183637307000 + FakePfctl._boots * 1_000_003
        self.states: list[FakeState] = []
        self.calls: list[tuple[list[str], str | None]] = []
        self._load(self.files["/etc/pf.conf"], None)  # what launchd loads at boot

    # the runner interface
    def __call__(self, argv: list[str], stdin: str | None = None):
        from platforms.pf.backend import Result
        self.calls.append((list(argv), stdin))
        out = self.run(argv[1:], stdin)
        return Result(out.rc, out.stdout, out.stderr)

    def commands(self) -> list[str]:
        """Every call as a readable command line, for sequence assertions."""
        return [" ".join(argv[1:]) for argv, _ in self.calls]

    def run(self, args: list[str], stdin: str | None) -> Out:
        try:
            opts, rest = getopt.getopt(args, "a:f:F:k:s:t:T:X:nEdeqv")
        except getopt.GetoptError as exc:
            return Out(1, stderr=f"pfctl: {exc}\nusage: pfctl [-AdeghmNnOqRrvz] ...\n")
        o: dict[str, list[str]] = {}
        for k, v in opts:
            o.setdefault(k, []).append(v)
        anchor = o.get("-a", [None])[0]
        if "-d" in o:
            self.enabled, self.tokens = False, {}
            return Out(0, stderr="pf disabled\n")
        if "-E" in o:
            return self._enable_ref()
        if "-e" in o:
            self.enabled = True
            return Out(0, stderr="pf enabled\n")
        if "-X" in o:
            return self._release(o["-X"][0])
        if "-k" in o:
            return self._kill(o["-k"])
        if "-F" in o:
            return self._flush(o["-F"][0], anchor)
        if "-f" in o:
            src = o["-f"][0]
            text = stdin if src == "-" else self.files.get(src)
            if text is None:
                return Out(1, stderr=f"pfctl: {src}: No such file or directory\n")
            return self._load(text, anchor, dry="-n" in o)
        if "-T" in o:
            return self._table(anchor, o.get("-t", [None])[0], o["-T"][0])
        if "-s" in o:
            return self._show(o["-s"][0], anchor)
        return Out(1, stderr="usage: pfctl ...\n")

    # -- loading
    def _load(self, text: str, anchor: str | None, dry: bool = False) -> Out:
        rs, errors = parse_ruleset(text, main=anchor is None)
        if errors:
            return Out(1, stderr="\n".join(errors) + "\npfctl: Syntax error in config file: pf rules not loaded\n")
        if dry:
            return Out(0)
        if anchor is None:
            self.main = rs
            self._attach("", rs)
            for name, path in rs.loads:
                sub, _ = parse_ruleset(self.files.get(path, ""), main=True)
                self._create(name)
                self.anchors[name] = sub
                self._attach(name, sub)
        else:
            self._create(anchor)
            self.anchors[anchor] = rs  # one transaction: rules and tables together
        return Out(0)

    # -- the anchor tree
    def _create(self, path: str) -> None:
        """pf_find_or_create_ruleset: the anchor and every parent on its path."""
        parts = path.split("/")
        for n in range(1, len(parts) + 1):
            self.anchors.setdefault("/".join(parts[:n]), Ruleset())

    def _attach(self, base: str, rs: Ruleset) -> None:
        """pf_anchor_setup: each anchor rule creates the anchor it calls."""
        for rule in rs.rules:
            if rule.anchor is not None:
                self._create(_resolve(base, rule.anchor).removesuffix("/*"))

    def children(self, path: str) -> list[str]:
        """The anchors directly below `path`, in pf's order (strcmp of the paths)."""
        prefix = f"{path}/" if path else ""
        kids = [n for n in self.anchors if n.startswith(prefix) and "/" not in n[len(prefix):]]
        return sorted(kids, key=lambda n: n.encode())

    def _referenced(self, path: str) -> bool:
        rulesets = [("", self.main), *self.anchors.items()]
        return any(_resolve(base, r.anchor).removesuffix("/*") == path
                   for base, rs in rulesets for r in rs.rules if r.anchor is not None)

    def _remove_if_empty(self, path: str) -> None:
        while path:
            rs = self.anchors.get(path)
            if rs is None or rs.rules or rs.tables or self.children(path) or self._referenced(path):
                return
            del self.anchors[path]
            path = path.rpartition("/")[0]

    # -- enable references
    def _enable_ref(self) -> Out:
        self._next_token += 7919
        token = str(self._next_token)
        self.tokens[token] = "pfctl"
        was, self.enabled = self.enabled, True
        msg = "pf already enabled" if was else "pf enabled"
        return Out(0, stderr=f"No ALTQ support in kernel\nALTQ related functions disabled\n{msg}\nToken : {token}\n")

    def _release(self, token: str) -> Out:
        if token not in self.tokens:
            return Out(1, stderr="pfctl: DIOCSTOPREF: Invalid argument\n")
        del self.tokens[token]
        if not self.tokens:
            self.enabled = False
            return Out(0, stderr="pf disabled\n")
        return Out(0)

    # -- states
    def _kill(self, hosts: list[str]) -> Out:
        try:
            nets = [ipaddress.ip_network(h, strict=False) for h in hosts[:2]]
        except ValueError:
            return Out(1, stderr=f"pfctl: could not resolve host: {hosts[0]}\n")
        before = len(self.states)

        def hit(s: FakeState) -> bool:
            src, dst = (s.local, s.remote) if s.direction == "out" else (s.remote, s.local)
            ok = _in(src, nets[0])
            return ok and (len(nets) < 2 or _in(dst, nets[1]))
        self.states = [s for s in self.states if not hit(s)]
        return Out(0, stderr=f"killed {before - len(self.states)} states from 1 sources and "
                             f"{len(nets) - 1} destinations\n")

    # -- flushing
    def _flush(self, what: str, anchor: str | None) -> Out:
        if what not in ("all", "rules", "states", "Tables"):
            return Out(1, stderr=f"pfctl: Unknown flush modifier '{what}'\n")
        if what in ("all", "states") and anchor is None:
            self.states = []
        if what in ("all", "rules", "Tables"):
            rs = self.main if anchor is None else self.anchors.setdefault(anchor, Ruleset())
            if what in ("all", "rules"):
                rs.rules = []
                if anchor is None:
                    rs.extra = []
            if what in ("all", "Tables"):
                rs.tables = {}
            if anchor is not None:
                self._remove_if_empty(anchor)
        return Out(0, stderr="rules cleared\n")

    # -- tables
    def _table(self, anchor: str | None, name: str | None, cmd: str) -> Out:
        rs = self.main if anchor is None else self.anchors.get(anchor)
        if rs is None or name not in rs.tables:
            return Out(1, stderr="pfctl: Table does not exist.\n")
        if cmd != "show":
            return Out(1, stderr="pfctl: Operation not permitted.\n")  # const tables
        return Out(0, stdout="".join(f"   {_net_text(n)}\n" for n in sorted(rs.tables[name])))

    # -- show
    def _show(self, what: str, anchor: str | None) -> Out:
        if what in ("r", "rules"):
            rs = self.main if anchor is None else self.anchors.get(anchor)
            if rs is None:
                return Out(1, stderr="pfctl: DIOCGETRULES: Invalid argument\n")
            return Out(0, stdout="".join(line + "\n" for line in rs.extra + [r.text() for r in rs.rules]))
        if what in ("A", "Anchors"):
            if anchor is not None and anchor not in self.anchors:
                return Out(1, stderr=f"Anchor '{anchor}' not found.\n")
            return Out(0, stdout="".join(f"  {n}\n" for n in self.children(anchor or "")))
        if what in ("s", "states"):
            return Out(0, stdout="".join(s.line() + "\n" for s in self.states))
        if what in ("i", "info"):
            status = "Enabled for 0 days 00:00:07" if self.enabled else "Disabled"
            return Out(0, stdout=f"Status: {status:<38}Debug: Urgent\n\nState Table                          Total\n")
        if what in ("T", "Tables"):
            rs = self.main if anchor is None else self.anchors.get(anchor, Ruleset())
            return Out(0, stdout="".join(f"{n}\n" for n in sorted(rs.tables)))
        if what == "References":
            rows = "".join(f"{412:<9}{who:<28}{tok:<26}3 secs ago\n" for tok, who in self.tokens.items())
            return Out(0, stdout=f"TOKENS:\nPID      Process Name                TOKEN                     TIMESTAMP\n{rows}")
        return Out(1, stderr=f"pfctl: Unknown show modifier '{what}'\n")

    # ---------------------------------------------------------------- oracle

    def verdict(self, direction: str, proto: str, remote: str, remote_port: int | None = None,
                local_port: int | None = None, local: str = "192.0.2.2", iface: str = "en0",
                tcp_flags: str = "S") -> str:
        """pass/block for one packet of a NEW connection (no state), the way pf
        evaluates rules: last matching rule wins, `quick` ends evaluation, anchors
        run in place, no match means pass. (Tests keep states separately.)"""
        if not self.enabled:
            return "pass"
        src, sport, dst, dport = (local, local_port, remote, remote_port) if direction == "out" \
            else (remote, remote_port, local, local_port)
        pkt = dict(direction=direction, proto=proto, src=src, sport=sport, dst=dst, dport=dport,
                   iface=iface, flags=tcp_flags)
        decision, _ = self._eval("", self.main, pkt, "pass")
        return decision

    def _eval(self, path: str, rs: Ruleset, pkt: dict, decision: str):
        for rule in rs.rules:
            if rule.anchor is not None:
                for name in self._anchors_for(path, rule.anchor):
                    decision, quick = self._eval(name, self.anchors[name], pkt, decision)
                    if quick:  # a quick match inside an anchor ends the whole evaluation
                        return decision, True
                continue
            if self._match(rule, rs, pkt):
                decision = rule.action
                if rule.quick:
                    return decision, True
        return decision, False

    def _anchors_for(self, base: str, call: str) -> list[str]:
        target = _resolve(base, call)
        if target.endswith("/*"):
            return self.children(target[:-2])
        return [target] if target in self.anchors else []

    def _match(self, r: Rule, rs: Ruleset, pkt: dict) -> bool:
        ip = ipaddress.ip_address(pkt["src"])
        if r.direction and r.direction != pkt["direction"]:
            return False
        if r.iface and r.iface != pkt["iface"]:
            return False
        if r.af and r.af != ("inet" if ip.version == 4 else "inet6"):
            return False
        if r.proto and r.proto != pkt["proto"]:
            return False
        if not self._host_match(r.src, rs, pkt["src"]) or not self._host_match(r.dst, rs, pkt["dst"]):
            return False
        if r.sport and not r.sport.matches(pkt["sport"]):
            return False
        if r.dport and not r.dport.matches(pkt["dport"]):
            return False
        flags = r.flags or ("S/SA" if r.action == "pass" and r.state != "no" else None)
        if pkt["proto"] == "tcp" and flags not in (None, "any"):
            want, mask = flags.split("/")
            if {c for c in pkt["flags"] if c in mask} != set(want):
                return False
        return True

    def _host_match(self, h: Host, rs: Ruleset, addr: str) -> bool:
        if h.kind == "any":
            return True
        if h.kind == "table":
            nets = rs.tables.get(h.value, self.main.tables.get(h.value, []))
            hit = any(_in(addr, n) for n in nets)
        else:
            hit = _in(addr, h.value)
        return hit != h.neg


def _resolve(base: str, call: str) -> str:
    """An anchor rule's name, relative to the anchor holding it unless it starts with '/'."""
    if call.startswith("/"):
        return call[1:]
    return f"{base}/{call}" if base else call


def _in(addr: str, net) -> bool:
    a = ipaddress.ip_address(addr)
    return a.version == net.version and a in net
