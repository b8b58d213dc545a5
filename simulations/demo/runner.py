"""The one-command closed-loop demo (``cloud-hub demo``) and its smaller benchmark variant.

:func:`run_demo` reads as its steps (each in :mod:`simulations.demo.steps`), printed as they
happen:

1. hub — embedded broker (Mosquitto, else amqtt), key store, the hub in-process (SQLite
   registry, MQTT ingest, rollout engine, REST API + dashboard on uvicorn);
2. fleet — N device processes, each with its own non-IID labelled history;
3. loop — the retraining pipeline (hub-held validation/calibration sets, policy, engine);
4. initial model — federated training with SecAgg+ over the whole fleet's sample stores,
   compression for the class profile, signed bundle, staged rollout (canary → waves);
5. serving — the driver streams inputs to every device's ``/predict`` and labels to
   ``/feedback`` (accuracy measured on the answers);
6. drift — the ``site=plant-3`` devices see shifted sensors; their drift detectors report
   against the bundle's reference statistics; the controller's policy triggers retraining
   with those devices, the candidate beats the champion, it is bundled (+ deltas) and rolled
   out in stages;
7. recovery — accuracy on the drifted devices recovers; the summary is written.

Each step is timed as a phase (:mod:`simulations.demo.phases`); the summary's ``phases_s``
says where the wall time went. Everything started is stopped in ``finally`` (device process groups, hub threads, broker),
and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simulations.demo import steps
from simulations.demo.config import DemoConfig, DemoResult
from simulations.demo.stream import serve
from simulations.demo.summary import phase_accuracy

__all__ = ["DemoConfig", "DemoResult", "run_demo"]


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the whole loop; returns the summary (also written to ``out_dir``)."""
    out = Path(config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run = steps.DemoRun(
        config=config,
        run_dir=out / f"run-{time.strftime('%Y%m%dT%H%M%S')}",
        say=steps.Progress(config.quiet),
    )
    phase = run.phases.phase  # where the time goes: the summary's phases_s
    with _signals_raise():
        try:
            with phase("hub_start"):
                steps.start_hub(run)  # 1
            with phase("fleet_start"):
                steps.start_fleet(run)  # 2
            with phase("initial_training"):
                pipeline = steps.build_pipeline(run)  # 3
                first = steps.train_initial_model(run, pipeline)  # 4
            with phase("initial_rollout"):
                v1_rollout = steps.roll_out_initial_model(run, first)
            with phase("serve_before_drift"):
                acc_before = serve(run, "before_drift", config.steps_before_drift)  # 5
            run.say(f"serve: accuracy before drift {acc_before:.3f} (plant-3 devices)")
            controller, retrain_rollout, recovered_s = steps.retrain_on_drift(run, pipeline)  # 6
            acc_after_drift = phase_accuracy(run.timeline, "after_drift", drifted=True)
            assert run.controller_thread is not None
            with phase("serve_after_retrain"):  # 7, while the rollout reaches the other sites
                done = steps.rollout_finished(run, retrain_rollout)
                acc_after = serve(run, "after_retrain", config.steps_after_retrain, until=done)
                v2_rollout = steps.wait_rollout(run, retrain_rollout, 60)
                run.controller_thread.join(timeout=30)
            return steps.write_summary(
                run,
                controller=controller,
                first=first,
                rollouts={"initial": v1_rollout, "retrain": v2_rollout},
                acc=(acc_before, acc_after_drift, acc_after),
                recovered_s=recovered_s,
            )
        finally:
            run.close()


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, so every ``finally`` runs."""

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
