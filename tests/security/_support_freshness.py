"""Fixtures for the R10 tests: a private Mosquitto with the generated mTLS config and ACLs, the
hub's side of the trust topics, and real agents (``EdgeAgent``) connected over mTLS.

Everything here is real: the broker runs ``write_broker_files``'s configuration, the hub side
uses the hub's client certificate and :class:`cloud_hub.trust_publisher.TrustPublisher` with a
real :class:`cloud_hub.keys.KeyStore`, and each device is an ``EdgeAgent`` with its own
certificate from the device CA.
"""

from __future__ import annotations

import getpass
import json
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from fastapi import FastAPI
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.enrollment import CertificateAuthority, write_broker_files
from cloud_hub.enrollment.broker import BrokerFiles
from cloud_hub.enrollment.hubdir import open_enrollment, server_tls_files
from cloud_hub.enrollment.router import enrollment_router
from cloud_hub.enrollment.service import EnrollmentConfig, EnrollmentService
from cloud_hub.keys import KeyStore
from cloud_hub.trust_publisher import TrustPublisher
from edge_agent.agent import EdgeAgent
from edge_agent.config import load_config
from shared.bundle import BundleManifest, artifact_info, build_bundle
from shared.freshness import ReleasedBundle
from shared.messages import Event, EventKind, decode_message
from shared.net import free_port
from shared.signing import SigningKey, format_time
from shared.topics import TopicScheme
from simulations.harness.api_thread import ServedApp
from tests.agent_ota.agent_ota_helpers import Offer, make_offer, onnx_model_bytes, utc, wait_for
from tests.identity.identity_support import mosquitto_process

HUB_USER = "fedfleet-hub"
DEVICE_CLASS = "x86-cpu"


class Clock:
    """The agents' clock; tests jump it forward (expiry of the freshness document)."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def jump(self, seconds: float) -> None:
        self.offset += seconds


@dataclass
class TrustBroker:
    """A running Mosquitto with the generated mTLS configuration and its device CA."""

    files: BrokerFiles
    device_ca: CertificateAuthority
    scheme: TopicScheme
    port: int
    hub_port: int
    log: Path


@contextmanager
def running_broker(
    tmp: Path, *, device_ca: CertificateAuthority | None = None
) -> Iterator[TrustBroker]:
    """``device_ca``: the hub CA that enrolls devices (default: a new one)."""
    scheme = TopicScheme(f"r10-{uuid.uuid4().hex[:8]}")
    device_ca = device_ca or CertificateAuthority.create()
    hub_ca = CertificateAuthority.create(common_name="fedfleet hub client CA")
    port, hub_port = free_port(), free_port()
    user = getpass.getuser()
    files = write_broker_files(
        device_ca,
        tmp / "broker",
        hub_ca=hub_ca,
        hub_user=HUB_USER,
        scheme=scheme,
        port=port,
        hub_port=hub_port,
        bind="127.0.0.1",
        broker_user=user if user == "root" else None,
    )
    log = tmp / "broker" / "mosquitto.log"
    with mosquitto_process(files.config, log, (port, hub_port)):
        yield TrustBroker(files, device_ca, scheme, port, hub_port, log)


class MqttPeer:
    """A paho MQTT v5 client with a client certificate that records what it receives."""

    def __init__(
        self, port: int, *, client_id: str, ca: Path, cert: Path, key: Path, scheme: TopicScheme
    ) -> None:
        self.scheme = scheme
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=paho.MQTTv5
        )
        self.client.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key))
        self._cond = threading.Condition()
        self.events: list[Event] = []
        self.statuses: dict[str, dict[str, Any]] = {}
        self.pubacks: dict[int, Any] = {}
        self.client.on_message = self._on_message
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port, keepalive=10)
        self.client.loop_start()

    def _on_publish(self, _c: Any, _u: Any, mid: int, rc: Any, _p: Any) -> None:
        with self._cond:
            self.pubacks[mid] = rc
            self._cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: Any) -> None:
        with self._cond:
            if msg.topic.endswith("/events"):
                event = decode_message(bytes(msg.payload), expected=(Event,))
                assert isinstance(event, Event)
                self.events.append(event)
            elif msg.topic.endswith("/status") and msg.payload:
                status = json.loads(msg.payload)
                self.statuses[status["device_id"]] = status
            self._cond.notify_all()

    def subscribe_reports(self) -> None:
        for channel in ("events", "status"):
            self.client.subscribe(self.scheme.all_devices(channel), qos=1)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Any:
        """QoS 1; returns the broker's PUBACK reason code."""
        info = self.client.publish(topic, payload, qos=1, retain=retain)
        with self._cond:
            assert self._cond.wait_for(lambda: info.mid in self.pubacks, 10), "no PUBACK"
            return self.pubacks[info.mid]

    def publish_retained(self, topic: str, payload: bytes) -> None:
        rc = self.publish(topic, payload, retain=True)
        assert not rc.is_failure, rc

    def kinds(self, device_id: str) -> list[str]:
        with self._cond:
            return [e.kind for e in self.events if e.device_id == device_id]

    def events_of(self, device_id: str, kind: str) -> list[Event]:
        with self._cond:
            return [e for e in self.events if e.device_id == device_id and e.kind == kind]

    def wait_event(self, device_id: str, kind: str, timeout: float = 30.0) -> Event:
        assert wait_for(lambda: self.events_of(device_id, kind), timeout), (
            f"{device_id} reported no {kind!r}; got {self.kinds(device_id)}"
        )
        return self.events_of(device_id, kind)[-1]

    def wait_deployment(self, deployment_id: str, kind: str, timeout: float = 60.0) -> Event:
        def found() -> list[Event]:
            with self._cond:
                return [
                    e for e in self.events if e.deployment_id == deployment_id and e.kind == kind
                ]

        assert wait_for(found, timeout), (
            f"deployment {deployment_id}: no {kind!r}; got {self.deployment_kinds(deployment_id)}"
        )
        return found()[-1]

    def deployment_kinds(self, deployment_id: str) -> list[str]:
        with self._cond:
            return [e.kind for e in self.events if e.deployment_id == deployment_id]

    def online(self, device_id: str) -> bool:
        with self._cond:
            return bool(self.statuses.get(device_id, {}).get("online"))

    def trust_status(self, device_id: str) -> dict[str, Any]:
        with self._cond:
            return dict(self.statuses.get(device_id, {}).get("trust") or {})

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def hub_peer(broker: TrustBroker) -> MqttPeer:
    """The hub's connection: its own certificate, on the hub listener."""
    files = broker.files
    peer = MqttPeer(
        broker.hub_port,
        client_id=f"{HUB_USER}:r10-test:{uuid.uuid4().hex[:8]}",
        ca=files.ca_cert,
        cert=files.hub_cert,
        key=files.hub_key,
        scheme=broker.scheme,
    )
    peer.subscribe_reports()
    time.sleep(0.3)  # SUBSCRIBE handled before the devices report
    return peer


def device_peer(broker: TrustBroker, tmp: Path, device_id: str) -> MqttPeer:
    """A raw MQTT client with a device's certificate (to try what a device may not do)."""
    cert, key = issue_device(broker, tmp, device_id)
    return device_mqtt(broker, device_id, cert, key)


def device_mqtt(broker: TrustBroker, device_id: str, cert: Path, key: Path) -> MqttPeer:
    """A raw MQTT client connected as ``device_id`` with the certificate ``cert``/``key``."""
    return MqttPeer(
        broker.port,
        client_id=device_id,
        ca=broker.files.ca_cert,
        cert=cert,
        key=key,
        scheme=broker.scheme,
    )


def issue_device(broker: TrustBroker, tmp: Path, device_id: str) -> tuple[Path, Path]:
    creds = broker.device_ca.issue_client(device_id)
    d = tmp / "certs"
    d.mkdir(parents=True, exist_ok=True)
    cert, key = d / f"{device_id}.crt", d / f"{device_id}.key"
    cert.write_bytes(creds.cert_pem)
    key.write_bytes(creds.key_pem)
    return cert, key


@dataclass
class Device:
    device_id: str
    config: Path
    clock: Clock = field(default_factory=Clock)
    agent: EdgeAgent | None = None

    def start(self) -> EdgeAgent:
        self.agent = EdgeAgent(
            load_config(self.config),
            runtimes=["onnxruntime:CPUExecutionProvider"],
            clock=self.clock,
        )
        self.agent.start()
        return self.agent

    def start_online(self, hub: MqttPeer) -> EdgeAgent:
        """Start and wait until the hub sees the device online (subscribed: commands reach it)."""
        agent = self.start()
        assert wait_for(lambda: agent.link.connected and hub.online(self.device_id), 30), (
            f"{self.device_id} did not come online"
        )
        return agent

    def stop(self) -> None:
        if self.agent is not None:
            self.agent.stop(drain_s=1.0)
            self.agent = None

    @property
    def state_dir(self) -> Path:
        return self.config.parent / self.device_id


def make_device(broker: TrustBroker, tmp: Path, device_id: str, keys: KeyStore) -> Device:
    """An agent config for ``device_id``: mTLS to the device listener, the key store's trust
    root pinned (as enrollment does)."""
    cert, key = issue_device(broker, tmp, device_id)
    path = tmp / f"{device_id}.toml"
    path.write_text(
        f"""device_id = "{device_id}"
device_class = "{DEVICE_CLASS}"
state_dir = "{tmp / device_id}"
trust_root = "{keys.trust_root_path}"
status_interval_s = 1

[mqtt]
url = "mqtts://127.0.0.1:{broker.port}"
topic_prefix = "{broker.scheme.prefix}"
session_expiry_s = 600
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[mqtt.tls]
ca = "{broker.files.ca_cert}"
cert = "{cert}"
key = "{key}"
"""
    )
    return Device(device_id=device_id, config=path)


def signed_offer(
    keys: KeyStore,
    scheme: TopicScheme,
    *,
    version: int,
    keyring: dict[str, Any] | None = None,
    signing_keys: list[Any] | None = None,
) -> Offer:
    """A deploy offer as the hub builds it (manifest signed by the key store's online key,
    current keyring) unless ``keyring``/``signing_keys`` replace them (an attacker's replay)."""
    model = onnx_model_bytes(seed=version)
    manifest = BundleManifest(
        model_name="sensor-mlp",
        version=version,
        device_class=DEVICE_CLASS,
        created=format_time(utc()),
        expires=format_time(utc(86400)),
        artifacts=[artifact_info("model.onnx", model, "model", "application/onnx")],
    )
    bundle = build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=signing_keys if signing_keys is not None else keys.signing_keys(),
        keyring_envelope=keyring if keyring is not None else keys.keyring_envelope(),
    )
    return make_offer(bundle, scheme, chunk_size=2048)


def deploy(hub: MqttPeer, offer: Offer, device_id: str) -> None:
    """Send the offer; publish the chunks once the device said it started downloading."""
    hub.publish(hub.scheme.device(device_id, "cmd"), offer.command.encode())
    dep = offer.command.deployment_id
    answered = {"download_started", "rejected"}
    assert wait_for(lambda: answered & set(hub.deployment_kinds(dep)), 30), (
        f"{device_id} did not answer the offer"
    )
    if "rejected" not in hub.deployment_kinds(dep):
        for frame in offer.frames:
            hub.publish(offer.command.chunk_topic, frame)


@dataclass
class World:
    """One broker, the hub's key store and trust publisher, and the devices of a test.

    ``clock`` is shared by the hub's publisher and every device: jumping it moves the whole
    fleet forward in time. ``released`` is what the registry would report as released.
    """

    tmp: Path
    broker: TrustBroker
    keys: KeyStore
    hub: MqttPeer
    clock: Clock
    released: dict[str, ReleasedBundle] = field(default_factory=dict)
    devices: list[Device] = field(default_factory=list)
    publisher: TrustPublisher = field(init=False)

    def __post_init__(self) -> None:
        self.publisher = TrustPublisher(
            self.keys,
            topics=self.broker.scheme,
            publish=self.hub.publish_retained,
            released=lambda: dict(self.released),
            clock=self.clock,
        )

    def device(self, device_id: str) -> Device:
        dev = make_device(self.broker, self.tmp, device_id, self.keys)
        dev.clock = self.clock
        self.devices.append(dev)
        return dev

    def install_offer(self, *, version: int) -> Offer:
        """An offer the hub built and signed (not sent to anyone yet)."""
        return signed_offer(self.keys, self.broker.scheme, version=version)

    def deploy_offer(self, offer: Offer, device_id: str) -> None:
        deploy(self.hub, offer, device_id)
        self.hub.wait_deployment(offer.command.deployment_id, EventKind.COMMITTED)

    def install(self, device_id: str, version: int) -> Offer:
        offer = self.install_offer(version=version)
        self.deploy_offer(offer, device_id)
        return offer

    def rotate(self, device_id: str) -> tuple[dict[str, Any], list[SigningKey]]:
        """Rotate the hub's signing key; the device applies keyring v2 from the topic.
        Returns the old keyring and signing keys (what an attacker could replay)."""
        old = (self.keys.keyring_envelope(), self.keys.signing_keys())
        self.keys.rotate()
        assert self.publisher.step()
        assert wait_for(
            lambda: any(
                e.data["keyring_version"] == 2
                for e in self.hub.events_of(device_id, EventKind.KEYRING_APPLIED)
            ),
            30,
        ), f"{device_id} did not apply keyring v2: {self.hub.kinds(device_id)}"
        return old


@contextmanager
def running_world(tmp: Path) -> Iterator[World]:
    with running_broker(tmp) as broker:
        keys = KeyStore.init(tmp / "keys")
        hub = hub_peer(broker)
        w = World(tmp, broker, keys, hub, Clock())
        try:
            assert w.publisher.step()  # keyring v1 and the first freshness document, retained
            yield w
        finally:
            for dev in w.devices:
                dev.stop()
            hub.close()


@contextmanager
def running_enrollment(
    data_dir: Path, *, keys: KeyStore, broker: TrustBroker
) -> Iterator[tuple[str, EnrollmentService]]:
    """The hub's enrollment service (``open_enrollment``: the CA in ``data_dir/ca``, the key
    store's trust root and keyring) served over HTTPS by uvicorn in a thread."""
    service = open_enrollment(
        data_dir,
        config=EnrollmentConfig(
            mqtt_url=f"mqtts://127.0.0.1:{broker.port}", topic_prefix=broker.scheme.prefix
        ),
        keys_dir=keys.directory,
    )
    tls = server_tls_files(data_dir)
    app = FastAPI()
    app.include_router(enrollment_router(service))
    with ServedApp(app, certfile=tls.certfile, keyfile=tls.keyfile) as served:
        yield served.url, service
