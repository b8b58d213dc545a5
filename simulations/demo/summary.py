"""The demo's summary: accuracy per phase, runs, rollouts and bytes shipped, and its files."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from simulations.demo.config import CLASS, DemoConfig, DemoResult

__all__ = ["demo_summary", "phase_accuracy", "write_run"]


def phase_accuracy(
    timeline: list[dict[str, Any]], phase: str, *, drifted: bool, version: int | None = None
) -> float:
    """Mean accuracy of the drifted (or healthy) devices' answers in one phase (only the
    answers of model ``version`` when given)."""
    values = [
        r["accuracy"]
        for r in timeline
        if r["phase"] == phase
        and r["drifted"] == drifted
        and (version is None or r["version"] == version)
    ]
    return statistics.fmean(values) if values else float("nan")


def demo_summary(
    *,
    config: DemoConfig,
    registry: Any,
    controller: Any,
    first: Any,
    rollouts: dict[str, Any],
    timeline: list[dict[str, Any]],
    acc: tuple[float, float, float],
    wall_s: float,
    dashboard: str,
    drift_to_rollout_s: float,
    phases: dict[str, float],
    delivered: Any = None,
) -> dict[str, Any]:
    from simulations.demo.report import bytes_shipped

    retrain = controller.outcomes[-1]
    retrain_rounds = _rounds(registry, retrain.run_id)
    shipped = bytes_shipped(registry, [r.rollout_id for r in rollouts.values()], delivered)
    return {
        "agents": config.agents,
        "drifted_devices": config.drifted,
        "accuracy_before_drift": acc[0],
        "accuracy_after_drift": acc[1],
        "accuracy_after_retrain": acc[2],
        "accuracy_recovered_pts": 100.0 * (acc[2] - acc[1]),
        "healthy_accuracy_before_drift": phase_accuracy(timeline, "before_drift", drifted=False),
        # the other sites' answers from the retrained model (the rollout reaches them last)
        "healthy_accuracy_after_retrain": phase_accuracy(
            timeline, "after_retrain", drifted=False, version=retrain.version
        ),
        "initial_run": {"run_id": first.run_id, "version": first.version, **first.timings_s},
        "retrain_run": {
            "run_id": retrain.run_id,
            "trigger": controller.decisions.get(CLASS).trigger if controller.decisions else "",
            "version": retrain.version,
            "candidate_accuracy": retrain.candidate_accuracy,
            "champion_accuracy": retrain.champion_accuracy,
            # rounds trained, and what the global model scored before round 1 (the
            # champion's accuracy: the retraining starts from the champion's weights)
            "rounds": sum(1 for r in retrain_rounds if r.get("round", 0) > 0),
            "start_accuracy": next(
                (r.get("accuracy") for r in retrain_rounds if r.get("round") == 0), None
            ),
            **retrain.timings_s,
        },
        "bytes_shipped": shipped["full_bytes_shipped"],
        "bytes": shipped,
        "rollouts": {
            name: {
                "rollout_id": st.rollout_id,
                "duration_s": (st.finished_at or 0) - (st.started_at or 0),
                "state": st.state,
            }
            for name, st in rollouts.items()
        },
        "drift_to_recovered_s": drift_to_rollout_s,
        "dashboard": dashboard,
        # where the wall time went, phase by phase (simulations.demo.phases.PHASES)
        "phases_s": dict(phases),
        "wall_s": wall_s,
    }


def _rounds(registry: Any, run_id: str) -> list[dict[str, Any]]:
    """The run's federated rounds as the registry recorded them (round 0: before training)."""
    from cloud_hub.registry import admin

    with registry.session() as s:
        rounds: list[dict[str, Any]] = admin.get_training_run(s, run_id).metrics.get("rounds") or []
    return rounds


def write_run(run_dir: Path, result: DemoResult, *, plots: bool) -> None:
    """``summary.json``, ``timeline.json`` and (with ``plots``) the PNG plots."""
    from simulations.demo.report import write_plots

    (run_dir / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
    (run_dir / "timeline.json").write_text(json.dumps(result.timeline))
    if plots:
        write_plots(run_dir, result.summary, result.timeline)
