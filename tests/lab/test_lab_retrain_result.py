"""What the lab's retraining scenario counts as a lost report: an outbox entry never
acknowledged, a device with no deployment of a rollout, a deployment without exactly one
terminal event. A device offered twice (a cut device reconnecting) ends the superseded
deployment with ``failed`` and commits the other: nothing is lost."""

from __future__ import annotations

from simulations.lab.outcome import LabDeviceOutcome
from simulations.lab.retrain_scenario import RetrainScenarioResult


def _result(
    per_device: dict[str, dict[str, int]], *, outbox_left: int = 0
) -> RetrainScenarioResult:
    result = RetrainScenarioResult(devices=2, terminal_events={"r-1": per_device})
    result.outcomes = [
        LabDeviceOutcome(d, 2, True, "", outbox_left if d == "a" else 0, ("committed",))
        for d in ("a", "b")
    ]
    return result


def test_a_superseded_deployment_and_its_successor_lose_nothing() -> None:
    assert _result({"a": {"r-1.s1": 1, "r-1.s2": 1}, "b": {"r-1.s1": 1}}).reports_lost == 0


def test_missing_and_unacknowledged_reports_are_lost() -> None:
    assert _result({"a": {"r-1.s1": 0}, "b": {"r-1.s1": 1}}).reports_lost == 1  # no end
    assert _result({"a": {"r-1.s1": 1}}).reports_lost == 1  # b reported nothing
    assert _result({"a": {"r-1.s1": 2}, "b": {"r-1.s1": 1}}).reports_lost == 1  # twice
    assert _result({"a": {"r-1.s1": 1}, "b": {"r-1.s1": 1}}, outbox_left=3).reports_lost == 3
