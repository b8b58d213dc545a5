"""Classifying one received MQTT message (pure): a typed message, or a reason to reject it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from cloud_hub.registry.hello_identity import HUB_EVENT_PREFIX
from shared.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    UnsupportedVersionError,
)
from shared.messages import DriftReport, Event, Hello, Message, Status, Telemetry, decode_message
from shared.topics import DeviceTopic, TopicScheme
from shared.uplink import HubReader, channels_read_by

__all__ = ["INGEST_CHANNELS", "Inbound", "Rejected", "classify", "storage_problem"]

#: The uplink channels the ingest is the hub's one reader of (see :mod:`shared.uplink`).
INGEST_CHANNELS: Mapping[str, type[Message]] = channels_read_by(HubReader.INGEST)


@dataclass(frozen=True)
class Inbound:
    """A decoded device message and when the hub received it."""

    device_id: str
    channel: str
    message: Message
    received_at: float


@dataclass(frozen=True)
class Rejected:
    """A message refused, with a short ``kind`` (for counters) and a readable ``reason``."""

    topic: str
    kind: str
    reason: str
    device_id: str | None = None


def classify(
    scheme: TopicScheme,
    topic: str,
    payload: bytes,
    *,
    received_at: float,
    max_bytes: int,
    parsed: DeviceTopic | None = None,
) -> Inbound | Rejected | None:
    """Decode ``payload`` received on ``topic``; ``None`` for an empty retained clear.
    ``parsed``: ``topic`` already split by ``scheme`` (the caller needed its device)."""
    if parsed is None:
        try:
            parsed = scheme.parse_device_topic(topic)
        except MalformedMessageError as exc:
            return Rejected(topic, "bad_topic", str(exc))
    expected = INGEST_CHANNELS.get(parsed.channel)
    if expected is None:
        return Rejected(topic, "bad_topic", f"channel {parsed.channel!r} is not ingested")
    if not payload:
        return None  # clearing a retained status
    try:
        message = decode_message(payload, expected=(expected,), max_bytes=max_bytes)
    except UnsupportedVersionError as exc:
        return Rejected(topic, "unsupported_version", str(exc), parsed.device_id)
    except MessageTooLargeError as exc:
        return Rejected(topic, "too_large", str(exc), parsed.device_id)
    except ProtocolError as exc:
        return Rejected(topic, "malformed", str(exc), parsed.device_id)
    claimed = getattr(message, "device_id", None)
    if claimed != parsed.device_id:  # a device may only speak for itself
        return Rejected(
            topic,
            "device_mismatch",
            f"payload device_id {claimed!r} differs from topic device {parsed.device_id!r}",
            parsed.device_id,
        )
    if isinstance(message, Event) and message.event_id.startswith(HUB_EVENT_PREFIX):
        # R6: the hub's own flags about a device use these ids; a device may not pre-empt them
        return Rejected(
            topic,
            "reserved_id",
            f"event id {message.event_id[:40]!r} is in the hub's namespace {HUB_EVENT_PREFIX!r}",
            parsed.device_id,
        )
    problem = storage_problem(message)
    if problem is not None:
        return Rejected(topic, "out_of_range", problem, parsed.device_id)
    return Inbound(parsed.device_id, parsed.channel, message, received_at)


_MAX_INT32 = 2**31 - 1
_MAX_INT64 = 2**63 - 1


def _text_problem(name: str, value: object, limit: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        return f"{name} must be a string"
    if len(value) > limit:
        return f"{name} longer than {limit} characters"
    if "\x00" in value:
        return f"{name} contains a NUL character"
    return None


def storage_problem(message: Message) -> str | None:
    """Why ``message`` cannot be stored as is (field lengths, integer ranges, NUL bytes), or
    ``None``. Checked before queueing so one bad message never poisons a batch write."""
    texts: list[tuple[str, object, int]] = []
    ints: list[tuple[str, object, int]] = []
    installed = getattr(message, "installed", None)
    if installed is not None:
        texts += [
            ("installed.model_name", installed.model_name, 128),
            ("installed.bundle_id", installed.bundle_id, 128),
        ]
        ints.append(("installed.version", installed.version, _MAX_INT32))
    if isinstance(message, Hello):
        texts += [
            ("device_class", message.device_class, 128),
            ("agent_version", message.agent_version, 64),
        ]
        texts += [(f"label {k!r}", k, 128) for k in message.labels]
        texts += [(f"label {k!r} value", v, 256) for k, v in message.labels.items()]
        texts += [("runtime name", r, 64) for r in message.runtimes]
        ints += [
            ("free_disk_bytes", message.free_disk_bytes, _MAX_INT64),
            ("free_mem_bytes", message.free_mem_bytes, _MAX_INT64),
        ]
        if len(message.labels) > 64 or len(message.runtimes) > 64:
            return "more than 64 labels or runtimes"
    elif isinstance(message, Status):
        texts += [
            ("ota_state", message.ota_state, 32),
            ("deployment_id", message.deployment_id, 128),
            ("runtime", message.runtime, 64),
            ("provider", message.provider, 128),
        ]
    elif isinstance(message, Event):
        texts += [
            ("event_id", message.event_id, 128),
            ("kind", message.kind, 64),
            ("deployment_id", message.deployment_id, 128),
            ("detail", message.detail, 4000),
        ]
    elif isinstance(message, DriftReport):
        texts += [("report_id", message.report_id, 128), ("model_name", message.model_name, 128)]
        ints += [
            ("model_version", message.model_version, _MAX_INT32),
            ("window_size", message.window_size, _MAX_INT64),
        ]
        if len(message.features) > 4096:
            return "more than 4096 drift features"
    elif isinstance(message, Telemetry):
        ints.append(("model_version", message.model_version, _MAX_INT32))
    for name, value, limit in texts:
        problem = _text_problem(name, value, limit)
        if problem:
            return problem
    for name, value, limit in ints:
        if value is not None and not (isinstance(value, int) and -limit - 1 <= value <= limit):
            return f"{name} out of range"
    return None
