"""The rollout-target table: each transition, the refusals, and the sets derived from it."""

from __future__ import annotations

import itertools

import pytest

from cloud_hub.rollout.targets import (
    DEPLOYED_STATES,
    TARGET_TRANSITIONS,
    UNRECOVERED_STATES,
    InvalidTargetTransitionError,
    TargetState,
    TargetStep,
    next_target_state,
    step_sources,
    step_target,
)

S, T = TargetState, TargetStep
EXPECTED = {
    T.OFFER: ({S.PENDING, S.DEPLOYING}, S.DEPLOYING),
    T.PUBLISHED: ({S.DEPLOYING}, S.SENT),
    T.CAME_BACK: ({S.SENT}, S.DEPLOYING),
    T.INSTALLED: ({S.DEPLOYING, S.SENT, S.FAILED}, S.SUCCEEDED),
    T.INSTALL_FAILED: ({S.DEPLOYING, S.SENT, S.SUCCEEDED}, S.FAILED),
    T.GAVE_UP: ({S.PENDING, S.DEPLOYING}, S.FAILED),
    T.SKIP: ({S.PENDING}, S.SKIPPED),
    T.ORDER_ROLLBACK: (set(DEPLOYED_STATES | UNRECOVERED_STATES), S.ROLLBACK_PENDING),
    T.ROLLBACK_RESENT: ({S.ROLLBACK_PENDING, S.ROLLBACK_SENT}, S.ROLLBACK_PENDING),
    T.ROLLBACK_PUBLISHED: ({S.ROLLBACK_PENDING}, S.ROLLBACK_SENT),
    T.BACK: ({S.ROLLBACK_PENDING, S.ROLLBACK_SENT}, S.ROLLED_BACK),
    T.STRANDED: ({S.ROLLBACK_PENDING, S.ROLLBACK_SENT}, S.STRANDED),
    T.ROLLBACK_FAILED: ({S.ROLLBACK_PENDING, S.ROLLBACK_SENT}, S.ROLLBACK_FAILED),
}


@pytest.mark.parametrize("step", list(TargetStep))
def test_each_step_from_each_source(step: TargetStep) -> None:
    sources, target = EXPECTED[step]
    assert set(step_sources(step)) == sources and step_target(step) is target
    for state in sources:
        assert next_target_state(state, step) is target


def test_the_table_is_exactly_the_drawing() -> None:
    drawn = {(s, step): g for step, (sources, g) in EXPECTED.items() for s in sources}
    assert dict(TARGET_TRANSITIONS) == drawn


def test_everything_else_is_refused() -> None:
    for state, step in itertools.product(TargetState, TargetStep):
        if (state, step) in TARGET_TRANSITIONS:
            continue
        with pytest.raises(InvalidTargetTransitionError, match="not allowed"):
            next_target_state(state, step)


def test_released_targets_never_move_again() -> None:
    for state in (S.SKIPPED, S.ROLLED_BACK):
        assert not any(s is state for s, _ in TARGET_TRANSITIONS)
