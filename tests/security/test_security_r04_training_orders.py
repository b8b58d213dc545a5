"""R4: training orders are signed, bound to one device and one use, and the SuperLink is
reached over TLS verified against the hub CA unless plain text is allowed on both sides.

The attacks come over a real Mosquitto to a real device process (``edge-agent run --serve``,
the composition production runs) from someone who controls the broker: an unsigned command,
an order signed by the attacker's own root, a genuine order edited to dial the attacker's
SuperLink, a genuine order for another device, an expired one, a replay of the order the
device is running, a genuine order for a plain-text SuperLink, one that turns SecAgg+ off on
a device that requires it, and an unsigned stop. Each is refused, logged and reported as a
``rejected`` event with its reason, and nothing is lost: the SuperNode of the genuine run
keeps running (same process), the used-order ledger and the sample store are unchanged.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.config import MqttEndpoint
from cloud_hub.errors import HubConfigError
from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.superlink import fab_sha256
from cloud_hub.loop.device_training import DeploymentTraining
from edge_agent.fl.train_command import OrderTrust, TrainCommandHandler, TrainingLimits
from shared.errors import WrongTargetError
from shared.messages import Event, EventKind, Status, TrainCommand
from shared.topics import TopicScheme
from tests.agent_ota.agent_ota_helpers import (
    BundleSender,
    broker_available,
    unique_prefix,
    wait_for,
    write_agent_config,
)
from tests.security._support_training import OrderIssuer, write_ca

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

DEVICE = "r04-dev"
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Device:
    """A real device process and what the hub side sees of it."""

    proc: subprocess.Popen[bytes]
    state: Path
    log: Path
    hub: BundleSender

    def rejections(self) -> dict[str, str]:
        """run id -> reason of every ``rejected`` training event received so far."""
        return {
            str(e.data.get("run_id")): e.detail
            for e in self.hub.of(DEVICE, Event)
            if e.kind == EventKind.REJECTED and e.data.get("command") == TrainCommand.TYPE
        }

    def supernodes(self) -> list[int]:
        """Pids of SuperNodes running on this device's exported samples."""
        needle = str(self.state / "fl" / "train.npz").encode()
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmdline = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if b"edge_agent.fl.pinned_supernode" in cmdline and needle in cmdline:
                    pids.append(int(entry.name))
        return pids


def _seed_samples(state: Path, n: int = 40) -> None:
    from edge_agent.samples.store import SampleStore, SampleStoreConfig

    state.mkdir(parents=True, exist_ok=True)
    store = SampleStore(SampleStoreConfig(path=state / "samples.db"))
    try:
        for i in range(n):
            store.add(f"s-{i}", np.full(12, i, np.float32), model_version=0, label=i % 3)
    finally:
        store.close()


@pytest.fixture
def hub_keys(tmp_path: Path) -> OrderIssuer:
    return OrderIssuer(tmp_path / "hub-keys")


@pytest.fixture
def device(tmp_path: Path, hub_keys: OrderIssuer) -> Iterator[Device]:
    if not broker_available():
        pytest.fail("Mosquitto is not listening on 127.0.0.1:1883")
    prefix = unique_prefix()
    _, ca = write_ca(tmp_path / "hub-ca")
    trust = tmp_path / "trust_root.json"
    trust.write_text(json.dumps(hub_keys.keys.trust_root().to_dict()))
    config = write_agent_config(
        tmp_path,
        device_id=DEVICE,
        prefix=prefix,
        trust_path=trust,
        extra=f'[training]\nsuperlink_ca = "{ca}"\nrequire_secure_aggregation = true\n',
    )
    state = tmp_path / DEVICE
    _seed_samples(state)
    hub = BundleSender(TopicScheme(prefix))
    log = tmp_path / "device.log"
    proc = subprocess.Popen(
        [
            *(sys.executable, "-m", "edge_agent.cli", "run", "--serve", "--config", str(config)),
            *("--api-port", "0", "--exit-with-parent"),
        ],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    dev = Device(proc, state, log, hub)
    try:
        online = wait_for(lambda: any(s.online for s in hub.of(DEVICE, Status)), 90)
        assert online, log.read_text(errors="replace")[-3000:]
        yield dev
    finally:
        hub.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_forged_replayed_and_misdirected_orders_are_refused_and_reported(
    device: Device, hub_keys: OrderIssuer, tmp_path: Path
) -> None:
    hub = device.hub
    genuine = hub_keys.order(DEVICE, run_id="genuine", superlink="127.0.0.1:9")
    running = hub_keys.command(genuine)
    hub.send(DEVICE, running)
    assert wait_for(lambda: len(device.supernodes()) == 1, 60), device.log.read_text()[-3000:]
    [pid] = device.supernodes()
    ledger = (device.state / "fl" / "orders.json").read_bytes()
    samples = (device.state / "samples.db").read_bytes()

    attacker = OrderIssuer(tmp_path / "attacker-keys")
    now = datetime.now(timezone.utc)
    attacks: dict[str, tuple[TrainCommand, str]] = {
        "unsigned": (
            TrainCommand(
                command_id="x1", run_id="unsigned", superlink="10.6.6.6:9092", model_name="m"
            ),
            "unsigned training command",
        ),
        "forged": (
            attacker.command(attacker.order(DEVICE, run_id="forged", superlink="10.6.6.6:9")),
            "keyring",
        ),
        "tampered": (
            hub_keys.tampered(hub_keys.order(DEVICE, run_id="tampered"), superlink="10.6.6.6:9"),
            "BadSignatureError",
        ),
        "other-device": (
            hub_keys.command(hub_keys.order("r04-other", run_id="other-device")),
            "WrongTargetError",
        ),
        "expired": (
            hub_keys.command(
                hub_keys.order(DEVICE, run_id="expired", issued=now - timedelta(hours=2))
            ),
            "ExpiredError",
        ),
        "plain-text": (
            hub_keys.command(hub_keys.order(DEVICE, run_id="plain-text", insecure=True)),
            "plain-text SuperLink",
        ),
        "no-secagg": (
            hub_keys.command(hub_keys.order(DEVICE, run_id="no-secagg", secure_aggregation=False)),
            "requires SecAgg+",
        ),
    }
    for command, _ in attacks.values():
        hub.send(DEVICE, command)
    hub.send(DEVICE, running)  # replay of the order in use
    hub.send(  # a stop without a signed order for this run
        DEVICE,
        TrainCommand(
            command_id="x2", run_id="genuine", superlink="", model_name="", config={"stop": True}
        ),
    )

    assert wait_for(lambda: len(device.rejections()) >= len(attacks) + 1, 60), (
        device.rejections(),
        device.log.read_text(errors="replace")[-3000:],
    )
    reasons = device.rejections()
    for run_id, (_, reason) in attacks.items():
        assert reason in reasons[run_id], (run_id, reasons[run_id])
    assert "ReplayedOrderError" in reasons["genuine"] or "unsigned" in reasons["genuine"]
    assert wait_for(lambda: _count(device, "ReplayedOrderError") == 1, 10)
    assert wait_for(lambda: _count(device, "unsigned training command") == 2, 10)
    log = device.log.read_text(errors="replace")
    assert "training order refused" in log and "BadSignatureError" in log

    # nothing lost: the genuine run's SuperNode is the same process, ledger and samples kept
    assert device.supernodes() == [pid]
    assert (device.state / "fl" / "orders.json").read_bytes() == ledger
    assert (device.state / "samples.db").read_bytes() == samples

    hub.send(DEVICE, hub_keys.command(genuine, config={"stop": True}))  # the signed stop
    assert wait_for(lambda: device.supernodes() == [], 60)


def _count(device: Device, reason: str) -> int:
    """How many ``rejected`` events gave ``reason``."""
    events = device.hub.of(DEVICE, Event)
    return sum(e.kind == EventKind.REJECTED and reason in e.detail for e in events)


def test_the_hub_runs_no_plain_text_superlink_unless_told(tmp_path: Path) -> None:
    keys = OrderIssuer(tmp_path / "keys").keys
    common = {"mqtt": MqttEndpoint(), "topics": TopicScheme("x"), "workdir": tmp_path, "keys": keys}
    with pytest.raises(HubConfigError, match="TLS from the hub CA"):
        DeploymentTraining(**common)  # type: ignore[arg-type]
    write_ca(tmp_path / "ca")
    assert not DeploymentTraining(ca_dir=tmp_path / "ca", **common).insecure  # type: ignore[arg-type]
    assert DeploymentTraining(insecure=True, **common).insecure  # type: ignore[arg-type]


def test_the_hubs_orders_verify_on_their_own_device_only(tmp_path: Path) -> None:
    keys = OrderIssuer(tmp_path / "keys").keys
    write_ca(tmp_path / "ca")
    training = DeploymentTraining(
        mqtt=MqttEndpoint(),
        topics=TopicScheme("x"),
        workdir=tmp_path,
        keys=keys,
        ca_dir=tmp_path / "ca",
    )
    config = FederatedRunConfig(model_name="sensor-mlp", num_clients=3, min_fit_clients=3)
    fab = fab_sha256()
    orders = training.sign_orders("run-9", ["dev-a", "dev-b"], "127.0.0.1:9092", fab, config)
    commands = training.commands(orders, {})
    device_a = TrainCommandHandler(
        state_dir=tmp_path / "dev-a",
        load_samples=lambda n: (np.zeros((0, 12), np.float32), np.zeros(0, np.int64)),
        trust=OrderTrust(device_id="dev-a", trust=keys.trust_root()),
    )
    order = device_a.verify(commands["dev-a"])
    assert (order.run_id, order.superlink, order.fab_sha256) == ("run-9", "127.0.0.1:9092", fab)
    assert order.secure_aggregation and not order.insecure
    with pytest.raises(WrongTargetError):
        device_a.verify(commands["dev-b"])


def test_a_used_order_stays_used_after_the_agent_restarts(tmp_path: Path) -> None:
    hub = OrderIssuer(tmp_path / "keys")
    _, ca = write_ca(tmp_path / "ca")

    def agent() -> TrainCommandHandler:  # a fresh process's handler on the same state dir
        return TrainCommandHandler(
            state_dir=tmp_path / "state",
            load_samples=lambda n: (np.zeros((20, 12), np.float32), np.zeros(20, np.int64)),
            trust=OrderTrust(device_id=DEVICE, trust=hub.keys.trust_root()),
            limits=TrainingLimits(root_certificates=ca),
        )

    order = hub.order(DEVICE, run_id="once")
    first = agent()
    first(hub.command(order))
    assert first.supervisor is not None and first.refusals == []
    first.stop()

    restarted = agent()
    restarted(hub.command(order))
    assert restarted.supervisor is None
    assert len(restarted.refusals) == 1 and "ReplayedOrderError" in restarted.refusals[0]
