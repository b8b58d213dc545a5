"""README's "Deploying a TLS fleet" block on the multi-host lab: broker, hub and device each
in their own network namespace, every command the README's own, run on the host it belongs
to (``simulations.lab.walkthrough``). Then, across hosts, the operator deletes the device
through the hub's API and the broker (another host, whose files the hub never touches)
drops it within seconds.

Needs root and ``ip netns`` (skips with "no network namespaces:" otherwise); slow (about a
minute and a half on two cores): ``pytest -m slow tests/walkthrough``. The loopback variant
(test_readme_walkthrough.py) stays in the default suite.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.lab import netns
from simulations.lab.plan import HostRole, LabPlan
from simulations.lab.walkthrough import LabWalkthrough, split_steps
from tests.onnx_models import tiny_onnx_model
from tests.walkthrough.test_readme_walkthrough import (
    README,
    STEPS,
    check_walkthrough_outcome,
    walkthrough_block,
)

pytestmark = pytest.mark.integration

PORTS = {"HUB_PORT": 8443, "DEVICE_PORT": 8883, "HUB_MQTT_PORT": 8884}  # hosts of their own
DROP_WITHIN_S = 15.0


def test_every_step_runs_on_the_host_it_belongs_to() -> None:
    steps = split_steps(walkthrough_block(README.read_text("utf-8")))
    where = {s.command.split(" &")[0]: s.role for s in steps}
    assert [c for c, r in where.items() if r is HostRole.BROKER] == [
        "mosquitto -c broker/mosquitto.conf"
    ]
    device = [c for c, r in where.items() if r is HostRole.DEVICE]
    assert device and all(c.startswith("edge-agent ") for c in device)
    assert any("--token-file device.token" in c for c in device)  # continuation joined
    joined = "\n".join(s.command for s in steps)
    assert all(step in joined for step in STEPS)


@pytest.fixture
def lab_plan() -> Iterator[LabPlan]:
    reason = netns.namespaces_unavailable()
    if reason is not None:
        pytest.skip(f"no network namespaces: {reason}")
    plan = LabPlan.make(1, prefix="flw", subnet="10.213.12.0/24")
    netns.clean(plan.prefix)  # a crashed run of this test only (its own prefix)
    netns.build(plan)
    try:
        yield plan
    finally:
        netns.clean(plan.prefix)


# the token comes from the environment, never a command line
_REQUEST = """\
import os, ssl, sys, urllib.request
ctx = ssl.create_default_context(cafile=os.environ["FEDFLEET_CA_FILE"])
req = urllib.request.Request(os.environ["FEDFLEET_API"] + sys.argv[2], method=sys.argv[1],
                             headers={"Authorization": "Bearer " + os.environ["LAB_TOKEN"]})
print(urllib.request.urlopen(req, timeout=30, context=ctx).read().decode())
"""


def _api(walk: LabWalkthrough, method: str, path: str, *, token_var: str) -> object:
    """The hub's HTTPS API from the device's host (verified by the hub CA)."""
    command = f'LAB_TOKEN=${token_var} python -c "$LAB_REQUEST" {method} {path}'
    out = walk.shell(HostRole.DEVICE, f"export LAB_REQUEST={shlex.quote(_REQUEST)}\n{command}")
    return json.loads(out) if out.strip() else None


@pytest.mark.slow
@pytest.mark.timeout(420)
def test_the_readme_walkthrough_runs_across_hosts(lab_plan: LabPlan, tmp_path: Path) -> None:
    root = tmp_path / "walk"
    root.mkdir()
    (root / "model.onnx").write_bytes(tiny_onnx_model())
    log = tmp_path / "walkthrough.log"
    walk = LabWalkthrough(lab_plan, root, ports=PORTS, log=log)
    walk.route()
    rc = walk.run(split_steps(walkthrough_block(README.read_text("utf-8"))), deadline_s=300)
    text = log.read_text("utf-8", errors="replace")
    check_walkthrough_outcome(
        subprocess.CompletedProcess([], rc, text, ""),
        {"DEVICE_PORT": str(PORTS["DEVICE_PORT"])},
        broker_host=lab_plan.hub.hostname,
    )
    # the hub's view, read from the device's host across the lab
    devices = _api(walk, "GET", "/api/v1/devices", token_var="FEDFLEET_TOKEN")
    assert isinstance(devices, dict) and devices["total"] == 1, devices
    device_id = str(devices["items"][0]["device_id"])

    # deleting the device (an admin's call) reaches the broker on its own host, over MQTT
    admin = walk.shell(HostRole.HUB, "cloud-hub token create --role admin").strip()
    walk.shell(HostRole.HUB, f"echo ADMIN_TOKEN={shlex.quote(admin)} >> {walk.state}")
    started = time.monotonic()
    _api(walk, "DELETE", f"/api/v1/devices/{device_id}", token_var="ADMIN_TOKEN")
    pattern = re.compile(rf"disableClient \| username={re.escape(device_id)}\b")
    while not pattern.search(log.read_text("utf-8", errors="replace")):
        assert time.monotonic() - started < DROP_WITHIN_S, log.read_text()[-3000:]
        time.sleep(0.2)
    assert f"Client {device_id} been disconnected by administrative action" in log.read_text()
