"""R4 over the broker ``cloud-hub broker-config`` generates (mTLS, ACL): the hub's training
orders reach a device through the hub's own listener and certificate, and the device's
SuperNode verifies the SuperLink against the CA it pinned at enrollment, with no training
setting of its own (the default). A device credential cannot even deliver a command to
another device: the ACL refuses the publish, so the other device sees nothing."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.fl.config import FederatedRunConfig
from cloud_hub.fl.superlink import fab_sha256
from cloud_hub.keys import KeyStore
from cloud_hub.loop.device_training import DeploymentTraining
from edge_agent.config import load_config
from edge_agent.fl.train_command import OrderTrust, TrainCommandHandler, TrainingLimits
from shared.broker_endpoint import BrokerEndpoint
from shared.files import atomic_write
from shared.messages import TrainCommand
from tests.agent_ota.agent_ota_helpers import wait_for
from tests.security._support_freshness import (
    Device,
    TrustBroker,
    device_peer,
    make_device,
    running_broker,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture
def hub_ca(tmp_path: Path) -> CertificateAuthority:
    """The hub CA on disk (it enrolls devices, signs the broker's and the SuperLink's TLS)."""
    ca = CertificateAuthority.create()
    (tmp_path / "hub-ca").mkdir()
    atomic_write(tmp_path / "hub-ca" / "ca.key", ca.key_pem(), mode=0o600)
    atomic_write(tmp_path / "hub-ca" / "ca.crt", ca.cert_pem)
    return ca


@pytest.fixture
def broker(tmp_path: Path, hub_ca: CertificateAuthority) -> Iterator[TrustBroker]:
    with running_broker(tmp_path, device_ca=hub_ca) as b:
        yield b


def _trainer(device: Device) -> TrainCommandHandler:
    """The order handler wired as ``edge-agent run --serve`` wires it (EdgeDevice)."""
    config = load_config(device.config)
    assert config.training.superlink_ca is None  # nothing but what enrollment wrote
    return TrainCommandHandler(
        state_dir=config.state_dir,
        load_samples=lambda n: (np.zeros((20, 12), np.float32), np.zeros(20, np.int64)),
        trust=OrderTrust(device_id=config.device_id, trust=config.load_trust_root()),
        limits=TrainingLimits(root_certificates=config.superlink_ca),
    )


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
def test_signed_orders_arrive_over_mtls_and_the_superlink_ca_is_the_enrollment_ca(
    tmp_path: Path, broker: TrustBroker, protocol: str
) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    device = make_device(broker, tmp_path, "dev-a", keys)
    agent = device.start()
    trainer = _trainer(device)
    agent.add_command_handler(TrainCommand, trainer)
    intruder = device_peer(broker, tmp_path, "dev-b")
    try:
        assert wait_for(lambda: agent.link.connected, 30)
        files = broker.files
        training = DeploymentTraining(
            mqtt=BrokerEndpoint(
                port=broker.hub_port,
                tls=True,
                ca_file=str(files.ca_cert),
                cert_file=str(files.hub_cert),
                key_file=str(files.hub_key),
                protocol=protocol,
            ),
            topics=broker.scheme,
            workdir=tmp_path / "fl",
            keys=keys,
            ca_dir=tmp_path / "hub-ca",
        )
        config = FederatedRunConfig(model_name="sensor-mlp", num_clients=3, min_fit_clients=3)
        orders = training.sign_orders("run-m", ["dev-a"], "127.0.0.1:9", fab_sha256(), config)
        command = training.commands(orders, {})["dev-a"]

        # a device credential replays dev-a's genuine command onto dev-a's topic: ACL says no
        rc = intruder.publish(broker.scheme.device("dev-a", "cmd"), command.encode())
        assert rc.is_failure, rc  # (had it arrived, the hub's copy below would be a replay)

        training._publish({"dev-a": command})  # the hub: its listener, its certificate
        assert wait_for(lambda: trainer.supervisor is not None, 30), trainer.refusals
        assert trainer.refusals == []
        argv = trainer.supervisor.config.argv()
        assert argv[argv.index("--root-certificates") + 1] == str(files.ca_cert)
        assert "--insecure" not in argv
        assert files.ca_cert.read_bytes() == (tmp_path / "hub-ca" / "ca.crt").read_bytes()
    finally:
        trainer.stop()
        intruder.close()
        device.stop()
