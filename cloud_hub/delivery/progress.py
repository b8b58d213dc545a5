"""Pure bookkeeping of a deployment: device states from device events, repair planning and
rate limiting. No sockets, no threads, no clock reads (times are parameters)."""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from shared.install_phase import TERMINAL_INSTALL_PHASES
from shared.messages import Event, EventKind

__all__ = [
    "TERMINAL_STATES",
    "DeliveryState",
    "DeploymentResult",
    "DeviceProgress",
    "TokenBucket",
    "advance",
    "plan_repair",
]


class DeliveryState(str, enum.Enum):
    """What the hub knows about one device in one deployment."""

    PENDING = "pending"  # command sent, nothing heard yet
    DOWNLOADING = "downloading"
    DOWNLOADED = "downloaded"
    VERIFIED = "verified"
    INSTALLED = "installed"
    HEALTHY = "healthy"
    ROLLING_BACK = "rolling_back"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    FAILED = "failed"
    REJECTED = "rejected"


#: The device's terminal install phases, and an offer it refused before downloading.
TERMINAL_STATES = frozenset(
    {DeliveryState(p.value) for p in TERMINAL_INSTALL_PHASES} | {DeliveryState.REJECTED}
)

_EVENT_STATE: Mapping[str, DeliveryState] = {
    EventKind.DOWNLOAD_STARTED: DeliveryState.DOWNLOADING,
    EventKind.DOWNLOAD_COMPLETE: DeliveryState.DOWNLOADED,
    EventKind.VERIFIED: DeliveryState.VERIFIED,
    EventKind.INSTALLED: DeliveryState.INSTALLED,
    EventKind.HEALTH_OK: DeliveryState.HEALTHY,
    EventKind.HEALTH_FAILED: DeliveryState.ROLLING_BACK,
    EventKind.COMMITTED: DeliveryState.COMMITTED,
    EventKind.ROLLED_BACK: DeliveryState.ROLLED_BACK,
    EventKind.FAILED: DeliveryState.FAILED,
    EventKind.VERIFY_FAILED: DeliveryState.FAILED,
    EventKind.REJECTED: DeliveryState.REJECTED,
}


@dataclass(frozen=True)
class DeviceProgress:
    """One device's progress; ``first_seen``/``downloaded_at``/``finished`` are hub clock
    times (seconds, when the hub read the report); ``downloaded_ts`` is the device's own
    time (its clock, Unix seconds) at which its download was complete."""

    device_id: str
    state: DeliveryState = DeliveryState.PENDING
    detail: str = ""
    first_seen: float | None = None
    downloaded_at: float | None = None
    downloaded_ts: float | None = None
    finished: float | None = None
    event_ids: frozenset[str] = field(default_factory=frozenset)
    history: tuple[str, ...] = ()  # event kinds in arrival order (duplicates removed)

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    @property
    def started(self) -> bool:
        """The device answered the command (so it is subscribed to the chunk topic)."""
        return self.first_seen is not None


def advance(progress: DeviceProgress, event: Event, at: float) -> DeviceProgress:
    """Apply one device event. Duplicates (same ``event_id``) and anything after a terminal
    state change nothing; unknown kinds only mark the device as seen."""
    if event.event_id in progress.event_ids or progress.terminal:
        return progress
    new_state = _EVENT_STATE.get(event.kind)
    changed = replace(
        progress,
        event_ids=progress.event_ids | {event.event_id},
        history=(*progress.history, event.kind),
        first_seen=progress.first_seen if progress.first_seen is not None else at,
    )
    if new_state is None:
        return changed
    return replace(
        changed,
        state=new_state,
        detail=event.detail or changed.detail,
        downloaded_at=(
            at
            if new_state is DeliveryState.DOWNLOADED and changed.downloaded_at is None
            else changed.downloaded_at
        ),
        downloaded_ts=(
            event.ts
            if new_state is DeliveryState.DOWNLOADED and changed.downloaded_ts is None
            else changed.downloaded_ts
        ),
        finished=at if new_state in TERMINAL_STATES else None,
    )


@dataclass(frozen=True)
class DeploymentResult:
    """A snapshot of a deployment."""

    deployment_id: str
    bundle_id: str
    devices: Mapping[str, DeviceProgress]
    started_at: float
    chunks_published: int = 0
    repairs_sent: int = 0

    def in_state(self, *states: DeliveryState) -> list[str]:
        return sorted(d for d, p in self.devices.items() if p.state in states)

    @property
    def committed(self) -> list[str]:
        return self.in_state(DeliveryState.COMMITTED)

    @property
    def unfinished(self) -> list[str]:
        return sorted(d for d, p in self.devices.items() if not p.terminal)

    @property
    def done(self) -> bool:
        return not self.unfinished

    @property
    def all_committed(self) -> bool:
        return len(self.committed) == len(self.devices)

    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for p in self.devices.values():
            counts[p.state.value] = counts.get(p.state.value, 0) + 1
        return dict(sorted(counts.items()))


def plan_repair(
    requested: Iterable[int], *, chunk_count: int, pending: frozenset[int], max_indices: int
) -> list[int]:
    """Which of ``requested`` to resend: valid, not already queued, unique, at most
    ``max_indices`` (the device asks again for the rest)."""
    out: list[int] = []
    seen: set[int] = set()
    for i in requested:
        if 0 <= i < chunk_count and i not in pending and i not in seen:
            seen.add(i)
            out.append(i)
            if len(out) >= max_indices:
                break
    return sorted(out)


@dataclass
class TokenBucket:
    """Bytes-per-second limiter: ``delay(n, now)`` says how long to wait before sending n bytes."""

    rate: float
    burst: float
    tokens: float = 0.0
    last: float | None = None

    def delay(self, n: int, now: float) -> float:
        if self.last is None:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate
