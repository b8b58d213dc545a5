"""Classifying one received MQTT message (pure): a typed message, or a reason to reject it."""

from __future__ import annotations

from dataclasses import dataclass

from shared.errors import (
    MalformedMessageError,
    MessageTooLargeError,
    ProtocolError,
    UnsupportedVersionError,
)
from shared.messages import DriftReport, Event, Hello, Message, Status, Telemetry, decode_message
from shared.topics import TopicScheme

__all__ = ["INGEST_CHANNELS", "Inbound", "Rejected", "classify"]

INGEST_CHANNELS: dict[str, type[Message]] = {
    "hello": Hello,
    "status": Status,
    "telemetry": Telemetry,
    "drift": DriftReport,
    "events": Event,
}


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
    scheme: TopicScheme, topic: str, payload: bytes, *, received_at: float, max_bytes: int
) -> Inbound | Rejected | None:
    """Decode ``payload`` received on ``topic``; ``None`` for an empty retained clear."""
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
    return Inbound(parsed.device_id, parsed.channel, message, received_at)
