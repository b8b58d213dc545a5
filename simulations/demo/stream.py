"""The driver's stream: inputs to every device's ``/predict``, labels to ``/feedback``, each
answer's accuracy on the demo's timeline.

Every step sends one batch to every device at once. While the hub retrains, the stream slows
to one step per ``DemoConfig.training_stream_pace_s``: the devices' serving and the driver
would otherwise take the cores the federated training runs on, and the timeline needs only
a few points to show the drifted devices' accuracy staying low.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from simulations.demo.config import CLASS
from simulations.demo.summary import phase_accuracy

if TYPE_CHECKING:
    from simulations.demo.steps import DemoRun

__all__ = ["serve", "stream_step", "stream_until_retrained"]


def serve(
    run: DemoRun,
    phase: str,
    steps: int,
    *,
    until: Callable[[], bool] | None = None,
    timeout_s: float = 60.0,
) -> float:
    """``steps`` rounds of inputs and labels to every device, then more until ``until()``
    holds (at most ``timeout_s``); the drifted devices' accuracy in ``phase``."""
    drift_on = phase != "before_drift"
    for _ in range(steps):
        stream_step(run, phase, drift_on)
    deadline = time.monotonic() + timeout_s
    while until is not None and not until() and time.monotonic() < deadline:
        stream_step(run, phase, drift_on)
    return phase_accuracy(run.timeline, phase, drifted=True)


def stream_step(run: DemoRun, phase: str, drift_on: bool) -> None:
    """One batch to every device (drifted inputs on the drifted ones when ``drift_on``)."""
    assert run.fleet is not None
    answers = run.fleet.predict_and_label_all(run.config.batch, drift=drift_on)
    t = round(time.monotonic() - run.serving_t0, 3)
    for device, (acc, version) in zip(run.fleet.devices, answers, strict=True):
        run.timeline.append(
            {
                "t": t,
                "device": device.device_id,
                "drifted": device.drifted,
                "phase": phase,
                "accuracy": acc,
                "version": version,
            }
        )


def stream_until_retrained(
    run: DemoRun, controller: Any, *, deadline: float
) -> tuple[int, str] | None:
    """Stream drifted inputs until the retrained version serves on every drifted device;
    returns (version, rollout id), or ``None`` at ``deadline``."""
    from cloud_hub.errors import HubError

    assert run.fleet is not None
    drifted = [d for d in run.fleet.devices if d.drifted]
    target: tuple[int, str] | None = None
    while time.monotonic() < deadline:
        step_started = time.monotonic()
        stream_step(run, "after_drift" if target is None else "rolling_out", True)
        if target is None and controller.outcomes:
            o = controller.outcomes[-1]
            run.say(
                f"retrain: drift triggered run {o.run_id} ({o.state}): "
                f"v{o.version} validation accuracy {o.candidate_accuracy or 0:.3f} vs "
                f"champion {o.champion_accuracy or 0:.3f}; bundle {o.bundle_bytes} B, "
                f"delta {min(o.delta_bundles.values(), default=0)} B"
            )
            if o.state != "rolling_out":
                raise HubError(f"retraining run {o.run_id} ended {o.state}: {o.detail}")
            target = (o.version, o.rollout_id)
        if target is not None and all(run.fleet.serving_version(d) == target[0] for d in drifted):
            return target
        if target is None and _retraining(controller):
            pause = run.config.training_stream_pace_s - (time.monotonic() - step_started)
            time.sleep(max(0.0, pause))
    return None


def _retraining(controller: Any) -> bool:
    """The controller decided to retrain and its run has not ended yet."""
    decision = controller.decisions.get(CLASS)
    return decision is not None and decision.retrain and not controller.outcomes
