"""The rollout transition table, exhaustively."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_hub.errors import RolloutError
from cloud_hub.rollout.state import (
    TRANSITIONS,
    RolloutAction,
    RolloutPhase,
    RolloutState,
    Target,
    apply_action,
    stage_name,
)

S, A = RolloutState, RolloutAction


def _phase(state: RolloutState, stage: int) -> RolloutPhase:
    return RolloutPhase(state, stage)


def test_happy_path_canary_three_waves_done() -> None:
    phase = RolloutPhase()
    phase = apply_action(phase, A.START, n_stages=4)
    names = [phase.name]
    while phase.state is not S.DONE:
        phase = apply_action(phase, A.PROMOTE, n_stages=4)
        names.append(phase.name)
    assert names == ["canary", "wave_1", "wave_2", "wave_3", "done"]


def test_single_stage_rollout_goes_canary_to_done() -> None:
    phase = apply_action(RolloutPhase(), A.START, n_stages=1)
    assert apply_action(phase, A.PROMOTE, n_stages=1).state is S.DONE


def test_pause_resume_keeps_stage() -> None:
    phase = RolloutPhase(S.WAVE, 2)
    paused = apply_action(phase, A.PAUSE, n_stages=4)
    assert paused == RolloutPhase(S.PAUSED, 2)
    assert paused.name == "paused (wave_2)"
    assert apply_action(paused, A.RESUME, n_stages=4) == phase
    canary_paused = apply_action(RolloutPhase(S.CANARY, 0), A.PAUSE, n_stages=4)
    assert apply_action(canary_paused, A.RESUME, n_stages=4) == RolloutPhase(S.CANARY, 0)


def test_gate_failure_then_rollback_complete() -> None:
    phase = apply_action(RolloutPhase(S.CANARY, 0), A.GATE_FAILED, n_stages=3)
    assert phase == RolloutPhase(S.ROLLING_BACK, 0)
    assert apply_action(phase, A.ROLLBACK_COMPLETE, n_stages=3).state is S.ROLLED_BACK


@pytest.mark.parametrize(
    ("state", "action"),
    [
        (s, a)
        for s, a in itertools.product(RolloutState, RolloutAction)
        if (s, a) not in TRANSITIONS
    ],
)
def test_every_illegal_transition_raises_naming_state_and_action(
    state: RolloutState, action: RolloutAction
) -> None:
    stage = 1 if state in (S.WAVE, S.PAUSED) else 0
    with pytest.raises(RolloutError) as info:
        apply_action(_phase(state, stage), action, n_stages=3)
    assert action.value in str(info.value)
    assert _phase(state, stage).name in str(info.value)


def test_terminal_states_only_allow_operator_rollback() -> None:
    for state in (S.DONE, S.ABORTED):
        allowed = {a for (s, a) in TRANSITIONS if s is state}
        assert allowed == {A.ROLLBACK}
    assert not {a for (s, a) in TRANSITIONS if s is S.ROLLED_BACK}


def test_table_targets_are_states_or_stage_targets() -> None:
    for target in TRANSITIONS.values():
        assert isinstance(target, RolloutState | Target)


@settings(deadline=None)
@given(
    actions=st.lists(st.sampled_from(list(RolloutAction)), max_size=30),
    n_stages=st.integers(min_value=1, max_value=6),
)
def test_random_walks_stay_consistent(actions: list[RolloutAction], n_stages: int) -> None:
    """Any action sequence either transitions per the table or raises; stages stay in range."""
    phase = RolloutPhase()
    for action in actions:
        try:
            nxt = apply_action(phase, action, n_stages=n_stages)
        except RolloutError:
            assert (phase.state, action) not in TRANSITIONS
            continue
        assert (phase.state, action) in TRANSITIONS
        if nxt.state in (S.CANARY, S.WAVE, S.PAUSED):
            assert 0 <= nxt.stage < n_stages
            assert (nxt.state is S.CANARY) == (nxt.stage == 0) or nxt.state is S.PAUSED
        if action is A.PROMOTE:
            assert nxt.stage == phase.stage + 1 or nxt.state is S.DONE
        phase = nxt


def test_stage_names_and_invalid_inputs() -> None:
    assert stage_name(0) == "canary"
    assert stage_name(3) == "wave_3"
    with pytest.raises(RolloutError):
        stage_name(-1)
    with pytest.raises(RolloutError):
        apply_action(RolloutPhase(), A.START, n_stages=0)


def test_done_keeps_the_last_stage_and_refusals_name_the_input() -> None:
    last = RolloutPhase(S.WAVE, 3)
    assert apply_action(last, A.PROMOTE, n_stages=4) == RolloutPhase(S.DONE, 3)
    with pytest.raises(RolloutError, match=r"^invalid stage index -1$"):
        stage_name(-1)
    with pytest.raises(RolloutError, match=r"^a rollout needs at least one stage, got 0$"):
        apply_action(RolloutPhase(), A.START, n_stages=0)
