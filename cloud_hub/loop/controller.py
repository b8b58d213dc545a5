"""The retraining controller: watches the registry, applies the policy, runs the pipeline.

:meth:`RetrainController.tick` looks at every watched device class once: it builds the
class's health from the registry (online devices, drift reports for the versions they run,
earlier runs), asks :func:`~cloud_hub.loop.policy.decide_retraining`, and runs a
:class:`~cloud_hub.loop.pipeline.RetrainPipeline` for a positive decision. The last decision
per class is kept for display (``decisions``). :meth:`run` ticks until a stop event.
Manual requests (``cloud-hub retrain``) go through the same policy (cooldown and budget
still apply) via :meth:`request`; :meth:`approve` starts a rollout that waits for approval.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from cloud_hub.errors import HubError
from cloud_hub.loop.health import class_health
from cloud_hub.loop.pipeline import RetrainOutcome, RetrainPipeline
from cloud_hub.loop.policy import RetrainDecision, decide_retraining
from cloud_hub.loop.run_states import RunState, RunStep, next_run_state, rollout_end_step
from cloud_hub.registry import admin, rollouts

__all__ = ["RetrainController"]

log = logging.getLogger(__name__)


class RetrainController:
    """Drift/accuracy/schedule/manual triggers → retraining runs, one at a time."""

    def __init__(
        self,
        pipeline: RetrainPipeline,
        device_classes: Sequence[str],
        *,
        interval_s: float = 2.0,
        clock: Callable[[], float] = time.time,
        on_outcome: Callable[[RetrainOutcome], None] | None = None,
    ) -> None:
        if not device_classes:
            raise HubError("the controller needs at least one device class to watch")
        self.pipeline = pipeline
        self.device_classes = tuple(device_classes)
        self.interval_s = interval_s
        self.clock = clock
        self.on_outcome = on_outcome
        self.decisions: dict[str, RetrainDecision] = {}
        self.outcomes: list[RetrainOutcome] = []
        self._manual: set[str] = set()
        self._lock = threading.Lock()

    @property
    def registry(self):  # type: ignore[no-untyped-def]
        return self.pipeline.registry

    def assess(self, device_class: str, *, manual: bool = False) -> RetrainDecision:
        """The policy's decision for ``device_class`` now (pure read of the registry).

        With ``LoopConfig.train_with_class_peers`` the cohort of a positive decision also
        gets the class's other online devices: the new model is rolled out to the whole
        class, so it must keep serving the distribution the others still see (trained on
        the drifted devices alone it forgets it).
        """
        config = self.pipeline.config
        with self.registry.session() as s:
            health = class_health(
                s,
                device_class=device_class,
                model_name=config.model_name,
                policy=config.policy,
                manual=manual,
            )
        return decide_retraining(
            config.policy, health, self.clock(), class_peers=config.train_with_class_peers
        )

    def request(self, device_class: str) -> None:
        """Ask for a manual run of ``device_class`` at the next tick."""
        with self._lock:
            self._manual.add(device_class)

    def sync_runs(self) -> int:
        """Close the runs whose rollout ended: ``deployed`` when it finished, else
        ``rollout_<state>``; returns how many changed."""
        changed = 0
        with self.registry.session() as s:
            runs = admin.list_training_runs(
                s, model_name=self.pipeline.config.model_name, limit=100
            ).items
            for run in runs:
                rid = run.config.get("rollout_id")
                if run.state != RunState.ROLLING_OUT or not rid:
                    continue
                found = rollouts.find_rollout(s, str(rid))
                step = None if found is None else rollout_end_step(found.state)
                if step is None:
                    continue
                state = next_run_state(run.state, step)
                admin.update_training_run(
                    s, run.run_id, state=state.value, finished_at=self.clock(), now=self.clock()
                )
                changed += 1
        return changed

    def tick(self) -> list[RetrainOutcome]:
        """One pass over the watched classes; returns the runs it made."""
        self.sync_runs()
        made: list[RetrainOutcome] = []
        for device_class in self.device_classes:
            with self._lock:
                manual = device_class in self._manual
                self._manual.discard(device_class)
            decision = self.assess(device_class, manual=manual)
            previous = self.decisions.get(device_class)
            self.decisions[device_class] = decision
            if previous is None or previous.reason != decision.reason:
                log.info("retrain %s: %s", device_class, decision.reason)
            if not decision.retrain:
                continue
            outcome = self.pipeline.run(
                device_class, decision.cohort, trigger=decision.trigger, reason=decision.reason
            )
            made.append(outcome)
            self.outcomes.append(outcome)
            if self.on_outcome is not None:
                self.on_outcome(outcome)
        return made

    def run(self, stop: threading.Event) -> None:
        """Tick every ``interval_s`` until ``stop`` is set (:meth:`abort` ends a run early)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop keeps watching; the failure is in the log
                log.exception("retraining controller tick failed")
            stop.wait(self.interval_s)

    def abort(self) -> None:
        """End a run on the devices now (the hub is stopping): the Deployment Engine run
        stops and the pipeline records the run as failed."""
        if self.pipeline.deployment is not None:
            self.pipeline.deployment.abort()

    def approve(self, run_id: str) -> str:
        """Start the rollout of a run that waits for approval; returns the rollout id."""
        if self.pipeline.rollouts is None:
            raise HubError("no rollout service to start the rollout with")
        with self.registry.session() as s:
            run = admin.get_training_run(s, run_id)
        if run.state != RunState.AWAITING_APPROVAL:
            raise HubError(f"training run {run_id} is {run.state}, not awaiting approval")
        rollout_id = str(run.config.get("rollout_id") or "")
        if not rollout_id:
            raise HubError(f"training run {run_id} has no rollout")
        self.pipeline.rollouts.start(rollout_id)
        with self.registry.session() as s:
            admin.update_training_run(
                s,
                run_id,
                state=next_run_state(run.state, RunStep.APPROVED).value,
                detail=f"{run.detail}; approved",
                finished_at=self.clock(),
                now=self.clock(),
            )
        return rollout_id
