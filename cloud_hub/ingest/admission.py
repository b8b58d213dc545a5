"""Admitting one received message into the ingest's queue (paho's network thread).

A telemetry flood is shed before decoding (the device's token is spent first), garbage is
counted and logged sparsely, redelivered telemetry is dropped, and a must-keep message's
acknowledgement is held until its batch commits (see :class:`.state.IngestState`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_hub.ingest.fairness import Admission
from cloud_hub.ingest.intake import INGEST_CHANNELS, Inbound, Rejected, classify
from cloud_hub.ingest.state import IngestState, worth_logging
from shared.errors import MalformedMessageError
from shared.messages import MAX_MESSAGE_BYTES, Telemetry
from shared.topics import DeviceTopic, TopicScheme

__all__ = ["Admitted", "admit"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """What happened to a message: ``outcome`` (``None``: an empty retained clear or a
    redelivered telemetry), whether its acknowledgement now waits for the commit (``held``),
    and the message if it entered the queue."""

    outcome: Admission | Rejected | None
    held: bool = False
    message: Inbound | None = None


def admit(
    state: IngestState,
    scheme: TopicScheme,
    topic: str,
    payload: bytes,
    *,
    now: float,
    hold: Callable[[], None] | None,
    batch_max: int,
) -> Admitted:
    """Classify ``payload`` received on ``topic`` and offer it to ``state.queue``; wakes the
    writer when the queue stops being empty or holds a full batch."""
    parsed = _device_topic(scheme, topic)
    if _over_telemetry_rate(state, parsed, now):
        return Admitted(Admission.RATE_LIMITED)
    result = classify(
        scheme, topic, payload, received_at=now, max_bytes=MAX_MESSAGE_BYTES, parsed=parsed
    )
    with state.lock:
        state.counts["received"] += 1
        if result is None:
            return Admitted(None)
        if isinstance(result, Rejected):
            _count_rejected(state, result)
            return Admitted(result)
        telemetry = isinstance(result.message, Telemetry)
        if telemetry and _redelivered(state, result):
            state.counts["duplicates"] += 1
            return Admitted(None)
        admission = state.queue.offer(
            result.device_id, result, droppable=telemetry, now=now, rate_checked=telemetry
        )
        admitted = admission in (Admission.ACCEPTED, Admission.EVICTED_OLDEST)
        if admitted:
            state.counts["accepted"] += 1
        if admission is not Admission.ACCEPTED:
            state.dropped[admission.value] += 1
        held = admission is Admission.ACCEPTED and not telemetry and hold is not None
        if held:
            assert hold is not None
            state.held_acks[id(result)] = hold
        queued = len(state.queue)
        if admitted and queued == 1:
            state.queued_since = time.monotonic()
        if admitted and (queued == 1 or queued >= batch_max):
            state.lock.notify_all()
        return Admitted(admission, held, result if admitted else None)


def _device_topic(scheme: TopicScheme, topic: str) -> DeviceTopic | None:
    try:
        return scheme.parse_device_topic(topic)
    except MalformedMessageError:
        return None  # classify rejects it with the reason


def _over_telemetry_rate(state: IngestState, parsed: DeviceTopic | None, now: float) -> bool:
    """Spend the sender's telemetry token before paying for the decode (``True``: over its
    rate, counted as received and dropped): a flood costs a topic split per message."""
    if parsed is None or INGEST_CHANNELS.get(parsed.channel) is not Telemetry:
        return False
    with state.lock:
        if state.queue.take_token(parsed.device_id, now):
            return False
        state.counts["received"] += 1
        state.dropped[Admission.RATE_LIMITED.value] += 1
        return True


def _redelivered(state: IngestState, inbound: Inbound) -> bool:
    msg = inbound.message
    assert isinstance(msg, Telemetry)
    return state.recent.seen_before(inbound.device_id, (msg.seq, msg.ts))


def _count_rejected(state: IngestState, rejected: Rejected) -> None:
    state.rejected[rejected.kind] += 1
    seen = state.rejected[rejected.kind]
    if worth_logging(seen):
        log.warning(
            "rejected %s message on %s (%d so far): %s",
            rejected.kind,
            rejected.topic,
            seen,
            rejected.reason,
        )
