"""The rollout lifecycle as one explicit transition table (pure, no I/O).

::

    draft ──start──► canary ──promote──► wave_1 ──promote──► … wave_n ──promote──► done
                       │  ▲                 │  ▲
                 pause │  │ resume    pause │  │ resume          (paused keeps its stage)
                       ▼  │                 ▼  │
                      paused               paused
    draft/canary/wave/paused ──abort──► aborted            (stop; devices stay where they are)
    canary/wave/paused ──gate_failed──► rolling_back ──rollback_complete──► rolled_back
    canary/wave/paused/done/aborted ──rollback──► rolling_back   (operator-requested)
    rolling_back ──rollback_incomplete──► rollback_failed   (some devices could not go back;
                                                            each target says why)
    rollback_failed ──rollback──► rolling_back              (try those devices again)
    rollback_failed ──resolve──► resolved                   (the operator took over)
    rolling_back ──abort──► aborted                         (stop sending rollback orders)

A rollout in one of :data:`HOLDING_STATES` holds its devices: no other rollout may target
them until it is done, aborted, rolled back or resolved.

A rollout's position is a :class:`RolloutPhase`: the state plus the index of its stage
(0 = canary, i = ``wave_i``). ``promote`` goes to the next stage, or to ``done`` after the last.
Anything not in :data:`TRANSITIONS` raises :class:`~cloud_hub.errors.RolloutError` naming the
state and the action.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cloud_hub.errors import RolloutError
from shared.transitions import TransitionTable

__all__ = [
    "ACTIVE_STATES",
    "HOLDING_STATES",
    "TERMINAL_STATES",
    "TRANSITIONS",
    "RolloutAction",
    "RolloutPhase",
    "RolloutState",
    "Target",
    "apply_action",
    "stage_name",
]


class RolloutState(str, enum.Enum):
    DRAFT = "draft"
    CANARY = "canary"
    WAVE = "wave"
    PAUSED = "paused"
    DONE = "done"
    ABORTED = "aborted"
    ROLLING_BACK = "rolling_back"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"
    RESOLVED = "resolved"


class RolloutAction(str, enum.Enum):
    START = "start"
    PROMOTE = "promote"
    PAUSE = "pause"
    RESUME = "resume"
    ABORT = "abort"
    GATE_FAILED = "gate_failed"
    ROLLBACK = "rollback"
    ROLLBACK_COMPLETE = "rollback_complete"
    ROLLBACK_INCOMPLETE = "rollback_incomplete"
    RESOLVE = "resolve"


class Target(str, enum.Enum):
    """Where a transition leads when the destination depends on the stage index."""

    NEXT_STAGE = "next_stage"  # canary → wave_1 → … → done
    SAME_STAGE = "same_stage"  # paused → the stage it was paused in


S, A = RolloutState, RolloutAction

#: The whole lifecycle. Values are a concrete state or a stage-relative :class:`Target`.
TRANSITIONS: TransitionTable[RolloutState, RolloutAction, RolloutState | Target] = TransitionTable(
    "a rollout",
    {
        (S.DRAFT, A.START): S.CANARY,
        (S.DRAFT, A.ABORT): S.ABORTED,
        (S.CANARY, A.PROMOTE): Target.NEXT_STAGE,
        (S.CANARY, A.PAUSE): S.PAUSED,
        (S.CANARY, A.ABORT): S.ABORTED,
        (S.CANARY, A.GATE_FAILED): S.ROLLING_BACK,
        (S.CANARY, A.ROLLBACK): S.ROLLING_BACK,
        (S.WAVE, A.PROMOTE): Target.NEXT_STAGE,
        (S.WAVE, A.PAUSE): S.PAUSED,
        (S.WAVE, A.ABORT): S.ABORTED,
        (S.WAVE, A.GATE_FAILED): S.ROLLING_BACK,
        (S.WAVE, A.ROLLBACK): S.ROLLING_BACK,
        (S.PAUSED, A.RESUME): Target.SAME_STAGE,
        (S.PAUSED, A.ABORT): S.ABORTED,
        (S.PAUSED, A.GATE_FAILED): S.ROLLING_BACK,
        (S.PAUSED, A.ROLLBACK): S.ROLLING_BACK,
        (S.DONE, A.ROLLBACK): S.ROLLING_BACK,
        (S.ABORTED, A.ROLLBACK): S.ROLLING_BACK,
        (S.ROLLING_BACK, A.ROLLBACK_COMPLETE): S.ROLLED_BACK,
        (S.ROLLING_BACK, A.ROLLBACK_INCOMPLETE): S.ROLLBACK_FAILED,
        (S.ROLLING_BACK, A.ABORT): S.ABORTED,
        (S.ROLLBACK_FAILED, A.ROLLBACK): S.ROLLING_BACK,
        (S.ROLLBACK_FAILED, A.RESOLVE): S.RESOLVED,
    },
    RolloutError,
)
del S, A

#: States in which the engine deploys to the current stage and evaluates its gate.
ACTIVE_STATES = frozenset({RolloutState.CANARY, RolloutState.WAVE})
#: States nothing leaves except an operator rollback.
TERMINAL_STATES = frozenset(
    {RolloutState.DONE, RolloutState.ABORTED, RolloutState.ROLLED_BACK, RolloutState.RESOLVED}
)
#: States in which a rollout holds its target devices (another rollout may not target them).
HOLDING_STATES = frozenset(
    {
        RolloutState.CANARY,
        RolloutState.WAVE,
        RolloutState.PAUSED,
        RolloutState.ROLLING_BACK,
        RolloutState.ROLLBACK_FAILED,
    }
)


def stage_name(index: int) -> str:
    """``canary`` for stage 0, ``wave_i`` for stage i."""
    if index < 0:
        raise RolloutError(f"invalid stage index {index}")
    return "canary" if index == 0 else f"wave_{index}"


@dataclass(frozen=True)
class RolloutPhase:
    """Where a rollout is: its state and stage index (-1 before the canary starts)."""

    state: RolloutState = RolloutState.DRAFT
    stage: int = -1

    @property
    def name(self) -> str:
        """Human name: ``draft``, ``canary``, ``wave_2``, ``paused (wave_1)``, ``done`` …"""
        if self.state in (RolloutState.CANARY, RolloutState.WAVE):
            return stage_name(self.stage)
        if self.state is RolloutState.PAUSED:
            return f"paused ({stage_name(self.stage)})"
        return self.state.value

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES


def _stage_state(index: int) -> RolloutState:
    return RolloutState.CANARY if index == 0 else RolloutState.WAVE


def apply_action(phase: RolloutPhase, action: RolloutAction, *, n_stages: int) -> RolloutPhase:
    """Return the phase after ``action``; raise ``RolloutError`` if the table forbids it.

    ``n_stages`` counts the canary plus the waves (at least 1).
    """
    if n_stages < 1:
        raise RolloutError(f"a rollout needs at least one stage, got {n_stages}")
    target = TRANSITIONS.get((phase.state, action))
    if target is None:
        raise RolloutError(
            f"illegal rollout transition: cannot {action.value} in state {phase.name}"
        )
    if target is Target.NEXT_STAGE:
        nxt = phase.stage + 1
        if nxt >= n_stages:
            return RolloutPhase(RolloutState.DONE, phase.stage)
        return RolloutPhase(_stage_state(nxt), nxt)
    if target is Target.SAME_STAGE:
        return RolloutPhase(_stage_state(phase.stage), phase.stage)
    assert isinstance(target, RolloutState)
    if target is RolloutState.CANARY:
        return RolloutPhase(RolloutState.CANARY, 0)
    return RolloutPhase(target, phase.stage)
