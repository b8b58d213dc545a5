"""How refused anonymous calls reach the audit log without growing it without bound (pure).

Every mutating call of an API token is audited row by row: its holder is known and answers
for it. A call without a valid token (wrong or missing token, a scanner, a flood) is worth
knowing about too, but one row each would let anyone on the network grow the table at
hundreds of rows a second. So anonymous refusals are tallied per window: the first refusal
of a kind (method, route, status) in a window writes a row, later ones only count and the
row's count is brought up to date at most once per ``update_every_s``; more than
``max_kinds`` kinds in one window fold into one ``*`` kind per method and status. So one
window writes at most ``max_kinds`` rows plus one per method and status the hub answers
with, whatever the traffic.

:class:`AnonymousAuditTally` decides; the middleware in :mod:`cloud_hub.api.auth` writes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AnonymousAuditTally", "AuditInsert", "AuditUpdate", "RefusalKind"]

OTHER_ROUTES = "*"


@dataclass(frozen=True)
class RefusalKind:
    """What is tallied together: the method, the route (its template) and the status."""

    method: str
    resource: str
    status: int


@dataclass(frozen=True)
class AuditInsert:
    """Write a new row for ``kind`` (count 1, window start ``window_start``)."""

    kind: RefusalKind
    window_start: float


@dataclass(frozen=True)
class AuditUpdate:
    """Set the count of the row written for ``kind`` in the window to ``count``."""

    kind: RefusalKind
    window_start: float
    count: int


@dataclass
class _Tally:
    count: int = 1
    written: int = 1
    written_at: float = 0.0


@dataclass
class AnonymousAuditTally:
    """Tallies of one window (see the module docstring). Not thread-safe: the middleware
    calls it from the event loop only."""

    window_s: float = 60.0
    max_kinds: int = 32
    update_every_s: float = 1.0
    _window_start: float | None = None
    _tallies: dict[RefusalKind, _Tally] = field(default_factory=dict)

    def refused(self, kind: RefusalKind, *, now: float) -> AuditInsert | AuditUpdate | None:
        """Count one anonymous refusal; what to write now, if anything."""
        if self._window_start is None or now - self._window_start >= self.window_s:
            self._window_start = now
            self._tallies = {}
        if kind not in self._tallies and len(self._tallies) >= self.max_kinds:
            kind = RefusalKind(kind.method, OTHER_ROUTES, kind.status)
        tally = self._tallies.get(kind)
        if tally is None:
            self._tallies[kind] = _Tally(written_at=now)
            return AuditInsert(kind, self._window_start)
        tally.count += 1
        if now - tally.written_at < self.update_every_s:
            return None
        tally.written, tally.written_at = tally.count, now
        return AuditUpdate(kind, self._window_start, tally.count)

    def pending(self) -> list[AuditUpdate]:
        """Counts not written yet (at shutdown); marks them written."""
        if self._window_start is None:
            return []
        out = []
        for kind, tally in self._tallies.items():
            if tally.count != tally.written:
                tally.written = tally.count
                out.append(AuditUpdate(kind, self._window_start, tally.count))
        return out
