"""Every recovery decision has exactly one step that carries it out."""

from __future__ import annotations

from edge_agent.ota.machine import RECOVERY, RecoveryAction
from edge_agent.ota.recovery import RECOVERY_STEPS, CrashRecovery


def test_each_decision_but_nothing_has_a_step_of_the_recovery() -> None:
    decided = set(RECOVERY.values()) - {RecoveryAction.NOTHING}
    assert set(RECOVERY_STEPS) == decided == set(RecoveryAction) - {RecoveryAction.NOTHING}
    for step in RECOVERY_STEPS.values():
        assert getattr(CrashRecovery, step.__name__) is step
