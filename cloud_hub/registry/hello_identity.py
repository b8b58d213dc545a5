"""Who a device is, against what its hello claims (pure; R6).

A device's class and labels decide which rollouts, canaries and training cohorts it joins,
so the device cannot be the one to set them. Enrollment is authoritative: the class comes
from the enrollment token and the labels from the token and the enrollment request. A
hello changes neither. The only exception is a device the hub has no class for yet (never
enrolled, e.g. a development broker without mTLS): its first hello sets class and labels,
and from then on they are fixed the same way.

A hello that claims something else is not an error to drop the connection over (its
telemetry and install state are still the device's own to report), but it is worth an
operator's attention: it becomes a hub-written device event, ``identity_mismatch``,
recorded once per distinct claim. Hub-written event ids start with :data:`HUB_EVENT_PREFIX`,
which devices may not use (the ingest refuses such events), so a device cannot pre-empt
the flag by sending an event with the same id first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field

from shared.canonical import canonical_bytes
from shared.messages import Event, Hello

__all__ = [
    "HUB_EVENT_PREFIX",
    "IDENTITY_MISMATCH",
    "AcceptedIdentity",
    "StoredIdentity",
    "accept_hello_identity",
]

HUB_EVENT_PREFIX = "hub:"
IDENTITY_MISMATCH = "identity_mismatch"


@dataclass(frozen=True)
class StoredIdentity:
    """What the registry holds for a device before the hello (``None``: not known yet)."""

    device_class: str | None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class AcceptedIdentity:
    """What to store after the hello, the labels it newly sets, and the flag to raise."""

    device_class: str
    labels: dict[str, str]
    new_labels: dict[str, str]
    mismatch: Event | None = None


def accept_hello_identity(stored: StoredIdentity, hello: Hello, *, now: float) -> AcceptedIdentity:
    """Apply the rule of the module docstring to one hello received at ``now`` (the hub's
    clock: the event is stamped with when the hub saw the claim, not when the device says)."""
    if stored.device_class is None:  # first contact of a device never enrolled
        labels = {**stored.labels, **hello.labels}
        return AcceptedIdentity(hello.device_class, labels, dict(hello.labels))
    kept = dict(stored.labels)
    claimed = {k: v for k, v in hello.labels.items() if kept.get(k) != v}
    if hello.device_class == stored.device_class and not claimed:
        return AcceptedIdentity(stored.device_class, kept, {})
    return AcceptedIdentity(
        stored.device_class, kept, {}, _mismatch_event(stored, hello, claimed, now)
    )


def _mismatch_event(
    stored: StoredIdentity, hello: Hello, claimed: Mapping[str, str], now: float
) -> Event:
    assert stored.device_class is not None
    claim = {
        "device_class": hello.device_class,
        "labels": dict(claimed),
        "enrolled_class": stored.device_class,
    }
    digest = hashlib.sha256(canonical_bytes([hello.device_id, claim])).hexdigest()[:32]
    parts = []
    if hello.device_class != stored.device_class:
        parts.append(f"class {hello.device_class!r} (enrolled as {stored.device_class!r})")
    if claimed:
        kept = {k: stored.labels.get(k) for k in claimed}
        parts.append(f"labels {dict(claimed)} (enrolled: {kept})")
    return Event(
        device_id=hello.device_id,
        event_id=f"{HUB_EVENT_PREFIX}identity:{digest}",
        kind=IDENTITY_MISMATCH,
        detail=f"hello claims {' and '.join(parts)}; ignored: enrollment is authoritative"[:4000],
        data={
            "source": "hub",
            "claimed_class": hello.device_class,
            "enrolled_class": stored.device_class,
            "claimed_labels": dict(claimed),
            "enrolled_labels": {k: stored.labels.get(k) for k in claimed},
        },
        ts=now,
    )
