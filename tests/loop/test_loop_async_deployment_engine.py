"""An asynchronous class over the loop's production path, Flower's Deployment Engine: the
eligibility gate reads the registry, the hub signs orders for the fit devices only, starts a
SuperLink (TLS from the hub CA) and submits the asynchronous FAB; three real device
processes verify their orders and start SuperNodes pinned to it; each trains, holds its
update in its own state, and SecAgg+ folds buffers of three into new global versions; the
candidate lands in the model store and faces the gates (champion, compression), then is
bundled and registered. Slow: the Deployment Engine polls (minutes on 2 loaded cores)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.keys import KeyStore
from cloud_hub.loop.config import LoopConfig
from cloud_hub.loop.device_training import DeploymentTraining
from cloud_hub.loop.pipeline import RetrainPipeline
from cloud_hub.loop.policy import RetrainPolicy
from cloud_hub.registry import admin, catalog, devices, open_registry
from shared.broker_endpoint import BrokerEndpoint
from shared.data.sensors import generate_sensor_data
from shared.messages import Hello
from shared.topics import TopicScheme
from simulations.demo.fleet import PROBLEM_SEED, DemoFleet
from tests.loop.test_loop_async_eligibility import report_fit
from tests.loop.test_loop_deployment_engine import _wait_online

pytestmark = [pytest.mark.slow, pytest.mark.integration, pytest.mark.timeout(900)]


def test_async_class_trains_in_secure_buffers_on_agent_processes(tmp_path: Path) -> None:
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
    with registry.session() as s:  # what the hub's ingest knows of them: online, fit
        hellos = [Hello(d, "x86-cpu", "0.1", [], 1 << 30, 1 << 30) for d in fleet.device_ids]
        devices.record_hellos(s, hellos, now=time.time())
        devices.set_online(s, dict.fromkeys(fleet.device_ids, True))
    report_fit(registry, fleet.device_ids)
    x, y = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=77)
    pipeline = RetrainPipeline(
        registry=registry,
        keys=keys,
        rollouts=None,
        validation=(x, y),
        calibration=(x, y),
        config=LoopConfig(
            work_dir=tmp_path / "loop",
            policy=RetrainPolicy(min_devices=3),
            class_modes={"x86-cpu": "async"},
            async_buffer_size=3,
            async_buffers=2,
        ),
        deployment=DeploymentTraining(
            mqtt=BrokerEndpoint(),
            topics=TopicScheme(prefix),
            workdir=tmp_path / "fl",
            keys=keys,
            ca_dir=tmp_path / "ca",
            timeout_s=600,
        ),
    )
    fleet.start()
    try:
        _wait_online(prefix, fleet.device_ids)
        started = time.monotonic()
        out = pipeline.run("x86-cpu", fleet.device_ids, trigger="manual", reason="async")
        wall = time.monotonic() - started
    finally:
        fleet.stop()
    assert out.state == "registered", out.detail
    print(f"asynchronous deployment-engine retraining run: {wall:.1f} s")
    for d in fleet.devices:  # each device ran the ordered FAB and held, then released, its update
        node_log = (d.state_dir / "fl" / "supernode.log").read_text(errors="replace")
        assert "ran in this process: completed" in node_log and "R4:" not in node_log
        held = d.state_dir / "fl" / "held"
        assert held.is_dir() and not (held / "held-update.npz").exists()
    with registry.session() as s:
        run = admin.get_training_run(s, out.run_id)
        assert run.config["mode"] == "async" and run.config["engine"] == "deployment"
        assert run.config["clients"] == sorted(fleet.device_ids)
        assert run.metrics["eligibility"][0]["eligible"] == 3
        buffers = run.metrics["buffers"]
        assert [b["new_version"] for b in buffers] == [1, 2]
        assert all(b["secure"] and len(b["folded"]) == 3 for b in buffers)
        version = catalog.get_model_version(s, "sensor-mlp", 1)
        assert version.training_run_id == out.run_id
        assert version.lineage["federated"]["mode"] == "async"
    assert ModelStore(tmp_path / "loop" / "models").get(out.run_id).lineage["mode"] == "async"
    assert out.candidate_accuracy is not None and out.candidate_accuracy > 0.5
    registry.close()
