"""#17: ``cloud-hub serve`` runs the retraining controller (the closed loop) beside its rollout
engine, as its config's ``[retraining]`` table says: exactly one hub process trains (a
``--no-engine`` replica runs no controller), ``--no-retraining`` turns it off, and the
policy's cooldown, budget and approval mode are the configured ones. On real parts: the
registry, Mosquitto on 127.0.0.1:1883, the hub CA and key store, ``cloud-hub serve`` as a
process; the devices are MQTT clients that report drift and receive the training orders."""

from __future__ import annotations

import dataclasses
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.config import HubConfig, RetrainingConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.hub import build_hub
from cloud_hub.keys import KeyStore
from cloud_hub.loop.controller import RetrainController
from cloud_hub.registry import admin, open_registry
from shared import toml_text
from shared.data.sensors import generate_sensor_data
from shared.messages import (
    DriftReport,
    Hello,
    InstalledModel,
    Message,
    Status,
    TrainCommand,
    decode_message,
)
from shared.net import free_port
from shared.topics import TopicScheme

CLI = [sys.executable, "-m", "cloud_hub.cli"]
CLASS = "x86-cpu"
DEVICES = ["edge-a", "edge-b", "edge-c"]


def _cli(*args: str) -> str:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run(
        [*CLI, *args], check=True, capture_output=True, text=True, env=env, timeout=120
    ).stdout


def _retraining_table(validation: Path, **overrides: object) -> dict[str, object]:
    return {
        "device_classes": [CLASS],
        "validation_file": str(validation),
        "cooldown_s": 900.0,
        "max_runs_per_day": 4,
        "require_approval": True,
        "drift_threshold": 1.0,
        "drift_duration_s": 0.0,
        "tick_interval_s": 0.5,
        **overrides,
    }


@pytest.fixture(scope="module")
def hub_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A hub data folder with a key store, a CA (enroll-init) and a validation set."""
    data = tmp_path_factory.mktemp("hub") / "data"
    KeyStore.init(data / "keys")
    _cli("enroll-init", "--data-dir", str(data), "--hostname", "localhost")
    x, y = generate_sensor_data(200, seed=7, sample_seed=1)
    np.savez(data / "validation.npz", x=x, y=y)
    return data


def test_the_retraining_table_is_read_and_checked(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    table = _retraining_table(
        Path("/srv/val.npz"), superlink_host="hub.example", serverapp="forked"
    )
    path.write_text(toml_text.dumps({"retraining": table}))
    settings = HubConfig.from_file(path).retraining
    assert settings.configured and settings.device_classes == (CLASS,)
    assert settings.serverapp == "forked" and HubConfig().retraining.serverapp is None
    assert settings.validation_file == Path("/srv/val.npz")
    policy = settings.policy()
    assert (policy.cooldown_s, policy.max_runs_per_day, policy.require_approval) == (
        900.0,
        4,
        True,
    )
    assert not HubConfig().retraining.configured  # nothing to watch by default: off
    for bad in (
        {"num_rounds": 0},
        {"min_devices": 2},  # SecAgg+ needs three
        {"cooldown_s": -1.0},
        {"max_runs_per_day": 0},
        {"device_classes": CLASS},  # a string, not a list
        {"nonsense": 1},
        {"serverapp": "threads"},  # not a ServerApp mode
    ):
        path.write_text(toml_text.dumps({"retraining": {**table, **bad}}))
        with pytest.raises(HubConfigError):
            HubConfig.from_file(path)


@pytest.mark.integration
def test_only_the_engines_hub_runs_the_controller(hub_dir: Path, tmp_path: Path) -> None:
    base = HubConfig(data_dir=hub_dir, topic_prefix=f"rt-{uuid.uuid4().hex[:8]}")
    table = _retraining_table(hub_dir / "validation.npz", serverapp="forked")
    config = _with_retraining(base, table)
    with build_hub(config) as hub:
        assert isinstance(hub.retraining, RetrainController) and hub.engine is not None
        deployment = hub.retraining.pipeline.deployment
        assert deployment is not None  # the controller trains on the devices
        link = deployment._superlink(tmp_path / "link", 9999)
        assert link.serverapp == "forked"  # [retraining] serverapp reaches the SuperLink
        assert hub.retraining.device_classes == (CLASS,)
        assert hub.retraining.pipeline.rollouts is hub.engine  # its rollouts are the engine's
        policy = hub.retraining.pipeline.config.policy
        assert (policy.cooldown_s, policy.max_runs_per_day, policy.require_approval) == (
            900.0,
            4,
            True,
        )
        assert any(t.name == "retrain-controller" and t.is_alive() for t in threading.enumerate())
    for built in (
        lambda: build_hub(config, rollout_engine=False),  # serve --no-engine: a replica
        lambda: build_hub(config, retraining=False),  # serve --no-retraining
        lambda: build_hub(_with_retraining(base, {**table, "enabled": False})),
        lambda: build_hub(base),  # no [retraining] table
    ):
        hub = built()
        try:
            assert hub.retraining is None
        finally:
            hub.stop()


@pytest.mark.parametrize(
    ("flags", "wanted"),
    [
        ([], {"rollout_engine": True, "retraining": True}),
        (["--no-retraining"], {"rollout_engine": True, "retraining": False}),
        (["--no-engine"], {"rollout_engine": False, "retraining": True}),  # no engine: none
    ],
)
def test_serve_flags_reach_the_hub(
    flags: list[str], wanted: dict[str, bool], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import cloud_hub.hub
    from cloud_hub.cli import main

    built: dict[str, object] = {}

    def record(config: HubConfig, **kwargs: object) -> None:
        built.update(kwargs)
        raise SystemExit(7)  # recorded: serve nothing

    monkeypatch.setattr(cloud_hub.hub, "build_hub", record)
    with pytest.raises(SystemExit):
        main(["serve", "--data-dir", str(tmp_path), *flags])
    assert built == wanted


def _with_retraining(config: HubConfig, table: dict[str, object]) -> HubConfig:
    return dataclasses.replace(config, retraining=RetrainingConfig.from_dict(dict(table)))


class _Fleet:
    """Three devices as MQTT clients: they report a model and drift, and keep the commands
    the hub sends them."""

    def __init__(self, prefix: str) -> None:
        self.topics = TopicScheme(prefix)
        self.commands: list[TrainCommand] = []
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        for device in DEVICES:
            self.client.subscribe(self.topics.device(device, "cmd"), qos=1)

    def _on_message(self, _c: object, _u: object, message: mqtt.MQTTMessage) -> None:
        decoded = decode_message(message.payload)
        if isinstance(decoded, TrainCommand):
            self.commands.append(decoded)

    def report(self, device: str, message: Message, channel: str) -> None:
        info = self.client.publish(self.topics.device(device, channel), message.encode(), qos=1)
        info.wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@dataclass(frozen=True)
class _Serving:
    url: str
    prefix: str
    token: str
    log: Path
    proc: subprocess.Popen[bytes]

    def stop(self) -> tuple[int, float]:
        """SIGTERM; the exit code and how long the hub took to exit."""
        started = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        return code, time.monotonic() - started


@pytest.fixture
def serve(hub_dir: Path, tmp_path: Path) -> Iterator[_Serving]:
    """``cloud-hub serve --config hub.toml`` with a ``[retraining]`` table; stopped with
    SIGTERM at the end if the test has not stopped it (it must exit 0)."""
    prefix = f"rt-{uuid.uuid4().hex[:8]}"
    config = tmp_path / "hub.toml"
    # the devices never answer: the run waits for them until the hub stops
    table = _retraining_table(hub_dir / "validation.npz", train_timeout_s=300.0)
    config.write_text(toml_text.dumps({"topic_prefix": prefix, "retraining": table}))
    token = _cli("token", "create", "--role", "operator", "--data-dir", str(hub_dir)).strip()
    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [*CLI, "serve", "--config", str(config), "--data-dir", str(hub_dir),
             "--port", str(port), "--offline-after", "0"],
            stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
        serving = _Serving(f"http://127.0.0.1:{port}", prefix, token, log_path, proc)
        try:
            yield serving
        finally:
            code, _took = serving.stop()
    assert code == 0, log_path.read_text()


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _wait(predicate: Callable[[], bool], timeout: float, what: str, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, (
            f"timed out waiting for {what}: {log.read_text()[-3000:]}"
        )
        time.sleep(0.3)


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_serve_retrains_on_drift_by_itself(serve: _Serving, hub_dir: Path) -> None:
    base, log = serve.url, serve.log
    headers = {"Authorization": f"Bearer {serve.token}"}

    def up() -> bool:
        try:
            return bool(httpx.get(f"{base}/healthz", timeout=1).json()["ok"])
        except httpx.HTTPError:
            return False

    _wait(up, 60, "the hub's API", log)
    assert "retraining controller running" in log.read_text()
    fleet = _Fleet(serve.prefix)
    try:
        installed = InstalledModel("sensor-mlp", 1, "b" * 64)
        for device in DEVICES:
            fleet.report(device, Hello(device, CLASS, "1", ["onnx-cpu"], 1, 1), "hello")
            fleet.report(device, Status(device, online=True, installed=installed), "status")
        for device in DEVICES[:1]:  # one device of three drifts: its class peers join it
            report = DriftReport(device, f"r-{device}", "sensor-mlp", 1, 200, {}, 7.5, True)
            fleet.report(device, report, "drift")

        def runs() -> list[dict[str, Any]]:
            page = httpx.get(f"{base}/api/v1/training-runs", headers=headers, timeout=5).json()
            return list(page["items"])

        _wait(lambda: any(r["trigger"] == "drift" for r in runs()), 60, "a drift run", log)
        _wait(lambda: len({c.command_id for c in fleet.commands}) >= 3, 60, "orders", log)
        orders = [(c.order or {})["signed"] for c in fleet.commands]
        assert {o["device_id"] for o in orders} == set(DEVICES)  # drifted one + class peers
        assert all(o["secure_aggregation"] for o in orders)
        run = next(r for r in runs() if r["trigger"] == "drift")
        assert run["config"]["engine"] == "deployment" and run["config"]["secagg"] is True
        assert sorted(run["config"]["cohort"]) == DEVICES
        # the hub stops while the run waits for the devices on its SuperLink: the run ends
        # at once, recorded as failed, and the SuperLink does not outlive the hub
        superlink = orders[0]["superlink"]
        _wait(lambda: _listening(superlink), 120, f"the SuperLink on {superlink}", log)
        code, took = serve.stop()
        assert code == 0 and took < 30, (code, took, log.read_text()[-3000:])
        assert not _listening(superlink)
    finally:
        fleet.close()
    registry = open_registry(f"sqlite:///{hub_dir / 'hub.db'}")
    try:
        with registry.session() as s:
            stopped = admin.get_training_run(s, run["run_id"])
    finally:
        registry.close()
    assert stopped.state == "failed" and "abort" in stopped.detail, stopped
