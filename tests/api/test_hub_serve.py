"""``cloud-hub serve`` as a real process: API + ingest (real Mosquitto) + rollout engine."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.config import HubConfig, parse_mqtt_url
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.messages import Event, Hello
from shared.net import free_port

CLI = [sys.executable, "-m", "cloud_hub.cli"]


def test_hub_config_from_file_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "hub.toml"
    path.write_text(
        'data_dir = "/srv/hub"\nmqtt_url = "mqtts://broker:8883"\napi_port = 9000\n'
        "[ingest]\nper_device_queue = 32\n"
    )
    cfg = HubConfig.from_file(path)
    assert cfg.database_url == "sqlite:////srv/hub/hub.db"
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("broker", 8883, True)
    assert cfg.ingest.per_device_queue == 32 and cfg.keys_path == Path("/srv/hub/keys")
    cfg = cfg.with_overrides(
        api_port=None, db_url="postgresql+psycopg://u@h/db", mqtt_url="mqtt://x"
    )
    assert (cfg.api_port, cfg.database_url, cfg.mqtt.port) == (
        9000,
        "postgresql+psycopg://u@h/db",
        1883,
    )
    for bad in (
        "api_port = 70000\n",
        "nonsense = 1\n",
        "[ingest]\nper_device_queue = 0\n",
        "= broken",
    ):
        path.write_text(bad)
        with pytest.raises(HubConfigError):
            HubConfig.from_file(path)
    with pytest.raises(HubConfigError):
        parse_mqtt_url("http://x:1")
    tls = HubConfig().with_overrides(
        mqtt_url="mqtts://broker",
        mqtt_ca_file="ca.crt",
        mqtt_cert_file="hub.crt",
        mqtt_key_file="hub.key",
    )
    assert (tls.mqtt.port, tls.mqtt.ca_file, tls.mqtt.cert_file) == (8883, "ca.crt", "hub.crt")
    with pytest.raises(HubConfigError):
        HubConfig().with_overrides(mqtt_cert_file="hub.crt")


@pytest.mark.integration
def test_serve_runs_api_ingest_and_engine(tmp_path: Path) -> None:
    data = tmp_path / "hub"
    KeyStore.init(data / "keys")
    prefix = f"serve-{uuid.uuid4().hex[:8]}"
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    token = subprocess.run(
        [*CLI, "token", "create", "--role", "operator", "--data-dir", str(data)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    ).stdout.strip()
    log = open(tmp_path / "serve.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [*CLI, "serve", "--data-dir", str(data), "--port", str(port), "--prefix", prefix],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    base = f"http://127.0.0.1:{port}"
    headers = {"Authorization": f"Bearer {token}"}
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/healthz", timeout=1).json()["ok"]:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, (
                tmp_path / "serve.log"
            ).read_text()
            time.sleep(0.2)
        client = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        hello = Hello(
            device_id="edge-1",
            device_class="rpi4",
            agent_version="1",
            runtimes=["onnx-cpu"],
            free_disk_bytes=1,
            free_mem_bytes=1,
            labels={"site": "plant-3"},
        )
        infos = [
            client.publish(f"{prefix}/v1/devices/edge-1/hello", hello.encode(), qos=1),
            client.publish(
                f"{prefix}/v1/devices/edge-1/events",
                Event(device_id="edge-1", event_id="ev-1", kind="installed").encode(),
                qos=1,
            ),
        ]
        for info in infos:
            info.wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        deadline = time.monotonic() + 15
        while True:
            r = httpx.get(f"{base}/api/v1/devices?label=site=plant-3", headers=headers, timeout=5)
            if r.json()["total"] == 1:
                break
            assert time.monotonic() < deadline, r.text
            time.sleep(0.2)
        assert httpx.get(f"{base}/api/v1/events", headers=headers).json()["total"] == 1
        assert httpx.get(f"{base}/api/v1/devices").status_code == 401
        # the engine is attached: an unknown bundle is the engine's clear 409, not "no engine"
        config = {"bundle_id": "nope", "target": {"device_class": "rpi4"}}
        r = httpx.post(f"{base}/api/v1/rollouts", json={"config": config}, headers=headers)
        assert r.status_code == 409 and "not registered" in r.json()["message"], r.text
        metrics = httpx.get(f"{base}/metrics").text
        assert "fedfleet_devices_online 1.0" in metrics
        assert "fedfleet_ingest_received_total 2.0" in metrics
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
            log.close()
    assert code == 0, (tmp_path / "serve.log").read_text()


def test_hub_server_indexes_built_bundles(tmp_path: Path) -> None:
    from cloud_hub.hub import build_hub
    from cloud_hub.registry import catalog
    from shared.bundle import (
        BundleManifest,
        artifact_info,
        build_bundle,
        bundle_id_of,
        parse_bundle,
    )

    keys = KeyStore.init(tmp_path / "hub" / "keys")
    model = b"model-bytes" * 10
    manifest = BundleManifest(
        model_name="sensor-mlp",
        version=1,
        device_class="rpi4",
        created="2026-11-24T00:00:00Z",
        expires="2027-11-24T00:00:00Z",
        artifacts=[artifact_info("model.onnx", model, "model")],
    )
    data = build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=keys.signing_keys(),
        keyring_envelope=keys.keyring_envelope(),
    )
    bundle_id = bundle_id_of(parse_bundle(data).manifest_envelope)
    store = tmp_path / "hub" / "keys" / "bundles"
    store.mkdir()
    (store / f"{bundle_id}.ffb").write_bytes(data)
    (store / "broken.ffb").write_bytes(b"not a bundle")  # logged and skipped
    server = build_hub(
        HubConfig(data_dir=tmp_path / "hub", enable_ingest=False, offline_after_s=0),
        rollout_engine=False,
    )
    server.start()
    try:
        assert server.registry is not None
        with server.registry.session() as s:
            assert [b.bundle_id for b in catalog.list_bundles(s).items] == [bundle_id]
    finally:
        server.stop()
