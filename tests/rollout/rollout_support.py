"""Integration support of the rollout tests: a real hub process (``cloud-hub serve``), real
agents (``edge-agent run``), real Mosquitto; bundles built with the hub's key store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select

from cloud_hub.keys import KeyStore
from cloud_hub.registry import Registry, catalog, devices, open_registry
from cloud_hub.registry.tables import EventRow
from shared.messages import Telemetry, new_id
from shared.net import free_port
from shared.topics import TopicScheme
from simulations.harness.agents import LocalAgentFleet
from simulations.harness.polling import eventually
from tests.onnx_models import tiny_onnx_model

MODEL = "sensor-mlp"
CLASS = "x86-cpu"

MQTT_URL = "mqtt://127.0.0.1:1883"


def build_model_bundle(keys: KeyStore, *, version: int, loadable: bool | bytes = True) -> str:
    """Build and store a signed bundle (``KEYDIR/../bundles/ID.ffb``); returns its id.
    ``loadable=False`` ships bytes that are not an ONNX model: the device health check fails;
    bytes are the model to ship."""
    import os

    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from shared.bundle import artifact_info

    if isinstance(loadable, bytes):
        model = loadable
    else:
        model = tiny_onnx_model() if loadable else os.urandom(2048)
    built = build_signed_bundle(
        keys,
        default_store(keys),
        BundleSpec(model_name=MODEL, device_class=CLASS, version=version),
        [(artifact_info("model.onnx", model, "model", "application/onnx"), model)],
    )
    return str(built.bundle_id)


class HubProcess:
    """``cloud-hub serve`` as a child process (API + ingest + rollout engine) that a test can
    SIGKILL and start again on the same data directory."""

    def __init__(self, root: Path, prefix: str, keys: KeyStore) -> None:
        import time as _time

        self.root = root
        self.prefix = prefix
        self.keys = keys
        self.port = free_port()
        self.db_url = f"sqlite:///{root / 'hub.db'}"
        self.log_path = root / "hub.log"
        self.config_path = root / "hub.toml"
        self.proc: Any = None
        self.starts = 0
        root.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(
            "\n".join(
                [
                    f'data_dir = "{root}"',
                    f'db_url = "{self.db_url}"',
                    f'mqtt_url = "{MQTT_URL}"',
                    f'topic_prefix = "{prefix}"',
                    f"api_port = {self.port}",
                    f'keys_dir = "{keys.directory}"',
                    f'instance_id = "{prefix}"',
                ]
            )
            + "\n",
            encoding="utf-8",
        )
        from cloud_hub.registry import admin

        reg = open_registry(self.db_url)
        with reg.session() as s:
            _rec, self.token = admin.create_token(
                s, name="rollout-test", role="operator", now=_time.time()
            )
        reg.close()

    @property
    def api_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> None:
        import os
        import subprocess
        import sys
        import time as _time
        import urllib.request

        self.starts += 1
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        deadline = _time.monotonic() + timeout
        while _time.monotonic() < deadline:
            assert self.proc.poll() is None, f"hub exited:\n{self.logs()}"
            try:
                with urllib.request.urlopen(f"{self.api_url}/healthz", timeout=2):
                    return
            except OSError:
                _time.sleep(0.3)
        raise AssertionError(f"hub did not come up:\n{self.logs()}")

    def kill(self) -> None:
        import signal

        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def logs(self, tail: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def api(self) -> Any:
        from cloud_hub.commands.rollout import ApiClient

        return ApiClient(self.api_url, self.token)

    def registry(self) -> Registry:
        return open_registry(self.db_url, migrate=False)


AGENT_TABLES: dict[str, dict[str, Any]] = {
    "timeouts": {"chunk_retry_s": 0.5, "health_s": 30},
    "limits": {"fsync_chunks": False},
    "labels": {"site": "plant-3"},
}


@dataclass
class World:
    keys: KeyStore
    hub: HubProcess
    fleet: LocalAgentFleet
    prefix: str
    bundles: dict[int, str]
    telemetry_seq: int = 0

    def diag(self) -> str:
        agents = "\n".join(f"--- {d}\n{self.fleet.logs(d, 800)}" for d in self.fleet.device_ids[:3])
        return f"--- hub\n{self.hub.logs(4000)}\n{agents}"

    def installed(self) -> dict[str, str | None]:
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                page = devices.list_devices(s, devices.DeviceQuery(limit=1000))
                return {d.device_id: d.installed_bundle_id for d in page.items}
        finally:
            reg.close()

    def registered(self) -> set[str]:
        """Devices whose hello the hub has stored (class and labels known: a status message
        alone creates a device row without them, and a rollout would not target it yet)."""
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                page = devices.list_devices(s, devices.DeviceQuery(limit=1000))
                return {
                    d.device_id
                    for d in page.items
                    if d.device_class == CLASS and d.labels.get("site") == "plant-3"
                }
        finally:
            reg.close()

    def events(self, prefix: str) -> list[tuple[str, str]]:
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                rows = s.execute(
                    select(EventRow.device_id, EventRow.kind).where(
                        EventRow.deployment_id.startswith(prefix, autoescape=True)
                    )
                )
                return [(d, k) for d, k in rows]
        finally:
            reg.close()

    def all_on(self, version: int) -> bool:
        """Every device runs the bundle of ``version``: that bundle itself or, when it came as
        a delta (the device then reports the delta's id), its model at that version."""
        reg = self.hub.registry()
        try:
            with reg.session() as s:
                bundle = catalog.get_bundle(s, self.bundles[version])
                page = devices.list_devices(s, devices.DeviceQuery(limit=1000))
                running = {
                    d.device_id: (d.installed_model, d.installed_version) for d in page.items
                }
        finally:
            reg.close()
        wanted = (bundle.model_name, bundle.version)
        return all(running.get(d) == wanted for d in self.fleet.device_ids)

    def rollout(self, version: int, stages: list[dict[str, Any]], **extra: Any) -> str:
        config = {
            "bundle_id": self.bundles[version],
            "target": {"device_class": "x86-cpu", "labels": {"site": "plant-3"}},
            "stages": stages,
            "gate_window_s": extra.pop("window", 2.0),
            "offline_timeout_s": 60.0,
            "seed": version,
        }
        config.update(extra.pop("config", {}))
        body: dict[str, Any] = {"config": config, **extra}
        api = self.hub.api()
        rid = str(api.request("POST", "/api/v1/rollouts", body)["rollout_id"])
        api.request("POST", f"/api/v1/rollouts/{rid}/start")
        return rid

    def status(self, rid: str) -> dict[str, Any]:
        status: dict[str, Any] = self.hub.api().request("GET", f"/api/v1/rollouts/{rid}")
        return status

    def wait_state(self, rid: str, states: tuple[str, ...], timeout: float) -> dict[str, Any]:
        return eventually(  # type: ignore[no-any-return]
            lambda: (st := self.status(rid))["state"] in states and st,
            timeout,
            f"rollout {rid} in {states}",
            lambda: f"{self.status(rid)}\n{self.diag()}",
        )

    def publish_telemetry(self, device_ids: list[str], version: int, **metrics: float) -> None:
        """What a device's runtime would report: real Telemetry messages over MQTT."""
        topics = TopicScheme(self.prefix)
        client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"t-{new_id()[:10]}",
            protocol=mqtt.MQTTv5,
        )
        client.connect("127.0.0.1", 1883)
        client.loop_start()
        try:
            for d in device_ids:
                self.telemetry_seq += 1
                msg = Telemetry(
                    device_id=d,
                    seq=self.telemetry_seq,
                    metrics=dict(metrics),
                    model_version=version,
                )
                client.publish(topics.device(d, "telemetry"), msg.encode(), qos=1).wait_for_publish(
                    5
                )
        finally:
            client.loop_stop()
            client.disconnect()


@contextmanager
def running_world(
    root: Path,
    *,
    n: int,
    bundles: Mapping[int, bool | bytes] | Callable[[KeyStore], dict[int, str]],
    tag: str = "ro",
) -> Iterator[World]:
    """Key store, bundles (``{version: loadable or the model's bytes}``, or a function that
    builds them with the key store and returns ``{version: bundle id}``; built before the
    hub starts: it indexes its bundle store at start), a hub process and ``n`` agents, with
    v1 installed everywhere."""
    keys = KeyStore.init(root / "keys")
    if callable(bundles):
        built = bundles(keys)
    else:
        built = {v: build_model_bundle(keys, version=v, loadable=ok) for v, ok in bundles.items()}
    prefix = f"{tag}-{new_id()[:10]}"
    hub = HubProcess(root / "hub", prefix, keys)
    hub.start()
    fleet = LocalAgentFleet(
        root=root / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=MQTT_URL,
        prefix=prefix,
        n=n,
        tables=AGENT_TABLES,
        id_prefix=prefix,  # MQTT client ids are device ids: unique on the shared broker
    )
    fleet.start()
    w = World(keys, hub, fleet, prefix, built)
    try:
        eventually(
            lambda: w.registered() >= set(fleet.device_ids),
            60 + 3 * n,
            "every agent registered",
            w.diag,
        )
        rid = w.rollout(1, [{"percent": 100}], window=0.5)
        w.wait_state(rid, ("done",), 90 + 2 * n)
        eventually(lambda: w.all_on(1), 30, "v1 everywhere", w.diag)
        yield w
    finally:
        fleet.stop()
        hub.stop()
