"""The lab's topology as values: which namespaces, links and addresses a lab of N devices has,
and the ``ip``/``tc`` command lines that build it, tear it down and inject link faults.

Nothing here runs a command: :mod:`simulations.lab.netns` does. Every name the lab makes
starts with its prefix (default ``ffl``), so leftovers of a crashed run are found by name and
nothing outside the lab is ever touched. Addresses come from one private /24 that is only
on the lab's bridge (the bridge itself has no address: the host's own network stack cannot
reach the lab, and the lab cannot reach anything else).
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "DEFAULT_PREFIX",
    "DEFAULT_SUBNET",
    "MAX_DEVICES",
    "HostRole",
    "LabHost",
    "LabPlan",
    "LabPlanError",
    "build_commands",
    "cap_commands",
    "cut_commands",
    "restore_commands",
    "teardown_commands",
]

DEFAULT_PREFIX = "ffl"
DEFAULT_SUBNET = "10.213.7.0/24"
MAX_DEVICES = 50
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,5}$")  # "<prefix>-d050" must fit IFNAMSIZ (15)
_DOMAIN = "lab"


class LabPlanError(ValueError):
    """A lab that cannot be built as asked (bad prefix, subnet or device count)."""


class HostRole(StrEnum):
    HUB = "hub"
    BROKER = "broker"
    DEVICE = "device"


@dataclass(frozen=True)
class LabHost:
    """One host of the lab: its namespace, the host end of its veth pair (on the bridge),
    its address on the bridge and the name other hosts reach it by."""

    name: str  # "hub", "broker", "dev-001", ...
    role: HostRole
    netns: str
    veth: str  # host end, enslaved to the bridge; the namespace end is "eth0"
    address: str
    hostname: str  # "hub.lab", resolved through the namespace's own /etc/hosts


@dataclass(frozen=True)
class LabPlan:
    prefix: str
    subnet: str
    hub: LabHost
    broker: LabHost
    devices: tuple[LabHost, ...]

    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br"

    @property
    def hosts(self) -> tuple[LabHost, ...]:
        return (self.hub, self.broker, *self.devices)

    @property
    def prefix_len(self) -> int:
        return ipaddress.ip_network(self.subnet).prefixlen

    def device(self, name: str) -> LabHost:
        for host in self.devices:
            if host.name == name:
                return host
        raise LabPlanError(f"no device {name!r} in this lab")

    def hosts_file(self, via_loopback: tuple[LabHost, ...] = ()) -> str:
        """``/etc/hosts`` for a namespace: each host by its ``.lab`` name; those in
        ``via_loopback`` at ``127.0.0.1`` (where a relay forwards to them)."""
        lines = ["127.0.0.1 localhost"]
        lines += [
            f"{'127.0.0.1' if h in via_loopback else h.address} {h.hostname}" for h in self.hosts
        ]
        return "\n".join(lines) + "\n"

    @classmethod
    def make(
        cls, devices: int = 6, *, prefix: str = DEFAULT_PREFIX, subnet: str = DEFAULT_SUBNET
    ) -> LabPlan:
        if not 1 <= devices <= MAX_DEVICES:
            raise LabPlanError(f"a lab has 1..{MAX_DEVICES} devices, not {devices}")
        if not _PREFIX_RE.match(prefix):
            raise LabPlanError(f"prefix {prefix!r}: 2-6 lower-case letters/digits")
        try:
            net = ipaddress.ip_network(subnet)
        except ValueError as exc:
            raise LabPlanError(f"subnet {subnet!r}: {exc}") from exc
        if not (net.version == 4 and net.is_private and net.prefixlen == 24):
            raise LabPlanError(f"subnet {subnet!r}: the lab needs one private IPv4 /24")
        addr = list(net.hosts())  # .1 .. .254

        def host(name: str, role: HostRole, short: str, i: int) -> LabHost:
            return LabHost(
                name=name,
                role=role,
                netns=f"{prefix}-{short}",
                veth=f"{prefix}-{short}",
                address=str(addr[i]),
                hostname=f"{name}.{_DOMAIN}",
            )

        return cls(
            prefix=prefix,
            subnet=str(net),
            hub=host("hub", HostRole.HUB, "hub", 1),
            broker=host("broker", HostRole.BROKER, "brk", 2),
            devices=tuple(
                host(f"dev-{i:03d}", HostRole.DEVICE, f"d{i:03d}", 9 + i)
                for i in range(1, devices + 1)
            ),
        )


def build_commands(plan: LabPlan) -> list[list[str]]:
    """``ip`` command lines that build the bridge, one namespace per host and its veth pair,
    in order. The namespace end is created inside the namespace as ``eth0``."""
    cmds = [
        ["ip", "link", "add", plan.bridge, "type", "bridge"],
        ["ip", "link", "set", plan.bridge, "up"],
    ]
    for h in plan.hosts:
        cmds += [
            ["ip", "netns", "add", h.netns],
            ["ip", "-n", h.netns, "link", "set", "lo", "up"],
            ["ip", "link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.netns],
            ["ip", "link", "set", h.veth, "master", plan.bridge],
            ["ip", "link", "set", h.veth, "up"],
            ["ip", "-n", h.netns, "addr", "add", f"{h.address}/{plan.prefix_len}", "dev", "eth0"],
            ["ip", "-n", h.netns, "link", "set", "eth0", "up"],
        ]
    return cmds


def teardown_commands(namespaces: list[str], links: list[str]) -> list[list[str]]:
    """Delete what exists (deleting a namespace deletes its veth pair; host ends and the
    bridge are deleted too in case the namespace went first)."""
    cmds = [["ip", "netns", "delete", ns] for ns in namespaces]
    cmds += [["ip", "link", "delete", link] for link in links]
    return cmds


def cut_commands(host: LabHost) -> list[list[str]]:
    """Cut a host off: its bridge port goes down (both directions, nothing delivered)."""
    return [["ip", "link", "set", host.veth, "down"]]


def restore_commands(host: LabHost) -> list[list[str]]:
    """Undo a cut and a cap (deleting a qdisc that is not there fails: the shell ignores it)."""
    return [
        ["ip", "link", "set", host.veth, "up"],
        ["tc", "qdisc", "del", "dev", host.veth, "root"],
        ["ip", "netns", "exec", host.netns, "tc", "qdisc", "del", "dev", "eth0", "root"],
    ]


def cap_commands(host: LabHost, kbit: int) -> list[list[str]]:
    """A token-bucket cap of ``kbit`` kbit/s in both directions: on the bridge port (traffic to
    the device) and on the device's own ``eth0`` (traffic from it)."""
    if not 8 <= kbit <= 10_000_000:
        raise LabPlanError(f"a bandwidth cap of {kbit} kbit/s is out of range (8..10000000)")
    tbf = ["tbf", "rate", f"{kbit}kbit", "burst", "16kb", "latency", "400ms"]
    return [
        ["tc", "qdisc", "replace", "dev", host.veth, "root", *tbf],
        ["ip", "netns", "exec", host.netns, "tc", "qdisc", "replace", "dev", "eth0", "root", *tbf],
    ]
