"""Test helpers for the agent OTA tests: keys, keyrings, real ONNX models, bundles, chunks.

Bundles are built with ``shared.bundle.build_bundle`` exactly as the hub does; chunks are
framed with ``shared.chunks``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.config import AgentLimits, OtaTimeouts
from edge_agent.ota import OtaUpdater
from edge_agent.ota.health import HealthCheck
from shared.bundle import (
    BundleManifest,
    RollbackOrder,
    artifact_info,
    build_bundle,
    bundle_id_of,
    parse_bundle,
    sign_rollback_order,
)
from shared.chunks import encode_chunk, split_chunks
from shared.messages import ChunkRequest, DeployCommand, Event, Message, RollbackCommand, new_id
from shared.signing import KeyEntry, Keyring, SigningKey, TrustRoot, format_time, sign_envelope
from shared.topics import TopicScheme
from tests.onnx_models import linear_onnx

UTC = timezone.utc
REPO = Path(__file__).resolve().parents[2]
PYTHON = sys.executable


def utc(offset_s: float = 0.0) -> datetime:
    return datetime.now(tz=UTC) + timedelta(seconds=offset_s)


def onnx_model_bytes(in_dim: int = 4, out_dim: int = 3, seed: int = 0) -> bytes:
    """A real linear ONNX model (input ``x`` [N, in_dim] -> ``y`` [N, out_dim])."""
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(in_dim, out_dim)).astype(np.float32)
    b = rng.normal(size=(out_dim,)).astype(np.float32)
    return linear_onnx(w, b, input_name="x", output_name="y")


@dataclass
class Authority:
    """The hub's keys as a test builds them: root, one online signing key, the keyring."""

    root: SigningKey
    signer: SigningKey
    keyring_version: int = 1
    keyring_expires: datetime = field(default_factory=lambda: utc(86400))
    revoked: list[str] = field(default_factory=list)
    extra_signers: list[SigningKey] = field(default_factory=list)

    @property
    def trust(self) -> TrustRoot:
        return TrustRoot(root_keys={self.root.keyid: self.root.public_hex})

    def keyring(self) -> dict[str, Any]:
        keys = {
            k.keyid: KeyEntry(public=k.public_hex, expires=format_time(utc(30 * 86400)))
            for k in [self.signer, *self.extra_signers]
        }
        ring = Keyring(
            version=self.keyring_version,
            expires=format_time(self.keyring_expires),
            signing_keys=keys,
            revoked=list(self.revoked),
        )
        return sign_envelope(ring.to_signed(), [self.root])

    def write_trust(self, path: Path) -> Path:
        path.write_text(json.dumps(self.trust.to_dict()))
        return path


def make_authority() -> Authority:
    return Authority(root=SigningKey.generate(), signer=SigningKey.generate())


def make_bundle(
    auth: Authority,
    *,
    version: int,
    device_class: str = "x86-cpu",
    model_name: str = "sensor-mlp",
    model: bytes | None = None,
    model_file: str = "model.onnx",
    expires: datetime | None = None,
    signer: SigningKey | None = None,
    keyring: dict[str, Any] | None = None,
    extra_artifacts: dict[str, tuple[bytes, str]] | None = None,
) -> bytes:
    model = model if model is not None else onnx_model_bytes(seed=version)
    artifacts = {model_file: model}
    media = "application/onnx" if model_file.endswith(".onnx") else "application/octet-stream"
    infos = [artifact_info(model_file, model, "model", media)]
    for name, (data, role) in (extra_artifacts or {}).items():
        artifacts[name] = data
        infos.append(artifact_info(name, data, role))
    manifest = BundleManifest(
        model_name=model_name,
        version=version,
        device_class=device_class,
        created=format_time(utc()),
        expires=format_time(expires or utc(86400)),
        artifacts=infos,
        lineage={"test": True},
    )
    return build_bundle(
        manifest,
        artifacts,
        signing_keys=[signer or auth.signer],
        keyring_envelope=keyring if keyring is not None else auth.keyring(),
    )


@dataclass(frozen=True)
class Offer:
    """A deploy command and the chunk frames of its bundle."""

    command: DeployCommand
    frames: list[bytes]
    bundle: bytes

    @property
    def bundle_id(self) -> str:
        return self.command.bundle_id


def make_offer(
    bundle: bytes,
    topics: TopicScheme,
    *,
    chunk_size: int = 4096,
    deployment_id: str | None = None,
    rollback_order: dict[str, Any] | None = None,
) -> Offer:
    parsed = parse_bundle(bundle)
    bundle_id = bundle_id_of(parsed.manifest_envelope)
    chunks = split_chunks(bundle_id, bundle, chunk_size)
    cmd = DeployCommand(
        command_id=new_id(),
        deployment_id=deployment_id or new_id(),
        bundle_id=bundle_id,
        manifest=parsed.manifest_envelope,
        keyring=parsed.keyring_envelope,
        total_size=len(bundle),
        chunk_size=chunk_size,
        chunk_count=len(chunks),
        chunk_topic=topics.bundle_chunks(bundle_id),
        rollback_order=rollback_order,
    )
    return Offer(command=cmd, frames=[encode_chunk(c) for c in chunks], bundle=bundle)


def with_command(offer: Offer, **changes: Any) -> Offer:
    return replace(offer, command=replace(offer.command, **changes))


def rollback_command(
    auth: Authority,
    *,
    model_name: str,
    to_version: int,
    to_bundle_id: str,
    from_bundle_id: str,
    device_class: str = "x86-cpu",
    device_ids: tuple[str, ...] = ("dev-1",),
    to_sha256: str = "",
    order_id: str | None = None,
    valid_s: float = 3600,
) -> RollbackCommand:
    """A signed rollback order (bound to ``device_ids`` running ``from_bundle_id``) in a
    command with a fresh deployment id."""
    order = RollbackOrder(
        order_id=order_id or new_id(),
        model_name=model_name,
        device_class=device_class,
        to_version=to_version,
        to_bundle_id=to_bundle_id,
        issued=format_time(utc()),
        expires=format_time(utc(valid_s)),
        device_ids=list(device_ids),
        from_bundle_id=from_bundle_id,
        to_sha256=to_sha256,
    )
    return RollbackCommand(
        command_id=new_id(),
        deployment_id=new_id(),
        order=sign_rollback_order(order, [auth.signer]),
        keyring=auth.keyring(),
    )


def unique_prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


def broker_available(host: str = "127.0.0.1", port: int = 1883) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def write_agent_config(
    directory: Path,
    *,
    device_id: str,
    prefix: str,
    trust_path: Path,
    port: int = 1883,
    device_class: str = "x86-cpu",
    chunk_retry_s: float = 0.5,
    extra: str = "",
) -> Path:
    path = directory / f"{device_id}.toml"
    path.write_text(
        f"""device_id = "{device_id}"
device_class = "{device_class}"
state_dir = "{directory / device_id}"
trust_root = "{trust_path}"
status_interval_s = 5

[mqtt]
url = "mqtt://127.0.0.1:{port}"
topic_prefix = "{prefix}"
session_expiry_s = 600
reconnect_min_s = 0.2
reconnect_max_s = 2.0

[timeouts]
chunk_retry_s = {chunk_retry_s}
download_s = 120
{extra}
"""
    )
    return path


def start_agent(config: Path, log_path: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO)
    env.setdefault("OMP_NUM_THREADS", "1")
    log = open(log_path, "ab")  # noqa: SIM115 - handed to the child
    return subprocess.Popen(
        [PYTHON, "-m", "edge_agent.cli", "run", "--config", str(config)],
        cwd=REPO,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


class BundleSender:
    """A minimal hub side for agent tests (plain paho): sends deploy commands, publishes each
    chunk once on the fan-out topic, answers chunk requests, records what devices report."""

    def __init__(
        self, topics: TopicScheme, *, port: int = 1883, answer_requests: bool = True
    ) -> None:
        import threading

        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.topics = topics
        self.answer_requests = answer_requests
        self.offers: dict[str, Offer] = {}
        self.messages: list[tuple[str, Any]] = []  # (device_id, decoded message)
        self.raw: list[tuple[str, bytes]] = []
        self.requests: list[Any] = []
        self._lock = threading.Lock()
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"hub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        for channel in ("hello", "status", "events", "chunk-req", "telemetry", "drift"):
            self.client.subscribe(topics.all_devices(channel), qos=1)
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        from shared.messages import ChunkRequest, decode_message

        try:
            dt = self.topics.parse_device_topic(msg.topic)
            decoded = decode_message(msg.payload)
        except Exception:
            return
        with self._lock:
            self.raw.append((msg.topic, bytes(msg.payload)))
            self.messages.append((dt.device_id, decoded))
        if isinstance(decoded, ChunkRequest):
            self.requests.append(decoded)
            offer = self.offers.get(decoded.bundle_id)
            if offer is not None and self.answer_requests:
                topic = self.topics.device(dt.device_id, "chunks")
                for i in decoded.indices:
                    if 0 <= i < len(offer.frames):
                        client.publish(topic, offer.frames[i], qos=1)

    def deploy(
        self,
        offer: Offer,
        devices: list[str],
        *,
        chunks: list[int] | None = None,
        settle_s: float = 0.3,
    ) -> None:
        self.offers[offer.bundle_id] = offer
        for d in devices:
            self.client.publish(self.topics.device(d, "cmd"), offer.command.encode(), qos=1)
        # like the hub: agents report download_started once subscribed to the fan-out
        dep = offer.command.deployment_id
        wait_for(lambda: all("download_started" in self.kinds(d, dep) for d in devices), 30)
        time.sleep(settle_s)
        self.fanout(offer, chunks)

    def fanout(self, offer: Offer, chunks: list[int] | None = None) -> None:
        topic = offer.command.chunk_topic
        for i in range(len(offer.frames)) if chunks is None else chunks:
            self.client.publish(topic, offer.frames[i], qos=1)

    def send(self, device: str, message: Any) -> None:
        self.client.publish(self.topics.device(device, "cmd"), message.encode(), qos=1)

    def of(self, device: str, cls: type) -> list[Any]:
        with self._lock:
            return [m for d, m in self.messages if d == device and isinstance(m, cls)]

    def kinds(self, device: str, deployment_id: str) -> list[str]:
        from shared.messages import Event

        return [e.kind for e in self.of(device, Event) if e.deployment_id == deployment_id]

    def wait_kind(self, device: str, deployment_id: str, kind: str, timeout: float = 30.0) -> bool:
        return wait_for(lambda: kind in self.kinds(device, deployment_id), timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Clock:
    """Wall-clock time that tests can jump forward (manifests carry real expiry times)."""

    def __init__(self) -> None:
        self.t = time.time()

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


@dataclass
class Harness:
    """An ``OtaUpdater`` whose reports and subscriptions are recorded; ``restart`` builds a
    fresh updater over the same state directory, as a new process would."""

    state_dir: Path
    auth: Authority
    clock: Clock
    topics: TopicScheme = field(default_factory=lambda: TopicScheme("unit"))
    sent: list[Message] = field(default_factory=list)
    subscribed: set[str] = field(default_factory=set)
    health_check: HealthCheck | None = None
    limits: AgentLimits = field(default_factory=lambda: AgentLimits(fsync_chunks=False))
    updater: OtaUpdater = field(init=False)

    def __post_init__(self) -> None:
        self.updater = self._build()

    def _build(self) -> OtaUpdater:
        return OtaUpdater(
            device_id="dev-1",
            device_class="x86-cpu",
            state_dir=self.state_dir,
            trust=self.auth.trust,
            topics=self.topics,
            emit=self.sent.append,
            subscribe=self.subscribed.add,
            unsubscribe=self.subscribed.discard,
            timeouts=OtaTimeouts(chunk_retry_s=1.0, download_s=60.0),
            limits=self.limits,
            health_check=self.health_check,
            clock=self.clock,
        )

    def restart(self) -> OtaUpdater:
        self.updater.close()
        self.subscribed.clear()
        self.updater = self._build()
        self.updater.recover()
        return self.updater

    def offer(self, version: int, **kw: Any) -> Offer:
        chunk_size = int(kw.pop("chunk_size", 256))
        return make_offer(
            make_bundle(self.auth, version=version, **kw), self.topics, chunk_size=chunk_size
        )

    def deliver(self, offer: Offer, indices: list[int] | None = None) -> None:
        self.updater.handle_deploy(offer.command)
        self.chunks(offer, indices)

    def chunks(self, offer: Offer, indices: list[int] | None = None) -> None:
        for i in range(len(offer.frames)) if indices is None else indices:
            self.updater.handle_chunk(offer.frames[i])

    def events(self, deployment_id: str | None = None) -> list[str]:
        return [
            m.kind
            for m in self.sent
            if isinstance(m, Event) and (deployment_id is None or m.deployment_id == deployment_id)
        ]

    def event(self, deployment_id: str, kind: str) -> Event:
        for m in self.sent:
            if isinstance(m, Event) and m.deployment_id == deployment_id and m.kind == kind:
                return m
        raise AssertionError(f"no {kind} event for {deployment_id}: {self.events(deployment_id)}")

    def requests(self) -> list[ChunkRequest]:
        return [m for m in self.sent if isinstance(m, ChunkRequest)]

    def answer(self, frames: list[bytes]) -> None:
        """Deliver ``frames`` at the indices of the latest chunk request (the hub's repair)."""
        for i in self.requests()[-1].indices:
            self.updater.handle_chunk(frames[i])

    @property
    def active_bundle(self) -> str | None:
        slot = self.updater.slots.active()
        return slot.meta.bundle_id if slot else None


@dataclass
class AgentBench:
    """One device's agent process against the shared Mosquitto, with a hub side that
    offers bundles (``hub``) and the authority that signs them (``auth``)."""

    tmp: Path
    prefix: str
    topics: TopicScheme
    auth: Authority
    trust: Path
    hub: BundleSender
    device_id: str
    config: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def start(self, log_name: str = "agent.log") -> subprocess.Popen[bytes]:
        """Start (or restart) the agent process; its output goes to ``tmp/log_name``."""
        proc = start_agent(self.config, self.tmp / log_name)
        self.procs.append(proc)
        return proc


@contextmanager
def agent_bench(
    tmp: Path, *, answer_requests: bool = True, chunk_retry_s: float = 0.5
) -> Iterator[AgentBench]:
    """A fresh topic prefix, authority, trust file, hub side and agent config (the agent is
    not started); every agent process started is killed at the end."""
    prefix = unique_prefix()
    topics = TopicScheme(prefix)
    auth = make_authority()
    trust = auth.write_trust(tmp / "trust.json")
    device_id = f"dev-{prefix}"
    config = write_agent_config(
        tmp, device_id=device_id, prefix=prefix, trust_path=trust, chunk_retry_s=chunk_retry_s
    )
    hub = BundleSender(topics, answer_requests=answer_requests)
    bench = AgentBench(tmp, prefix, topics, auth, trust, hub, device_id, config)
    try:
        yield bench
    finally:
        for proc in bench.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
        hub.close()
