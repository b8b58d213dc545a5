"""The training-run table: each transition and the refusals."""

from __future__ import annotations

import itertools

import pytest

from cloud_hub.loop.run_states import (
    TERMINAL_RUN_STATES,
    TRANSITIONS,
    InvalidRunTransitionError,
    RunState,
    RunStep,
    next_run_state,
    rollout_end_step,
)
from shared.transitions import TransitionTable

S, T = RunState, RunStep
PIPELINE = [
    (S.PENDING, T.START, S.TRAINING),
    (S.TRAINING, T.TRAINED, S.EVALUATING),
    (S.EVALUATING, T.ACCEPTED, S.COMPRESSING),
    (S.EVALUATING, T.REFUSED, S.REFUSED),
    (S.COMPRESSING, T.COMPRESSED, S.BUNDLING),
    (S.BUNDLING, T.REGISTERED, S.REGISTERED),
    (S.BUNDLING, T.AWAITING, S.AWAITING_APPROVAL),
    (S.BUNDLING, T.ROLLOUT_STARTED, S.ROLLING_OUT),
    (S.AWAITING_APPROVAL, T.APPROVED, S.ROLLING_OUT),
    (S.ROLLING_OUT, T.ROLLOUT_DONE, S.DEPLOYED),
    (S.ROLLING_OUT, T.ROLLOUT_ROLLED_BACK, S.ROLLOUT_ROLLED_BACK),
    (S.ROLLING_OUT, T.ROLLOUT_ABORTED, S.ROLLOUT_ABORTED),
    (S.ROLLING_OUT, T.ROLLOUT_RESOLVED, S.ROLLOUT_RESOLVED),
    *[
        (s, T.FAIL, S.FAILED)
        for s in (S.PENDING, S.RUNNING, S.TRAINING, S.EVALUATING, S.COMPRESSING, S.BUNDLING)
    ],
    (S.PENDING, T.REPORT_RUNNING, S.RUNNING),
    (S.PENDING, T.REPORT_DONE, S.DONE),
    (S.RUNNING, T.REPORT_DONE, S.DONE),
    (S.PENDING, T.REPORT_CANCELLED, S.CANCELLED),
    (S.RUNNING, T.REPORT_CANCELLED, S.CANCELLED),
]


@pytest.mark.parametrize(("state", "step", "target"), PIPELINE)
def test_each_transition(state: RunState, step: RunStep, target: RunState) -> None:
    assert next_run_state(state.value, step) is target


def test_the_table_is_exactly_these_transitions() -> None:
    assert dict(TRANSITIONS) == {(s, t): g for s, t, g in PIPELINE}


def test_everything_else_is_refused_and_ends_stay_ended() -> None:
    allowed = {(s, t) for s, t, _ in PIPELINE}
    for state, step in itertools.product(RunState, RunStep):
        if (state, step) in allowed:
            continue
        with pytest.raises(InvalidRunTransitionError, match="not allowed"):
            next_run_state(state.value, step)
    for state in TERMINAL_RUN_STATES:
        assert not any(s is state for s, _ in allowed)
    with pytest.raises(InvalidRunTransitionError, match="unknown"):
        next_run_state("rollout_failed", T.FAIL)


def test_a_run_closes_when_its_rollout_ends() -> None:
    assert rollout_end_step("done") is T.ROLLOUT_DONE
    assert rollout_end_step("rolled_back") is T.ROLLOUT_ROLLED_BACK
    assert rollout_end_step("aborted") is T.ROLLOUT_ABORTED
    assert rollout_end_step("resolved") is T.ROLLOUT_RESOLVED
    for going in ("canary", "wave", "paused", "rolling_back", "rollback_failed"):
        assert rollout_end_step(going) is None


def test_the_table_is_the_shared_transition_type_and_refuses_naming_step_and_state() -> None:
    assert isinstance(TRANSITIONS, TransitionTable) and TRANSITIONS.subject == "a training run"
    with pytest.raises(
        InvalidRunTransitionError,
        match=r"^'start' not allowed for a training run in state 'training'$",
    ):
        next_run_state("training", T.START)
    with pytest.raises(InvalidRunTransitionError, match=r"^unknown training-run state 'gone'$"):
        next_run_state("gone", T.START)
    with pytest.raises(TypeError):
        TRANSITIONS[(S.PENDING, T.FAIL)] = S.DONE  # type: ignore[index]
