"""The loop's production training path: Flower's Deployment Engine. The hub starts a
SuperLink (TLS from the hub CA) and sends signed ``TrainCommand``s over real Mosquitto; three
real device processes verify them and start SuperNodes, pinned to the ordered FAB and
trusting the pinned hub CA, on their own sample stores; SecAgg+; the candidate is
compressed, bundled and registered. Slow: the Deployment Engine polls (minutes on 2 loaded cores)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.keys import KeyStore
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.loop.policy import RetrainPolicy
from cloud_hub.registry import admin, catalog, open_registry
from shared.broker_endpoint import BrokerEndpoint
from shared.data.sensors import generate_sensor_data
from shared.messages import Status, decode_message
from shared.topics import TopicScheme
from simulations.demo.fleet import PROBLEM_SEED, DemoFleet

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(600)]


def _wait_online(prefix: str, device_ids: list[str], timeout: float = 60.0) -> None:
    online: set[str] = set()
    done = threading.Event()

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        status = decode_message(msg.payload, expected=(Status,))
        if isinstance(status, Status) and status.online:
            online.add(status.device_id)
            if online >= set(device_ids):
                done.set()

    client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = on_message
    client.connect("127.0.0.1", 1883)
    client.subscribe(TopicScheme(prefix).all_devices("status"), qos=1)
    client.loop_start()
    try:
        assert done.wait(timeout), f"online: {sorted(online)}"
    finally:
        client.loop_stop()
        client.disconnect()


def test_cohort_trains_as_supernodes_after_train_commands(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    CertificateAuthority.load_or_create(tmp_path / "ca")
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    prefix = DemoFleet.new_prefix()
    fleet = DemoFleet(
        root=tmp_path / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url="mqtt://127.0.0.1:1883",
        prefix=prefix,
        n=3,
        drifted=0,
        history=120,
        training_ca=tmp_path / "ca" / "ca.crt",
    )
    x, y = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=77)
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=None,
        validation=(x, y),
        calibration=(x, y),
        config=LoopConfig(
            work_dir=tmp_path / "loop",
            num_rounds=1,
            policy=RetrainPolicy(min_devices=3),
        ),
        deployment=DeploymentTraining(
            mqtt=BrokerEndpoint(),
            topics=TopicScheme(prefix),
            workdir=tmp_path / "fl",
            keys=keys,
            ca_dir=tmp_path / "ca",
            timeout_s=480,
        ),
    )
    fleet.start()
    try:
        _wait_online(prefix, fleet.device_ids)
        started = time.monotonic()
        out = pipeline.run("x86-cpu", fleet.device_ids, trigger="manual", reason="deployment")
        wall = time.monotonic() - started
    finally:
        fleet.stop()
    assert out.state == "registered", out.detail
    print(f"deployment-engine retraining run: {wall:.1f} s")
    for d in fleet.devices:  # each device exported its own samples and ran a SuperNode
        with np.load(d.state_dir / "fl" / "train.npz") as data:
            assert len(data["y"]) == 120
        node_log = (d.state_dir / "fl" / "supernode.log").read_text(errors="replace")
        assert "ran in this process: completed" in node_log and "R4:" not in node_log  # TLS
    with registry.session() as s:
        run = admin.get_training_run(s, out.run_id)
        assert run.config["engine"] == "deployment" and run.config["clients"] == fleet.device_ids
        assert catalog.get_model_version(s, "sensor-mlp", 1).training_run_id == out.run_id
    assert out.candidate_accuracy is not None and out.candidate_accuracy > 0.5
    registry.close()
