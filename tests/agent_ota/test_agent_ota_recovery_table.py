"""The crash-recovery table: total over its keys, and each row as the lifecycle demands."""

from __future__ import annotations

import itertools

import pytest

from edge_agent.ota.machine import (
    RECOVERY,
    TERMINAL,
    Phase,
    RecoveryAction,
    new_deployment,
    recovery_action,
)
from shared.install_phase import TERMINAL_INSTALL_PHASES, InstallPhase, is_terminal_phase

A = RecoveryAction
BOTH = (False, True)


def test_table_covers_every_phase_pointer_and_budget() -> None:
    assert set(RECOVERY) == set(itertools.product(Phase, BOTH, BOTH))


@pytest.mark.parametrize(
    ("phase", "redo", "give_up"),
    [
        (Phase.DOWNLOADING, A.RESUME_DOWNLOAD, A.FAIL),
        (Phase.VERIFYING, A.VERIFY, A.FAIL),
        (Phase.INSTALLING, A.INSTALL, A.ROLL_BACK),
    ],
)
def test_before_the_pointer_switch_a_step_is_redone_then_given_up(
    phase: Phase, redo: RecoveryAction, give_up: RecoveryAction
) -> None:
    for switched in BOTH:
        assert RECOVERY[(phase, switched, False)] is redo
        assert RECOVERY[(phase, switched, True)] is give_up


def test_health_check_commits_once_the_pointer_names_the_new_slot() -> None:
    assert RECOVERY[(Phase.HEALTH_CHECK, False, False)] is A.HEALTH_CHECK
    assert RECOVERY[(Phase.HEALTH_CHECK, False, True)] is A.ROLL_BACK
    assert RECOVERY[(Phase.HEALTH_CHECK, True, False)] is A.FINISH_COMMIT
    assert RECOVERY[(Phase.HEALTH_CHECK, True, True)] is A.FINISH_COMMIT


def test_rollbacks_continue_and_finished_deployments_rest() -> None:
    for switched, spent in itertools.product(BOTH, BOTH):
        assert RECOVERY[(Phase.ROLLING_BACK, switched, spent)] is A.ROLL_BACK
        for phase in (Phase.IDLE, *TERMINAL):
            assert RECOVERY[(phase, switched, spent)] is A.NOTHING


def test_recovery_action_reads_the_record() -> None:
    dep = new_deployment("d1", kind="deploy", now=0.0)
    assert recovery_action(None, active_slot="a", max_resumes=3) is A.NOTHING
    health = dep.__class__(**{**dep.__dict__, "phase": Phase.HEALTH_CHECK, "target_slot": "b"})
    assert recovery_action(health, active_slot="b", max_resumes=3) is A.FINISH_COMMIT
    assert recovery_action(health, active_slot="a", max_resumes=3) is A.HEALTH_CHECK
    tired = health.__class__(**{**health.__dict__, "resumes": 3})
    assert recovery_action(tired, active_slot="a", max_resumes=3) is A.ROLL_BACK


def test_the_agent_speaks_the_shared_install_vocabulary() -> None:
    assert Phase is InstallPhase and TERMINAL is TERMINAL_INSTALL_PHASES
    assert [p.value for p in Phase if is_terminal_phase(p.value)] == [
        "committed",
        "rolled_back",
        "failed",
    ]
    assert not is_terminal_phase("some_future_phase")
