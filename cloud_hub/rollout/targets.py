"""Per-device rollout target states and how device reports resolve them (pure).

::

    pending ──(device online, stage reached)──► deploying ──(published)──► sent
    deploying/sent ──(committed or runs the bundle)──► succeeded
    deploying/sent/succeeded ──(health/verify failure, rejected, rolled back)──► failed
    failed ──(a later offer committed after all)──► succeeded
    pending ──(rollout stopped first)──► skipped
    deploying/sent/succeeded/failed ──(gate failed / operator rollback)──► rollback_pending
    rollback_pending ──(published)──► rollback_sent ──(back on the previous bundle)──► rolled_back
    rollback_pending ──(no previous bundle to go back to)──► stranded
    rollback_pending/sent ──(device refused or failed the order, no answer in time,
                             rollback aborted)──► rollback_failed ──(operator retries)──► rollback_pending

:data:`TARGET_TRANSITIONS` is this drawing as a table of :class:`TargetStep`; the engine writes
a target's state only through it (:func:`step_sources` are the states a bulk write may
change, :func:`next_target_state` checks one target).

The previous bundle is per device: what the device ran when the rollout first offered it the
new bundle (``from_bundle_id``/``from_version``/``from_sha256``, by whichever bundle — full or
delta — delivered it), else the rollout's ``previous_bundle_id``.

``deploying`` and ``rollback_pending`` are *intents*: written before the hub publishes, so a
hub killed between the write and the publish publishes again after a restart (a duplicate
command is harmless on the device: commands are idempotent by deployment id).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cloud_hub.errors import RolloutError
from shared.messages import EventKind
from shared.transitions import TransitionTable

__all__ = [
    "DEPLOYED_STATES",
    "FAILURE_EVENTS",
    "RELEASED_STATES",
    "ROLLBACK_FAILURE_EVENTS",
    "TARGET_TRANSITIONS",
    "UNRECOVERED_STATES",
    "InstallView",
    "InvalidTargetTransitionError",
    "TargetState",
    "TargetStep",
    "next_target_state",
    "resolve_install",
    "rolled_back",
    "step_sources",
    "step_target",
]


class TargetState(str, enum.Enum):
    PENDING = "pending"
    DEPLOYING = "deploying"
    SENT = "sent"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ROLLBACK_PENDING = "rollback_pending"
    ROLLBACK_SENT = "rollback_sent"
    ROLLED_BACK = "rolled_back"
    STRANDED = "stranded"
    ROLLBACK_FAILED = "rollback_failed"


class TargetStep(str, enum.Enum):
    OFFER = "offer"  # the intent to offer the bundle, written before publishing
    PUBLISHED = "published"
    CAME_BACK = "came_back"  # reconnected since the offer: offer again
    INSTALLED = "installed"
    INSTALL_FAILED = "install_failed"
    GAVE_UP = "gave_up"  # no outcome after the most offers allowed
    SKIP = "skip"  # the rollout stopped before this device's turn
    ORDER_ROLLBACK = "order_rollback"  # gate failed / operator rollback / operator retry
    ROLLBACK_RESENT = "rollback_resent"  # reconnected since the rollback order: send again
    ROLLBACK_PUBLISHED = "rollback_published"
    BACK = "back"  # on the previous bundle again
    STRANDED = "stranded"  # no previous bundle to go back to
    ROLLBACK_FAILED = "rollback_failed"  # refused, failed, no answer in time, or aborted


class InvalidTargetTransitionError(RolloutError):
    """A step the rollout-target table does not allow in the target's state."""


_S, _T = TargetState, TargetStep
#: The whole per-device lifecycle. Anything not listed here is refused.
TARGET_TRANSITIONS: TransitionTable[TargetState, TargetStep, TargetState] = TransitionTable(
    "a rollout target",
    {
        (_S.PENDING, _T.OFFER): _S.DEPLOYING,
        (_S.DEPLOYING, _T.OFFER): _S.DEPLOYING,  # an open intent, offered again
        (_S.DEPLOYING, _T.PUBLISHED): _S.SENT,
        (_S.SENT, _T.CAME_BACK): _S.DEPLOYING,
        **{(s, _T.INSTALLED): _S.SUCCEEDED for s in (_S.DEPLOYING, _S.SENT, _S.FAILED)},
        **{(s, _T.INSTALL_FAILED): _S.FAILED for s in (_S.DEPLOYING, _S.SENT, _S.SUCCEEDED)},
        (_S.PENDING, _T.GAVE_UP): _S.FAILED,
        (_S.DEPLOYING, _T.GAVE_UP): _S.FAILED,
        (_S.PENDING, _T.SKIP): _S.SKIPPED,
        **{
            (s, _T.ORDER_ROLLBACK): _S.ROLLBACK_PENDING
            for s in (
                _S.DEPLOYING,
                _S.SENT,
                _S.SUCCEEDED,
                _S.FAILED,
                _S.STRANDED,
                _S.ROLLBACK_FAILED,
            )
        },
        (_S.ROLLBACK_PENDING, _T.ROLLBACK_RESENT): _S.ROLLBACK_PENDING,
        (_S.ROLLBACK_SENT, _T.ROLLBACK_RESENT): _S.ROLLBACK_PENDING,
        (_S.ROLLBACK_PENDING, _T.ROLLBACK_PUBLISHED): _S.ROLLBACK_SENT,
        (_S.ROLLBACK_PENDING, _T.BACK): _S.ROLLED_BACK,
        (_S.ROLLBACK_SENT, _T.BACK): _S.ROLLED_BACK,
        (_S.ROLLBACK_PENDING, _T.STRANDED): _S.STRANDED,
        (_S.ROLLBACK_SENT, _T.STRANDED): _S.STRANDED,
        (_S.ROLLBACK_PENDING, _T.ROLLBACK_FAILED): _S.ROLLBACK_FAILED,
        (_S.ROLLBACK_SENT, _T.ROLLBACK_FAILED): _S.ROLLBACK_FAILED,
    },
    InvalidTargetTransitionError,
)
del _S, _T


def step_sources(step: TargetStep) -> list[TargetState]:
    """The states ``step`` applies to (a bulk write changes only targets still in them)."""
    return TARGET_TRANSITIONS.sources(step)


def step_target(step: TargetStep) -> TargetState:
    """The state ``step`` leads to (the same from every source)."""
    return TARGET_TRANSITIONS.target(step)


def next_target_state(state: TargetState, step: TargetStep) -> TargetState:
    """The state after ``step``; raises ``InvalidTargetTransitionError`` where the table has
    none."""
    return TARGET_TRANSITIONS.next(state, step)


#: Targets that may have received the new bundle (so a rollback must reach them).
DEPLOYED_STATES = frozenset(
    {TargetState.DEPLOYING, TargetState.SENT, TargetState.SUCCEEDED, TargetState.FAILED}
)
#: Targets a rollback could not bring back (the rollout ends ``rollback_failed``).
UNRECOVERED_STATES = frozenset({TargetState.STRANDED, TargetState.ROLLBACK_FAILED})
#: Targets that no longer tie their device to the rollout.
RELEASED_STATES = frozenset({TargetState.SKIPPED, TargetState.ROLLED_BACK})
#: Device events that mean a rollback order did not take effect.
ROLLBACK_FAILURE_EVENTS = frozenset({EventKind.FAILED, EventKind.REJECTED})
#: Device events that mean the install of this deployment did not stick.
FAILURE_EVENTS = frozenset(
    {
        EventKind.HEALTH_FAILED,
        EventKind.VERIFY_FAILED,
        EventKind.FAILED,
        EventKind.REJECTED,
        EventKind.ROLLED_BACK,
    }
)


@dataclass(frozen=True)
class InstallView:
    """What the registry knows about one target device for one deployment."""

    installed_bundle_id: str | None = None
    status_ts: float | None = None
    committed_ts: float | None = None  # first ``committed`` event of the deployment
    failure_kind: str | None = None  # latest failure event of the deployment
    failure_ts: float | None = None
    failure_detail: str = ""


def resolve_install(
    state: TargetState, view: InstallView, *, bundle_id: str
) -> tuple[TargetState, float | None, str] | None:
    """The target's new ``(state, finished_at, detail)``, or ``None`` if it does not change.

    Running the bundle wins over a failure event (a duplicate deploy to a device that
    already committed is answered ``rejected``: that is still a success).
    """
    if state not in (
        TargetState.DEPLOYING,
        TargetState.SENT,
        TargetState.SUCCEEDED,
        TargetState.FAILED,
    ):
        return None
    runs_it = view.installed_bundle_id == bundle_id
    if state is TargetState.FAILED:
        # a failure is final unless the device ends up running the bundle after all
        # (e.g. a later offer of the same rollout committed)
        if runs_it or (
            view.committed_ts is not None and view.committed_ts > (view.failure_ts or 0.0)
        ):
            return TargetState.SUCCEEDED, view.committed_ts or view.status_ts, "installed"
        return None
    if runs_it or view.committed_ts is not None:
        if view.failure_kind is not None and not runs_it:
            fail_after_commit = (view.failure_ts or 0.0) >= (view.committed_ts or 0.0)
            if fail_after_commit:
                return (
                    TargetState.FAILED,
                    view.failure_ts,
                    f"{view.failure_kind}: {view.failure_detail}".strip(": "),
                )
        if state is TargetState.SUCCEEDED:
            return None
        finished = view.committed_ts if view.committed_ts is not None else view.status_ts
        return TargetState.SUCCEEDED, finished, "installed"
    if view.failure_kind is not None:
        return (
            TargetState.FAILED,
            view.failure_ts,
            f"{view.failure_kind}: {view.failure_detail}".strip(": "),
        )
    return None


def rolled_back(
    view: InstallView, *, previous_bundle_id: str, since: float | None, rollback_event_seen: bool
) -> bool:
    """A rollback target is done once the device said it rolled back (for the rollback or by
    itself after a failed health check), or reports the previous bundle in a status newer
    than the last command the hub sent it (``since``)."""
    if rollback_event_seen:
        return True
    if view.failure_kind == EventKind.ROLLED_BACK and (view.failure_ts or 0.0) >= (
        view.committed_ts or 0.0
    ):
        return True  # went back by itself, after any commit of the rollout's bundle
    fresh = since is None or (view.status_ts is not None and view.status_ts > since)
    return view.installed_bundle_id == previous_bundle_id and fresh
