"""Admitting received messages into the ingest's queue (paho's network thread), all the
messages of one socket read at a time.

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

__all__ = ["Admitted", "Received", "admit", "admit_all"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Admitted:
    """What happened to a message: ``outcome`` (``None``: an empty retained clear or a
    redelivered telemetry), whether its acknowledgement now waits for the commit (``held``),
    and the message if it entered the queue."""

    outcome: Admission | Rejected | None
    held: bool = False
    message: Inbound | None = None


@dataclass(frozen=True)
class Received:
    """One message as it came off the wire, and its held broker acknowledgement (if any)."""

    topic: str
    payload: bytes
    hold: Callable[[], None] | None = None


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
    """Classify ``payload`` received on ``topic`` and offer it to ``state.queue`` (see
    :func:`admit_all`)."""
    return admit_all(state, scheme, [Received(topic, payload, hold)], now=now, batch_max=batch_max)[
        0
    ]


def admit_all(
    state: IngestState,
    scheme: TopicScheme,
    received: list[Received],
    *,
    now: float,
    batch_max: int,
) -> list[Admitted]:
    """Classify every message of ``received`` (in order) and offer it to ``state.queue``;
    wakes the writer when the queue stops being empty or holds a full batch. Takes the
    lock twice for the whole list: to spend the telemetry tokens before paying for the
    decoding (a flood costs a topic split per message), then to queue what was decoded."""
    parsed = [_device_topic(scheme, r.topic) for r in received]
    with state.lock:
        over_rate = [_over_telemetry_rate(state, p, now) for p in parsed]
    results = [
        None
        if over
        else classify(
            scheme, r.topic, r.payload, received_at=now, max_bytes=MAX_MESSAGE_BYTES, parsed=p
        )
        for r, p, over in zip(received, parsed, over_rate, strict=True)
    ]
    with state.lock:
        was_empty = not len(state.queue)
        admitted = [
            Admitted(Admission.RATE_LIMITED) if over else _queue(state, result, r.hold, now)
            for r, result, over in zip(received, results, over_rate, strict=True)
        ]
        queued = len(state.queue)
        if queued and (was_empty or queued >= batch_max):
            state.lock.notify_all()
    return admitted


def _queue(
    state: IngestState,
    result: Inbound | Rejected | None,
    hold: Callable[[], None] | None,
    now: float,
) -> Admitted:
    """Count and queue one classified message (caller holds the lock)."""
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
    if not len(state.queue):
        state.queued_since = time.monotonic()
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
    return Admitted(admission, held, result if admitted else None)


def _device_topic(scheme: TopicScheme, topic: str) -> DeviceTopic | None:
    try:
        return scheme.parse_device_topic(topic)
    except MalformedMessageError:
        return None  # classify rejects it with the reason


def _over_telemetry_rate(state: IngestState, parsed: DeviceTopic | None, now: float) -> bool:
    """Spend the sender's telemetry token before paying for the decode (``True``: over its
    rate, counted as received and dropped; the caller holds the lock)."""
    if parsed is None or INGEST_CHANNELS.get(parsed.channel) is not Telemetry:
        return False
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
