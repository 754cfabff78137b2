"""Fleet endpoints made cheap (DESIGN §10, fleet scale): a bridge `fabric` in the lab's
router namespace and one namespace per endpoint, each with one veth into that bridge
and one address of FABRIC4/FABRIC6. No responder runs in them (the brokers and the
lab's own hosts have theirs), so an endpoint costs a namespace and its agent only.

    lab = Lab(topology=FLEET_TOPOLOGY)             # 203.0.113.0/24 left for the fabric
    fabric = Fabric(lab).start()
    host = fabric.add("ep007")                     # lab.ns(host) exists; Agent(lab, host=host)

The namespaces are registered with the lab, so its teardown deletes them (after killing
the processes it started, by pid) exactly like its own.
"""
from __future__ import annotations

import ipaddress
from contextlib import contextmanager

from . import netns
from .lab import Host, Lab

NODES = ("nats1", "nats2", "nats3")

# The lab's hosts, with nothing in 203.0.113.0/24 (the fabric's): endpoint, behind and
# outside for the probes, vendor (the console) and dns, and the three broker nodes.
FLEET_TOPOLOGY = (
    Host("endpoint", "192.0.2.10/29", "2001:db8:2::10/64"),
    Host("behind", "192.0.2.66/29", "2001:db8:b::66/64", attach="endpoint"),
    Host("outside", "192.0.2.98/29", "2001:db8:99::99/64"),
    Host("vendor", "198.51.100.10/29", "2001:db8:51::10/64"),
    Host("dns", "198.51.100.53/29", "2001:db8:53::53/64"),
    Host("nats1", "198.51.100.18/29", "2001:db8:61::18/64"),
    Host("nats2", "198.51.100.26/29", "2001:db8:62::26/64"),
    Host("nats3", "198.51.100.34/29", "2001:db8:63::34/64"),
)

FABRIC4 = ipaddress.IPv4Network("203.0.113.0/24")
FABRIC6 = ipaddress.IPv6Network("2001:db8:fa::/64")
BRIDGE = "fabric"


class Fabric:
    def __init__(self, lab) -> None:
        self.lab = lab
        self._free4 = iter(list(FABRIC4.hosts()))
        self.gw4 = next(self._free4)                       # the router's side: 203.0.113.1
        self.gw6 = FABRIC6[1]
        self.hosts: dict[str, str] = {}                    # host name -> its IPv4 address

    @staticmethod
    def capacity_of() -> int:
        """Endpoints the fabric can hold (its /24 less network, broadcast, router)."""
        return FABRIC4.num_addresses - 3

    def start(self) -> "Fabric":
        router = self.lab.ns("router")
        netns.ip("-batch", "-", ns=router, input="\n".join([
            f"link add {BRIDGE} type bridge",
            f"addr add {self.gw4}/{FABRIC4.prefixlen} dev {BRIDGE}",
            f"addr add {self.gw6}/{FABRIC6.prefixlen} dev {BRIDGE} nodad",
            f"link set {BRIDGE} up"]) + "\n")
        return self

    def add(self, name: str) -> str:
        """A new endpoint namespace on the fabric; returns its host name for lab.ns()."""
        if name in self.hosts or name in self.lab.hosts:
            raise ValueError(f"fabric host {name!r} exists")
        try:
            v4 = next(self._free4)
        except StopIteration:
            raise ValueError(f"the fabric holds at most {self.capacity_of()} endpoints") from None
        v6 = FABRIC6[int(v4) - int(FABRIC4.network_address) + 0x100]
        ns, router = self.lab.ns(name), self.lab.ns("router")
        netns.add(ns)
        self.lab.namespaces.append(ns)
        side = f"f-{name}"[:15]
        netns.ip("link", "add", side, "type", "veth", "peer", "name", "eth0", "netns", ns, ns=router)
        netns.ip("link", "set", side, "master", BRIDGE, "up", ns=router)
        netns.ip("-batch", "-", ns=ns, input="\n".join([
            "link set lo up",
            f"addr add {v4}/{FABRIC4.prefixlen} dev eth0",
            f"addr add {v6}/{FABRIC6.prefixlen} dev eth0 nodad",
            "link set eth0 up",
            f"route add default via {self.gw4}",
            f"route add default via {self.gw6}"]) + "\n")
        self.hosts[name] = str(v4)
        return name


def start_agents(lab, console, fabric, specs, batch: int = 8, timeout: float = 60, say=None) -> list:
    """specs: (agent_id, sensor_type) pairs -> Agents on new fabric hosts, started `batch`
    at a time (a Python agent's start is CPU-bound: staggered, the fleet comes up faster
    than all at once on 2 cores), each waited for until its consumers are in place."""
    from .driver import Agent
    agents = []
    for i in range(0, len(specs), batch):
        group = [Agent(lab, config=console.agent_config(aid, sensor), host=fabric.add(aid))
                 for aid, sensor in specs[i:i + batch]]
        agents += group
        for a in group:
            a.launch()
        for a in group:
            console.wait_subscribed(a, timeout=timeout)
        if say:
            say(f"  {len(agents)}/{len(specs)} agents subscribed")
    return agents


def connected_node(agent) -> str | None:
    """host:port of the broker node the agent's channel last connected to (its audit log)."""
    evs = agent.audit_events("console_connected")
    return evs[-1].get("server") if evs else None


@contextmanager
def fleet_lab():
    """A lab of FLEET_TOPOLOGY with its 3-node cluster started, a console with keys and the
    fabric: yields (lab, cluster, console, fabric). The cluster is closed on the way out;
    agents and console CLIs are the lab's, killed by pid in its teardown."""
    from .console import Cluster, Console
    with Lab(topology=FLEET_TOPOLOGY) as lab:
        cluster = Cluster(lab)
        try:
            cluster.start()
            yield lab, cluster, Console(lab, cluster).keygen(), Fabric(lab).start()
        finally:
            cluster.close()
