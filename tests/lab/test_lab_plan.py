"""The lab's topology as values: names that fit the kernel's limits, addresses only in the
lab's private /24, refusals for labs that cannot be built (no root needed)."""

from __future__ import annotations

import ipaddress

import pytest

from simulations.lab.plan import (
    MAX_DEVICES,
    LabPlan,
    LabPlanError,
    build_commands,
    cap_commands,
    cut_commands,
)

IFNAMSIZ = 15


def test_fifty_devices_fit_the_kernel_names_and_one_private_subnet() -> None:
    plan = LabPlan.make(MAX_DEVICES)
    net = ipaddress.ip_network(plan.subnet)
    assert len(plan.devices) == MAX_DEVICES
    names = [plan.bridge] + [h.veth for h in plan.hosts]
    assert all(len(n) <= IFNAMSIZ for n in names), names
    assert len(set(names)) == len(names)
    addresses = [ipaddress.ip_address(h.address) for h in plan.hosts]
    assert len(set(addresses)) == len(addresses)
    assert all(
        a in net and a not in (net.network_address, net.broadcast_address) for a in addresses
    )
    # every name the lab makes carries its prefix: leftovers are found by name alone
    assert all(n.startswith(f"{plan.prefix}-") for n in names + [h.netns for h in plan.hosts])
    assert f"{plan.broker.address} broker.lab" in plan.hosts_file()


def test_every_address_the_commands_assign_is_in_the_lab_subnet() -> None:
    plan = LabPlan.make(3, prefix="flx", subnet="192.168.77.0/24")
    assigned = [c[c.index("add") + 1] for c in build_commands(plan) if "addr" in c]
    assert len(assigned) == len(plan.hosts)
    net = ipaddress.ip_network(plan.subnet)
    assert all(ipaddress.ip_interface(a).network == net for a in assigned)


@pytest.mark.parametrize(
    ("devices", "prefix", "subnet"),
    [
        (0, "ffl", "10.213.7.0/24"),
        (MAX_DEVICES + 1, "ffl", "10.213.7.0/24"),
        (2, "ffl", "8.8.8.0/24"),  # not private: the lab must never route elsewhere
        (2, "ffl", "10.213.0.0/16"),  # one /24, no more
        (2, "ffl", "fd00::/64"),
        (2, "toolongprefix", "10.213.7.0/24"),
        (2, "F-L", "10.213.7.0/24"),
    ],
)
def test_labs_that_cannot_be_built_are_refused(devices: int, prefix: str, subnet: str) -> None:
    with pytest.raises(LabPlanError):
        LabPlan.make(devices, prefix=prefix, subnet=subnet)


def test_faults_touch_only_the_named_device() -> None:
    plan = LabPlan.make(2)
    dev = plan.device("dev-002")
    assert cut_commands(dev) == [["ip", "link", "set", dev.veth, "down"]]
    cap = cap_commands(dev, 256)
    assert all("256kbit" in c for c in cap) and cap[0][4] == dev.veth and dev.netns in cap[1]
    with pytest.raises(LabPlanError):
        cap_commands(dev, 0)
    with pytest.raises(LabPlanError):
        plan.device("dev-003")
