"""A training run's lifecycle as one transition table (pure: values in, values out).

::

    pending ──start──► training ──trained──► evaluating ──accepted──► compressing
                                                 │ refused                 │ compressed
                                                 ▼                         ▼
                                              refused                   bundling
                                                                           │ registered / awaiting / rollout_started
                    ┌──────────────────────────────────────────────────────┤
                    ▼                          ▼                           ▼
               registered         awaiting_approval ──approved──► rolling_out
                                                                      │ rollout_done / rollout_rolled_back /
                                                                      ▼ rollout_aborted / rollout_resolved
                                                              deployed | rollout_<state>

    any state before an end ──fail──► failed

Runs recorded by an external trainer through the API (``POST``/``PATCH /training-runs``)
move ``pending ──report_running──► running`` and from ``pending``/``running`` to
``done``/``failed``/``cancelled``. The pipeline (:mod:`cloud_hub.loop.pipeline`) and the
controller (:mod:`cloud_hub.loop.controller`) move a run only through this table.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from cloud_hub.errors import HubError
from shared.transitions import TransitionTable

__all__ = [
    "TERMINAL_RUN_STATES",
    "TRANSITIONS",
    "InvalidRunTransitionError",
    "RunState",
    "RunStep",
    "next_run_state",
    "rollout_end_step",
]


class RunState(str, enum.Enum):
    PENDING = "pending"
    RUNNING = "running"  # an external trainer's run (API)
    TRAINING = "training"
    EVALUATING = "evaluating"
    COMPRESSING = "compressing"
    BUNDLING = "bundling"
    REGISTERED = "registered"  # bundle registered, no rollout service
    AWAITING_APPROVAL = "awaiting_approval"
    ROLLING_OUT = "rolling_out"
    DEPLOYED = "deployed"
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
    ROLLOUT_ABORTED = "rollout_aborted"
    ROLLOUT_RESOLVED = "rollout_resolved"
    REFUSED = "refused"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStep(str, enum.Enum):
    START = "start"
    TRAINED = "trained"
    ACCEPTED = "accepted"
    REFUSED = "refused"
    COMPRESSED = "compressed"
    REGISTERED = "registered"
    AWAITING = "awaiting"
    ROLLOUT_STARTED = "rollout_started"
    APPROVED = "approved"
    ROLLOUT_DONE = "rollout_done"
    ROLLOUT_ROLLED_BACK = "rollout_rolled_back"
    ROLLOUT_ABORTED = "rollout_aborted"
    ROLLOUT_RESOLVED = "rollout_resolved"
    FAIL = "fail"
    REPORT_RUNNING = "report_running"
    REPORT_DONE = "report_done"
    REPORT_CANCELLED = "report_cancelled"


TERMINAL_RUN_STATES = frozenset(
    {
        RunState.REGISTERED,
        RunState.DEPLOYED,
        RunState.ROLLOUT_ROLLED_BACK,
        RunState.ROLLOUT_ABORTED,
        RunState.ROLLOUT_RESOLVED,
        RunState.REFUSED,
        RunState.DONE,
        RunState.FAILED,
        RunState.CANCELLED,
    }
)
# a failure may end any run still in progress (a rollout in flight is not the run failing)
_FAILABLE = (
    RunState.PENDING,
    RunState.RUNNING,
    RunState.TRAINING,
    RunState.EVALUATING,
    RunState.COMPRESSING,
    RunState.BUNDLING,
)


class InvalidRunTransitionError(HubError):
    """A step the training-run table does not allow in the run's current state."""


S, T = RunState, RunStep
#: The whole lifecycle. Anything not listed here is refused with ``InvalidRunTransitionError``.
TRANSITIONS: TransitionTable[RunState, RunStep, RunState] = TransitionTable(
    "a training run",
    {
        (S.PENDING, T.START): S.TRAINING,
        (S.TRAINING, T.TRAINED): S.EVALUATING,
        (S.EVALUATING, T.ACCEPTED): S.COMPRESSING,
        (S.EVALUATING, T.REFUSED): S.REFUSED,
        (S.COMPRESSING, T.COMPRESSED): S.BUNDLING,
        (S.BUNDLING, T.REGISTERED): S.REGISTERED,
        (S.BUNDLING, T.AWAITING): S.AWAITING_APPROVAL,
        (S.BUNDLING, T.ROLLOUT_STARTED): S.ROLLING_OUT,
        (S.AWAITING_APPROVAL, T.APPROVED): S.ROLLING_OUT,
        (S.ROLLING_OUT, T.ROLLOUT_DONE): S.DEPLOYED,
        (S.ROLLING_OUT, T.ROLLOUT_ROLLED_BACK): S.ROLLOUT_ROLLED_BACK,
        (S.ROLLING_OUT, T.ROLLOUT_ABORTED): S.ROLLOUT_ABORTED,
        (S.ROLLING_OUT, T.ROLLOUT_RESOLVED): S.ROLLOUT_RESOLVED,
        **{(s, T.FAIL): S.FAILED for s in _FAILABLE},
        (S.PENDING, T.REPORT_RUNNING): S.RUNNING,
        (S.PENDING, T.REPORT_DONE): S.DONE,
        (S.RUNNING, T.REPORT_DONE): S.DONE,
        (S.PENDING, T.REPORT_CANCELLED): S.CANCELLED,
        (S.RUNNING, T.REPORT_CANCELLED): S.CANCELLED,
    },
    InvalidRunTransitionError,
)
del S, T

#: a rollout's final state → the step that closes the run that made it (``rollback_failed``
#: is not final: the operator retries or resolves it)
_ROLLOUT_END: Mapping[str, RunStep] = {
    "done": RunStep.ROLLOUT_DONE,
    "rolled_back": RunStep.ROLLOUT_ROLLED_BACK,
    "aborted": RunStep.ROLLOUT_ABORTED,
    "resolved": RunStep.ROLLOUT_RESOLVED,
}


def next_run_state(state: str, step: RunStep) -> RunState:
    """The state after ``step``; raises ``InvalidRunTransitionError`` where the table has none
    (including for a state name this hub does not know)."""
    try:
        current = RunState(state)
    except ValueError:
        raise InvalidRunTransitionError(f"unknown training-run state {state!r}") from None
    return TRANSITIONS.next(current, step)


def rollout_end_step(rollout_state: str) -> RunStep | None:
    """The step that closes a ``rolling_out`` run once its rollout is in ``rollout_state``;
    ``None`` while the rollout is still going."""
    return _ROLLOUT_END.get(rollout_state)
