"""A rollout's history: every move of its state machine, who made it and why.

The rollout store (:func:`cloud_hub.rollout._store.write_phase`) adds one entry per move to
the hub's audit log (action ``rollout-move``, resource ``/rollouts/{id}``), beside the API's
own entries for the requests; this module names that record and reads it back. An operator
sees the whole story — the abort reason typed in the dashboard, the failed gate's numbers,
the devices a rollback could not bring back — where the rollout itself keeps only its
latest reason.
"""

from __future__ import annotations

from dataclasses import dataclass

from cloud_hub.registry import Session, admin

__all__ = [
    "ENGINE_ACTOR",
    "HISTORY_ACTION",
    "HistoryEntry",
    "history_resource",
    "record_move",
    "rollout_history",
]

ENGINE_ACTOR = "rollout-engine"  # who moved a rollout on its own (gates, rollbacks)
HISTORY_ACTION = "rollout-move"


def history_resource(rollout_id: str) -> str:
    return f"/rollouts/{rollout_id}"


@dataclass(frozen=True)
class HistoryEntry:
    """One move of a rollout: when, who, from which position to which, and the reason it
    carried then (an operator's typed reason, a failed gate's numbers, the devices a
    rollback could not bring back)."""

    ts: float
    by: str
    from_phase: str
    to_phase: str
    reason: str

    def detail(self) -> dict[str, str]:
        return {"from": self.from_phase, "to": self.to_phase, "reason": self.reason}


def record_move(s: Session, rollout_id: str, entry: HistoryEntry) -> None:
    """Add one move to the rollout's history (an audit entry; ``by`` empty: the engine)."""
    admin.record_audit(
        s,
        actor=entry.by or ENGINE_ACTOR,
        role="",
        action=HISTORY_ACTION,
        resource=history_resource(rollout_id),
        status=200,
        detail=entry.detail(),
        now=entry.ts,
    )


def rollout_history(s: Session, rollout_id: str, *, limit: int = 200) -> list[HistoryEntry]:
    """The rollout's moves, oldest first (the newest ``limit``)."""
    page = admin.list_audit(
        s, resource=history_resource(rollout_id), action=HISTORY_ACTION, limit=limit
    )
    return [
        HistoryEntry(
            e.ts,
            e.actor,
            str(e.detail.get("from", "")),
            str(e.detail.get("to", "")),
            str(e.detail.get("reason", "")),
        )
        for e in reversed(page.items)
    ]
