"""Keyring updates and freshness on the device (R10).

The hub publishes, retained, the root-signed keyring (``trust/keyring``) and a short-lived
signed freshness document (``trust/freshness``, see :mod:`shared.freshness`).
:class:`TrustUpdates` verifies both as they arrive and keeps what it accepted in the
:class:`~edge_agent.ota.trusted.TrustedStore`:

- a newer keyring is applied at once (the floor rises: offers carrying an older keyring,
  e.g. one that still trusts a revoked key, are refused from then on), without waiting for
  a deployment; an older, expired or forged one is refused and reported;
- a freshness document must verify against the keyring it comes with and be newer than the
  last one accepted.

:func:`assess_freshness` (pure) then judges, from the last accepted document and the clock,
whether the device is ``fresh``, ``stale`` (no valid document: the broker may be withholding
updates) or ``behind`` (the document names a release for this class newer than what the
device runs: offers are being withheld — a freeze). Each change of verdict is reported as an
event and the current one rides in the status (``extra["trust"]``).
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from edge_agent.ota.events import describe
from edge_agent.ota.trusted import TrustedStore
from shared.errors import BundleError, ProtocolError
from shared.freshness import FreshnessDocument, parse_freshness, verify_freshness
from shared.messages import (
    MAX_MESSAGE_BYTES,
    Event,
    EventKind,
    FreshnessAnnouncement,
    InstalledModel,
    KeyringAnnouncement,
    Message,
    decode_message,
    new_id,
)
from shared.signing import Keyring, TrustRoot, verify_keyring

__all__ = [
    "FreshnessPolicy",
    "FreshnessState",
    "FreshnessVerdict",
    "TrustUpdates",
    "assess_freshness",
]

log = logging.getLogger(__name__)
UTC = timezone.utc


class FreshnessState(str, enum.Enum):
    UNKNOWN = "unknown"  # just started, no document yet (within the grace period)
    FRESH = "fresh"
    STALE = "stale"
    BEHIND = "behind"


_EVENT_OF = {
    FreshnessState.FRESH: EventKind.FRESHNESS_OK,
    FreshnessState.STALE: EventKind.FRESHNESS_STALE,
    FreshnessState.BEHIND: EventKind.FRESHNESS_BEHIND,
}


@dataclass(frozen=True)
class FreshnessVerdict:
    state: FreshnessState
    detail: str = ""


@dataclass(frozen=True, kw_only=True)
class FreshnessPolicy:
    # without any valid document this long after start, the device reports stale
    missing_grace_s: float = 900.0
    check_interval_s: float = 5.0
    max_message_bytes: int = MAX_MESSAGE_BYTES
    # refusals reported as events: the same one once per window, at most this many per window
    # (a broker replaying garbage must not flood the outbox and push out other reports)
    refusal_window_s: float = 300.0
    max_refusal_events: int = 20


def assess_freshness(
    doc: FreshnessDocument | None,
    *,
    now: datetime,
    device_class: str,
    installed: InstalledModel | None,
    waiting_since: datetime,
    missing_grace: timedelta,
) -> FreshnessVerdict:
    """Fresh, stale or behind (R10), from the last accepted document and the clock."""
    if doc is None:
        if now - waiting_since < missing_grace:
            return FreshnessVerdict(FreshnessState.UNKNOWN, "no freshness document yet")
        return FreshnessVerdict(
            FreshnessState.STALE,
            f"no valid freshness document since {waiting_since:%Y-%m-%dT%H:%M:%SZ}: "
            "the broker may be withholding updates",
        )
    if doc.expires_at <= now:
        return FreshnessVerdict(
            FreshnessState.STALE,
            f"freshness document v{doc.version} expired at {doc.expires} and none newer "
            "arrived: the broker may be withholding updates",
        )
    released = doc.released.get(device_class)
    if released is not None:
        have = installed.version if installed and installed.model_name == released.model_name else 0
        if have < released.version:
            running = f"v{installed.version} of {installed.model_name!r}" if installed else "none"
            return FreshnessVerdict(
                FreshnessState.BEHIND,
                f"the hub released {released.model_name!r} v{released.version} "
                f"({released.bundle_id[:12]}) to class {device_class!r}; this device runs "
                f"{running}: offers are being withheld",
            )
    return FreshnessVerdict(FreshnessState.FRESH)


class TrustUpdates:
    """Handles the two trust topics and reports the freshness verdict (agent worker thread)."""

    def __init__(
        self,
        *,
        device_id: str,
        device_class: str,
        trust: TrustRoot,
        store: TrustedStore,
        installed: Callable[[], InstalledModel | None],
        emit: Callable[[Message], None],
        policy: FreshnessPolicy | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.device_class = device_class
        self.trust = trust
        self.store = store
        self.policy = policy or FreshnessPolicy()
        self._installed = installed
        self._emit = emit
        self._clock = clock
        self._started = self._now()
        self._doc = self._stored_document()
        self.verdict = FreshnessVerdict(FreshnessState.UNKNOWN)
        self._reported = FreshnessState.UNKNOWN
        self._refusals: dict[str, float] = {}  # detail -> when reported, this window
        self._refusal_window = 0.0
        if store.lost:
            self._event(
                EventKind.TRUST_STATE_LOST,
                f"trusted state unreadable; keyring floor fell back to {store.keyring_floor}",
            )

    # -- inbound -----------------------------------------------------------------------------
    def handle_keyring(self, payload: bytes) -> None:
        """A keyring announcement (untrusted: the broker may replay or forge it)."""
        try:
            msg = decode_message(
                payload, expected=(KeyringAnnouncement,), max_bytes=self.policy.max_message_bytes
            )
            assert isinstance(msg, KeyringAnnouncement)
            self._apply_keyring(msg.keyring)
        except (ProtocolError, BundleError) as exc:
            self._refused("keyring", exc)

    def handle_freshness(self, payload: bytes) -> None:
        """A freshness announcement: its keyring first (applied if newer), then the document."""
        try:
            msg = decode_message(
                payload, expected=(FreshnessAnnouncement,), max_bytes=self.policy.max_message_bytes
            )
            assert isinstance(msg, FreshnessAnnouncement)
            keyring = self._apply_keyring(msg.keyring)
            doc = verify_freshness(
                msg.freshness,
                keyring,
                now=self._now(),
                min_version=self.store.record.freshness_version,
            )
        except (ProtocolError, BundleError) as exc:
            self._refused("freshness document", exc)
            return
        if doc.version > self.store.record.freshness_version or self._doc is None:
            self.store.accept_freshness(doc.version, msg.freshness)
            log.info("freshness document v%d accepted (expires %s)", doc.version, doc.expires)
        self._doc = doc
        for event in self.check():
            self._emit(event)

    def _apply_keyring(self, envelope: Any) -> Keyring:
        # R10: never below the floor kept in the trusted record (not in ota_state.json)
        keyring = verify_keyring(
            envelope, self.trust, now=self._now(), min_version=self.store.keyring_floor
        )
        if self.store.accept_keyring(keyring, envelope):
            log.info(
                "keyring v%d applied (%d key(s) revoked)", keyring.version, len(keyring.revoked)
            )
            self._event(
                EventKind.KEYRING_APPLIED,
                f"keyring v{keyring.version} applied",
                {"keyring_version": keyring.version, "revoked": len(keyring.revoked)},
            )
        return keyring

    def _refused(self, what: str, exc: Exception) -> None:
        detail = f"{what} refused: {describe(exc)}"
        now = self._clock()
        if now - self._refusal_window >= self.policy.refusal_window_s:
            self._refusal_window, self._refusals = now, {}
        if detail in self._refusals or len(self._refusals) >= self.policy.max_refusal_events:
            log.debug("%s (already reported)", detail)
            return
        self._refusals[detail] = now
        log.warning("%s", detail)
        self._event(EventKind.TRUST_REJECTED, detail, {"what": what, "error": type(exc).__name__})

    # -- verdict -----------------------------------------------------------------------------
    def check(self) -> list[Message]:
        """Re-assess; the event reporting a change of verdict, if any (a reporter for
        ``EdgeAgent.add_reporter``)."""
        self.verdict = assess_freshness(
            self._doc,
            now=self._now(),
            device_class=self.device_class,
            installed=self._installed(),
            waiting_since=self._started,
            missing_grace=timedelta(seconds=self.policy.missing_grace_s),
        )
        state, before = self.verdict.state, self._reported
        if state == before or state == FreshnessState.UNKNOWN:
            return []
        self._reported = state
        if state == FreshnessState.FRESH and before == FreshnessState.UNKNOWN:
            return []  # "fresh" is news only after a problem
        level = logging.INFO if state == FreshnessState.FRESH else logging.WARNING
        log.log(level, "freshness: %s %s", state.value, self.verdict.detail)
        return [self._make_event(_EVENT_OF[state], self.verdict.detail, self._summary())]

    def status_fields(self) -> Mapping[str, Any]:
        """``Status.extra["trust"]``: the verdict, the keyring version, the document's expiry."""
        return {"extra": {"trust": self._summary()}}

    def _summary(self) -> dict[str, Any]:
        return {
            "freshness": self.verdict.state.value,
            "detail": self.verdict.detail,
            "keyring_version": self.store.keyring_floor,
            "freshness_version": self._doc.version if self._doc else None,
            "freshness_expires": self._doc.expires if self._doc else None,
        }

    # -- helpers -----------------------------------------------------------------------------
    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), tz=UTC)

    def _stored_document(self) -> FreshnessDocument | None:
        envelope = self.store.record.freshness
        if envelope is None:
            return None
        try:
            return parse_freshness(envelope)
        except BundleError as exc:
            log.error("stored freshness document unreadable: %s", exc)
            return None

    def _make_event(self, kind: str, detail: str, data: dict[str, Any] | None = None) -> Event:
        return Event(
            device_id=self.device_id, event_id=new_id(), kind=kind, detail=detail, data=data or {}
        )

    def _event(self, kind: str, detail: str, data: dict[str, Any] | None = None) -> None:
        self._emit(self._make_event(kind, detail, data))
