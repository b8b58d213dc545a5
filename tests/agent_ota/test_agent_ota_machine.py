"""The install lifecycle's transition table and recovery rules (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.ota.machine import (
    TERMINAL,
    TRANSITIONS,
    Deployment,
    InvalidTransitionError,
    Phase,
    RecoveryAction,
    Trigger,
    new_deployment,
    phase_timeouts,
    recovery_action,
    timed_out,
    transition,
)
from shared.transitions import TransitionTable

TIMEOUTS = phase_timeouts(download_s=10, verify_s=20, install_s=30, health_s=40, rollback_s=50)


def _dep(phase: Phase = Phase.IDLE, **kw: Any) -> Deployment:
    from dataclasses import replace

    return replace(
        new_deployment("d1", kind="deploy", now=0.0, bundle_id="b" * 64), phase=phase, **kw
    )


def _run(dep: Deployment, *triggers: Trigger) -> Deployment:
    t = 0.0
    for trig in triggers:
        t += 1
        dep = transition(dep, trig, now=t, timeouts=TIMEOUTS)
    return dep


def test_happy_path_reaches_committed_with_deadlines() -> None:
    dep = _run(_dep(), Trigger.OFFER_ACCEPTED)
    assert dep.phase == Phase.DOWNLOADING and dep.deadline == 1 + 10
    dep = _run(dep, Trigger.DOWNLOAD_COMPLETE)
    assert dep.phase == Phase.VERIFYING and dep.deadline == 1 + 20
    dep = _run(dep, Trigger.VERIFIED, Trigger.INSTALLED)
    assert dep.phase == Phase.HEALTH_CHECK and dep.deadline == 2 + 40
    dep = _run(dep, Trigger.HEALTH_OK)
    assert dep.phase == Phase.COMMITTED and dep.terminal and dep.deadline is None


@pytest.mark.parametrize(
    ("triggers", "end"),
    [
        ((Trigger.OFFER_ACCEPTED, Trigger.TIMEOUT), Phase.FAILED),
        ((Trigger.OFFER_ACCEPTED, Trigger.SUPERSEDED), Phase.FAILED),
        ((Trigger.OFFER_ACCEPTED, Trigger.DOWNLOAD_COMPLETE, Trigger.VERIFY_FAILED), Phase.FAILED),
        (
            (
                Trigger.OFFER_ACCEPTED,
                Trigger.DOWNLOAD_COMPLETE,
                Trigger.VERIFIED,
                Trigger.INSTALL_FAILED,
            ),
            Phase.ROLLING_BACK,
        ),
        (
            (
                Trigger.OFFER_ACCEPTED,
                Trigger.DOWNLOAD_COMPLETE,
                Trigger.VERIFIED,
                Trigger.INSTALLED,
                Trigger.HEALTH_FAILED,
                Trigger.ROLLBACK_DONE,
            ),
            Phase.ROLLED_BACK,
        ),
        ((Trigger.ROLLBACK_ORDERED, Trigger.ROLLBACK_FAILED), Phase.FAILED),
        ((Trigger.ROLLBACK_ORDERED, Trigger.ROLLBACK_DONE), Phase.ROLLED_BACK),
    ],
)
def test_failure_paths(triggers: tuple[Trigger, ...], end: Phase) -> None:
    assert _run(_dep(), *triggers).phase == end


def test_every_unlisted_pair_is_refused() -> None:
    refused = 0
    for phase in Phase:
        for trig in Trigger:
            if (phase, trig) in TRANSITIONS:
                continue
            refused += 1
            with pytest.raises(InvalidTransitionError):
                transition(_dep(phase), trig, now=0, timeouts=TIMEOUTS)
    assert refused > 80  # the table is small and explicit


def test_every_non_terminal_phase_can_end() -> None:
    """No phase can wedge a deployment: from each, some path reaches a terminal phase."""
    reach: dict[Phase, set[Phase]] = {p: set() for p in Phase}
    for (src, _), dst in TRANSITIONS.items():
        reach[src].add(dst)
    for phase in Phase:
        if phase == Phase.IDLE or phase in TERMINAL:
            continue
        seen: set[Phase] = set()
        todo: list[Phase] = [phase]
        while todo:
            p = todo.pop()
            for q in reach[p] - seen:
                seen.add(q)
                todo.append(q)
        assert seen & TERMINAL, phase
        # and a timeout is defined for every waiting phase
        assert (phase, Trigger.TIMEOUT) in TRANSITIONS, phase


def test_terminal_phases_accept_a_new_deployment() -> None:
    for phase in TERMINAL:
        assert (
            transition(_dep(phase), Trigger.OFFER_ACCEPTED, now=0, timeouts=TIMEOUTS).phase
            == Phase.DOWNLOADING
        )
        assert (
            transition(_dep(phase), Trigger.ROLLBACK_ORDERED, now=0, timeouts=TIMEOUTS).phase
            == Phase.ROLLING_BACK
        )


def test_reason_is_kept_into_terminal_phase_and_changes_apply() -> None:
    dep = _run(_dep(), Trigger.OFFER_ACCEPTED, Trigger.DOWNLOAD_COMPLETE, Trigger.VERIFIED)
    dep = transition(dep, Trigger.INSTALL_FAILED, now=9, timeouts=TIMEOUTS, reason="disk full")
    dep = transition(dep, Trigger.ROLLBACK_DONE, now=10, timeouts=TIMEOUTS)
    assert dep.phase == Phase.ROLLED_BACK and dep.reason == "disk full"
    dep2 = transition(_dep(), Trigger.OFFER_ACCEPTED, now=0, timeouts=TIMEOUTS, target_slot="b")
    assert dep2.target_slot == "b"


def test_timed_out() -> None:
    dep = _run(_dep(), Trigger.OFFER_ACCEPTED)
    assert not timed_out(dep, 10.9)
    assert timed_out(dep, 11.0)
    assert not timed_out(_run(dep, Trigger.TIMEOUT), 1e12)


def test_record_round_trips() -> None:
    dep = _run(_dep(), Trigger.OFFER_ACCEPTED)
    assert Deployment.from_dict(dep.to_dict()) == dep


@pytest.mark.parametrize(
    ("phase", "active", "resumes", "action"),
    [
        (Phase.IDLE, None, 0, RecoveryAction.NOTHING),
        (Phase.COMMITTED, "b", 0, RecoveryAction.NOTHING),
        (Phase.FAILED, "a", 0, RecoveryAction.NOTHING),
        (Phase.DOWNLOADING, "a", 0, RecoveryAction.RESUME_DOWNLOAD),
        (Phase.DOWNLOADING, "a", 5, RecoveryAction.FAIL),
        (Phase.VERIFYING, "a", 1, RecoveryAction.VERIFY),
        (Phase.INSTALLING, "a", 0, RecoveryAction.INSTALL),
        (Phase.INSTALLING, "a", 5, RecoveryAction.ROLL_BACK),
        (Phase.HEALTH_CHECK, "a", 0, RecoveryAction.HEALTH_CHECK),
        (Phase.HEALTH_CHECK, "a", 5, RecoveryAction.ROLL_BACK),
        (Phase.HEALTH_CHECK, "b", 5, RecoveryAction.FINISH_COMMIT),  # pointer already switched
        (Phase.ROLLING_BACK, "b", 0, RecoveryAction.ROLL_BACK),
    ],
)
def test_recovery_action(
    phase: Phase, active: str | None, resumes: int, action: RecoveryAction
) -> None:
    dep = _dep(phase, target_slot="b", previous_slot="a", resumes=resumes)
    assert recovery_action(dep, active_slot=active, max_resumes=5) == action


def test_recovery_without_record() -> None:
    assert recovery_action(None, active_slot=None, max_resumes=5) == RecoveryAction.NOTHING


def test_each_step_stamps_its_time_and_clears_a_stale_reason() -> None:
    dep = transition(_dep(), Trigger.OFFER_ACCEPTED, now=7.0, timeouts=TIMEOUTS)
    assert dep.phase_since == 7.0
    stale = _dep(Phase.DOWNLOADING, reason="chunks were slow")
    dep = transition(stale, Trigger.DOWNLOAD_COMPLETE, now=8.0, timeouts=TIMEOUTS)
    assert dep.phase == Phase.VERIFYING and dep.reason == "" and dep.phase_since == 8.0


def test_a_refused_transition_names_trigger_phase_and_deployment() -> None:
    with pytest.raises(
        InvalidTransitionError, match=r"^'health_ok' not allowed in phase 'idle' \(deployment d1\)$"
    ):
        transition(_dep(), Trigger.HEALTH_OK, now=0, timeouts=TIMEOUTS)


P, T = Phase, Trigger
#: The drawing in the module docstring, move by move.
DRAWN_MOVES = {
    **{(s, T.OFFER_ACCEPTED): P.DOWNLOADING for s in (P.IDLE, *TERMINAL)},
    **{(s, T.ROLLBACK_ORDERED): P.ROLLING_BACK for s in (P.IDLE, *TERMINAL)},
    (P.DOWNLOADING, T.DOWNLOAD_COMPLETE): P.VERIFYING,
    **{(P.DOWNLOADING, t): P.FAILED for t in (T.ERROR, T.TIMEOUT, T.SUPERSEDED)},
    (P.VERIFYING, T.VERIFIED): P.INSTALLING,
    **{(P.VERIFYING, t): P.FAILED for t in (T.VERIFY_FAILED, T.ERROR, T.TIMEOUT, T.SUPERSEDED)},
    (P.VERIFYING, T.REPAIR): P.DOWNLOADING,
    (P.INSTALLING, T.INSTALLED): P.HEALTH_CHECK,
    **{(P.INSTALLING, t): P.ROLLING_BACK for t in (T.INSTALL_FAILED, T.TIMEOUT, T.ERROR)},
    (P.HEALTH_CHECK, T.HEALTH_OK): P.COMMITTED,
    **{(P.HEALTH_CHECK, t): P.ROLLING_BACK for t in (T.HEALTH_FAILED, T.TIMEOUT, T.ERROR)},
    (P.ROLLING_BACK, T.ROLLBACK_DONE): P.ROLLED_BACK,
    **{(P.ROLLING_BACK, t): P.FAILED for t in (T.ROLLBACK_FAILED, T.TIMEOUT)},
}


def test_the_table_is_the_shared_transition_type_with_exactly_the_drawn_moves() -> None:
    assert isinstance(TRANSITIONS, TransitionTable) and TRANSITIONS.subject == "an install"
    assert dict(TRANSITIONS) == DRAWN_MOVES
    with pytest.raises(TypeError):
        TRANSITIONS[(P.IDLE, T.HEALTH_OK)] = P.COMMITTED  # type: ignore[index]


def test_the_table_itself_refuses_with_the_install_error() -> None:
    assert TRANSITIONS.next(P.HEALTH_CHECK, T.HEALTH_OK) is P.COMMITTED
    with pytest.raises(InvalidTransitionError, match="'health_ok' not allowed for an install"):
        TRANSITIONS.next(P.IDLE, T.HEALTH_OK)
