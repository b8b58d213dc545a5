"""Typed, versioned wire messages exchanged over MQTT.

Every JSON message carries ``type`` (the discriminator) and ``v`` (schema version
``MAJOR.MINOR``). A receiver refuses an unknown major version and keeps unknown extra fields
(in ``extra``) so a newer minor version passes through older code unchanged. Decoding never
raises anything but :class:`shared.errors.ProtocolError` subclasses.

Bundle chunks are binary (see :mod:`shared.chunks`), everything else is canonical JSON.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from shared._codec import from_plain, to_plain
from shared.canonical import canonical_bytes, parse_json_object
from shared.device_facts import DeviceFacts
from shared.errors import MalformedMessageError, UnsupportedVersionError
from shared.install_phase import InstallPhase

SCHEMA_VERSION = "1.0"
SUPPORTED_MAJOR = 1
MAX_MESSAGE_BYTES = 256 * 1024  # JSON control messages; bundles travel as chunks

__all__ = [
    "MAX_MESSAGE_BYTES",
    "SCHEMA_VERSION",
    "ChunkRequest",
    "DeployCommand",
    "DriftReport",
    "Event",
    "EventKind",
    "FeatureDrift",
    "FreshnessAnnouncement",
    "Hello",
    "InstalledModel",
    "KeyringAnnouncement",
    "Message",
    "PingCommand",
    "RollbackCommand",
    "Status",
    "Telemetry",
    "TelemetryMetric",
    "TrainCommand",
    "decode_message",
    "encode_message",
    "new_id",
    "now",
]


def new_id() -> str:
    return uuid.uuid4().hex


def now() -> float:
    return time.time()


@dataclass(frozen=True)
class Message:
    """Base of all JSON wire messages."""

    TYPE: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        body = to_plain(self)
        return {"type": self.TYPE, "v": SCHEMA_VERSION, **body}

    def encode(self) -> bytes:
        return canonical_bytes(self.to_dict())


_REGISTRY: dict[str, type[Message]] = {}
M = TypeVar("M", bound=Message)


def _register(cls: type[M]) -> type[M]:
    _REGISTRY[cls.TYPE] = cls
    return cls


@dataclass(frozen=True)
class InstalledModel:
    model_name: str
    version: int
    bundle_id: str
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class Hello(Message):
    """Device → hub on every (re)connect."""

    TYPE: ClassVar[str] = "hello"
    device_id: str
    device_class: str
    agent_version: str
    runtimes: list[str]
    free_disk_bytes: int
    free_mem_bytes: int
    installed: InstalledModel | None = None
    labels: dict[str, str] = field(default_factory=dict)
    # CPU model, ISA flags, GPU, TensorRT: which int8 artifact this device runs exactly
    facts: DeviceFacts | None = None
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class Status(Message):
    """Device → hub, retained. The broker publishes ``online=False`` as the last will."""

    TYPE: ClassVar[str] = "status"
    device_id: str
    online: bool
    installed: InstalledModel | None = None
    ota_state: str = InstallPhase.IDLE.value  # an InstallPhase name (open: newer agents)
    deployment_id: str | None = None
    runtime: str | None = None
    provider: str | None = None
    healthy: bool = True
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


class TelemetryMetric:
    """Names in ``Telemetry.metrics`` the hub's policies read (agents may send more)."""

    TEMPERATURE_C = "temperature_c"  # hottest host sensor
    GPU_TEMPERATURE_C = "gpu_temperature_c"
    POWER_W = "power_w"  # board or GPU power draw
    REQUEST_COUNT = "request_count"  # inference requests served since the agent started
    # labelled samples in the device's sample store now (older agents omit it: unknown)
    LABELLED_SAMPLES = "labelled_samples"


@_register
@dataclass(frozen=True)
class Telemetry(Message):
    """Device → hub, periodic. ``metrics`` holds numeric gauges (cpu_percent, p95_ms, ...)."""

    TYPE: ClassVar[str] = "telemetry"
    device_id: str
    seq: int
    metrics: dict[str, float]
    runtime: str | None = None
    provider: str | None = None
    warnings: list[str] = field(default_factory=list)
    model_version: int | None = None
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class FeatureDrift:
    psi: float
    ks: float
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class DriftReport(Message):
    """Device → hub: drift of a window of live inputs against the bundle's reference."""

    TYPE: ClassVar[str] = "drift"
    device_id: str
    report_id: str
    model_name: str
    model_version: int
    window_size: int
    features: dict[str, FeatureDrift]
    drift_score: float
    drifted: bool
    confidence_drift: bool = False
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


class EventKind:
    """Names of device events (an open set: unknown kinds are still stored)."""

    DOWNLOAD_STARTED = "download_started"
    DOWNLOAD_COMPLETE = "download_complete"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    INSTALLED = "installed"
    HEALTH_OK = "health_ok"
    HEALTH_FAILED = "health_failed"
    # the terminal events carry the name of the deployment's terminal install phase
    COMMITTED = InstallPhase.COMMITTED.value
    ROLLED_BACK = InstallPhase.ROLLED_BACK.value
    FAILED = InstallPhase.FAILED.value
    DELTA_FALLBACK = "delta_fallback"
    REJECTED = "rejected"
    RUNTIME_FALLBACK = "runtime_fallback"
    # R10: trust updates and freshness (no deployment id)
    KEYRING_APPLIED = "keyring_applied"
    TRUST_REJECTED = "trust_rejected"
    TRUST_STATE_LOST = "trust_state_lost"
    FRESHNESS_OK = "freshness_ok"
    FRESHNESS_STALE = "freshness_stale"
    FRESHNESS_BEHIND = "freshness_behind"


@_register
@dataclass(frozen=True)
class Event(Message):
    """Device → hub: one step of a deployment or another notable change."""

    TYPE: ClassVar[str] = "event"
    device_id: str
    event_id: str
    kind: str
    deployment_id: str | None = None
    detail: str = ""
    data: dict[str, Any] = field(default_factory=dict)
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class DeployCommand(Message):
    """Hub → device: install the bundle whose chunks are published on ``chunk_topic``.

    ``manifest`` is the signed manifest envelope and ``keyring`` the root-signed keyring; the
    agent verifies both before downloading a byte.
    """

    TYPE: ClassVar[str] = "cmd.deploy"
    command_id: str
    deployment_id: str
    bundle_id: str
    manifest: dict[str, Any]
    keyring: dict[str, Any]
    total_size: int
    chunk_size: int
    chunk_count: int
    chunk_topic: str
    rollback_order: dict[str, Any] | None = None
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class RollbackCommand(Message):
    """Hub → device: go back to an earlier version, authorised by a signed rollback order."""

    TYPE: ClassVar[str] = "cmd.rollback"
    command_id: str
    deployment_id: str
    order: dict[str, Any]
    keyring: dict[str, Any]
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class TrainCommand(Message):
    """Hub → device: join a federated training run as a Flower client.

    ``order`` is the signed training order (:mod:`shared.fl.order`) and ``keyring`` the
    root-signed keyring that delegates to its signer; the device acts only on the order's
    signed fields (R4) and refuses a command without one. ``run_id``, ``superlink`` and
    ``model_name`` repeat them for logs and must agree with the order.
    """

    TYPE: ClassVar[str] = "cmd.train"
    command_id: str
    run_id: str
    superlink: str
    model_name: str
    config: dict[str, Any] = field(default_factory=dict)
    order: dict[str, Any] | None = None
    keyring: dict[str, Any] | None = None
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class PingCommand(Message):
    """Hub → device: ask for a fresh hello/status (e.g. after a hub restart)."""

    TYPE: ClassVar[str] = "cmd.ping"
    command_id: str
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class ChunkRequest(Message):
    """Device → hub: resend exactly these chunks of a bundle (``full`` asks for a full bundle
    instead of a delta)."""

    TYPE: ClassVar[str] = "chunk.request"
    device_id: str
    bundle_id: str
    indices: list[int]
    full: bool = False
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class KeyringAnnouncement(Message):
    """Hub → every device, retained: the current root-signed keyring (rotation reaches idle
    devices without waiting for a deployment)."""

    TYPE: ClassVar[str] = "trust.keyring"
    keyring: dict[str, Any]
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


@_register
@dataclass(frozen=True)
class FreshnessAnnouncement(Message):
    """Hub → every device, retained, re-signed every few hours: the signed freshness
    document (:mod:`shared.freshness`) with the keyring that verifies it."""

    TYPE: ClassVar[str] = "trust.freshness"
    freshness: dict[str, Any]
    keyring: dict[str, Any]
    ts: float = field(default_factory=now)
    extra: dict[str, Any] = field(default_factory=dict)


def encode_message(message: Message) -> bytes:
    return message.encode()


def decode_message(
    payload: bytes | bytearray | memoryview,
    *,
    expected: tuple[type[M], ...] | None = None,
    max_bytes: int = MAX_MESSAGE_BYTES,
) -> Message:
    """Decode untrusted bytes into a typed message.

    Raises ``MessageTooLargeError``, ``MalformedMessageError`` or ``UnsupportedVersionError``.
    ``expected`` restricts which types are acceptable on this topic.
    """
    data = parse_json_object(payload, max_bytes=max_bytes)
    version = data.get("v")
    if not isinstance(version, str):
        raise MalformedMessageError("missing or non-string schema version 'v'")
    major_str, _, minor_str = version.partition(".")
    if not (major_str.isdigit() and minor_str.isdigit()):
        raise MalformedMessageError(f"schema version {version!r} is not MAJOR.MINOR")
    if int(major_str) != SUPPORTED_MAJOR:
        raise UnsupportedVersionError(
            f"schema version {version} not supported (this side speaks {SUPPORTED_MAJOR}.x)"
        )
    type_name = data.get("type")
    if not isinstance(type_name, str) or type_name not in _REGISTRY:
        raise MalformedMessageError(f"unknown message type {type_name!r}")
    cls = _REGISTRY[type_name]
    if expected is not None and not issubclass(cls, expected):
        names = ", ".join(e.TYPE for e in expected)
        raise MalformedMessageError(
            f"message type {type_name!r} not accepted here (expected {names})"
        )
    try:
        return from_plain(cls, data, type_name)  # type: ignore[no-any-return]
    except TypeError as exc:  # e.g. a field name colliding with a keyword
        raise MalformedMessageError(f"{type_name}: {exc}") from exc
