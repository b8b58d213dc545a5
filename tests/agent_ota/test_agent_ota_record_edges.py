"""The persisted deployment record: exact keys, exact defaults, exact refusals.

A restarted agent resumes from this record alone, so a key written under another name, a
default that changed or a field that silently became ``None`` would lose or corrupt a
deployment after a crash.
"""

from __future__ import annotations

from typing import Any

import pytest

from edge_agent.errors import InstallError
from edge_agent.ota.machine import Deployment, Phase

FULL = Deployment(
    deployment_id="dep-7",
    kind="rollback",
    phase=Phase.HEALTH_CHECK,
    bundle_id="b" * 64,
    model_name="digits",
    version=4,
    target_slot="b",
    previous_slot="a",
    reason="health check pending",
    started_at=12.5,
    phase_since=14.25,
    deadline=54.25,
    resumes=2,
    repairs=1,
    command={"type": "deploy", "bundle_id": "b" * 64},
)

FULL_DICT = {
    "deployment_id": "dep-7",
    "kind": "rollback",
    "phase": "health_check",
    "bundle_id": "b" * 64,
    "model_name": "digits",
    "version": 4,
    "target_slot": "b",
    "previous_slot": "a",
    "reason": "health check pending",
    "started_at": 12.5,
    "phase_since": 14.25,
    "deadline": 54.25,
    "resumes": 2,
    "repairs": 1,
    "command": {"type": "deploy", "bundle_id": "b" * 64},
}


def test_every_field_is_written_under_its_own_name() -> None:
    assert FULL.to_dict() == FULL_DICT


def test_every_field_is_read_back() -> None:
    assert Deployment.from_dict(FULL_DICT) == FULL
    assert Deployment.from_dict(FULL.to_dict()) == FULL


def test_a_minimal_record_takes_the_documented_defaults() -> None:
    minimal = Deployment.from_dict({"deployment_id": "d", "kind": "deploy", "phase": "idle"})
    assert minimal == Deployment(deployment_id="d", kind="deploy", phase=Phase.IDLE)
    assert minimal.to_dict() == {
        "deployment_id": "d",
        "kind": "deploy",
        "phase": "idle",
        "bundle_id": "",
        "model_name": "",
        "version": 0,
        "target_slot": None,
        "previous_slot": None,
        "reason": "",
        "started_at": 0.0,
        "phase_since": 0.0,
        "deadline": None,
        "resumes": 0,
        "repairs": 0,
        "command": {},
    }


def test_values_are_converted_to_their_field_types() -> None:
    loose = {
        **FULL_DICT,
        "deployment_id": 7,
        "version": "4",
        "started_at": "12.5",
        "phase_since": 14,
        "deadline": "54.25",
        "resumes": "2",
        "repairs": 1.0,
        "reason": 3,
    }
    dep = Deployment.from_dict(loose)
    assert dep.deployment_id == "7" and dep.reason == "3"
    assert (dep.version, dep.resumes, dep.repairs) == (4, 2, 1)
    assert type(dep.version) is int and type(dep.repairs) is int
    assert (dep.started_at, dep.phase_since, dep.deadline) == (12.5, 14.0, 54.25)
    assert type(dep.phase_since) is float and type(dep.deadline) is float
    assert dep.phase is Phase.HEALTH_CHECK


def test_a_null_command_or_deadline_reads_as_empty() -> None:
    dep = Deployment.from_dict({**FULL_DICT, "command": None, "deadline": None})
    assert dep.command == {} and dep.deadline is None


def test_the_command_is_copied_not_shared() -> None:
    command = {"type": "deploy"}
    dep = Deployment.from_dict({**FULL_DICT, "command": command})
    command["type"] = "changed"
    assert dep.command == {"type": "deploy"}


@pytest.mark.parametrize("missing", ["deployment_id", "kind", "phase"])
def test_a_record_without_a_required_field_is_refused(missing: str) -> None:
    record = {k: v for k, v in FULL_DICT.items() if k != missing}
    with pytest.raises(InstallError) as info:
        Deployment.from_dict(record)
    assert str(info.value) == f"persisted deployment record is invalid: {missing!r}"


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"phase": "dancing"}, "'dancing' is not a valid InstallPhase"),
        ({"version": "four"}, "invalid literal for int() with base 10: 'four'"),
        ({"version": None}, "int() argument must be"),
        ({"started_at": "noon"}, "could not convert string to float: 'noon'"),
        ({"deadline": "later"}, "could not convert string to float: 'later'"),
        ({"command": [1]}, "cannot convert dictionary update sequence element #0"),
    ],
)
def test_an_invalid_record_is_refused_with_the_reason(change: dict[str, Any], why: str) -> None:
    with pytest.raises(InstallError) as info:
        Deployment.from_dict({**FULL_DICT, **change})
    assert str(info.value).startswith(f"persisted deployment record is invalid: {why}")


def test_the_recovery_table_is_built_total_and_as_documented() -> None:
    """Built afresh (the module's copy is built once, at import)."""
    from edge_agent.ota.machine import RECOVERY, TERMINAL, RecoveryAction, _recovery_table

    table = _recovery_table()
    assert table == RECOVERY
    assert set(table) == {
        (p, sw, sp) for p in Phase for sw in (False, True) for sp in (False, True)
    }
    a = RecoveryAction
    expected_before_switch = {
        Phase.DOWNLOADING: (a.RESUME_DOWNLOAD, a.FAIL),
        Phase.VERIFYING: (a.VERIFY, a.FAIL),
        Phase.INSTALLING: (a.INSTALL, a.ROLL_BACK),
        Phase.HEALTH_CHECK: (a.HEALTH_CHECK, a.ROLL_BACK),
    }
    for phase, (again, given_up) in expected_before_switch.items():
        assert (table[(phase, False, False)], table[(phase, False, True)]) == (again, given_up)
    for used_up in (False, True):
        assert table[(Phase.HEALTH_CHECK, True, used_up)] == a.FINISH_COMMIT
        assert (
            table[(Phase.DOWNLOADING, True, used_up)] == table[(Phase.DOWNLOADING, False, used_up)]
        )
        for switched in (False, True):
            assert table[(Phase.ROLLING_BACK, switched, used_up)] == a.ROLL_BACK
            for idle in (Phase.IDLE, *TERMINAL):
                assert table[(idle, switched, used_up)] == a.NOTHING


def test_a_new_deployment_starts_idle_with_the_documented_defaults() -> None:
    from edge_agent.ota.machine import new_deployment

    fresh = new_deployment("d", kind="deploy", now=5.0)
    assert fresh == Deployment("d", "deploy", Phase.IDLE, started_at=5.0, phase_since=5.0)
    command = {"type": "deploy"}
    named = new_deployment(
        "d", kind="rollback", now=6.0, bundle_id="b", model_name="m", version=3, command=command
    )
    command["type"] = "changed"
    assert named == Deployment(
        "d",
        "rollback",
        Phase.IDLE,
        bundle_id="b",
        model_name="m",
        version=3,
        started_at=6.0,
        phase_since=6.0,
        command={"type": "deploy"},
    )
