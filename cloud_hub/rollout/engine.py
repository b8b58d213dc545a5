"""The rollout engine: the I/O shell around the pure state table, planner and gates.

:class:`RolloutService` is what the REST API, the CLI and the closed loop call: the
commands of :mod:`cloud_hub.rollout.commands` (which need no engine) and the loop below. All state
lives in the registry (rollouts, stages, per-device targets), so any number of restarts —
including ``kill -9`` between any two statements — resume every rollout where it was:

- every step is a transaction over the registry; a transition is written with the
  rollout's ``revision`` (optimistic concurrency), so two engines never both advance it;
- an intent is written before a command is published (target ``deploying`` /
  ``rollback_pending``) and confirmed after (``sent`` / ``rollback_sent``); after a crash the
  intents still open are published again, which devices handle idempotently;
- outcomes are derived from what devices reported (status, events, telemetry), never from
  what the engine believes it did.

:meth:`RolloutService.tick` advances every live rollout one step: adopt devices that joined
the target (continuous deployment), resolve install outcomes, deploy to the due devices of
the current stage that are online (offline ones are retried when they return), judge the
stage's gate and promote, or roll the stage back with a signed rollback order.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from cloud_hub.errors import HubConfigError, HubError
from cloud_hub.registry import rollouts
from cloud_hub.registry.database import Registry
from cloud_hub.registry.errors import ConflictError
from cloud_hub.rollout._steps import RolloutSteps
from cloud_hub.rollout.commands import RolloutCommands
from cloud_hub.rollout.delivery import RollbackSigner, RolloutDelivery
from cloud_hub.rollout.state import (
    RolloutState,
)
from cloud_hub.rollout.targets import (
    TargetState,
)
from shared.errors import FedfleetError

__all__ = ["EngineConfig", "RolloutService"]

log = logging.getLogger(__name__)

S = RolloutState
T = TargetState
_LIVE = (S.CANARY, S.WAVE, S.PAUSED, S.DONE, S.ROLLING_BACK, S.ROLLED_BACK)


@dataclass(frozen=True)
class EngineConfig:
    """Engine limits. ``tick_interval_s`` is how often :meth:`RolloutService.run` ticks."""

    tick_interval_s: float = 1.0
    max_attempts: int = 5
    rollback_valid_hours: float = 24.0
    max_live_rollouts: int = 1000

    def __post_init__(self) -> None:
        if not 0.01 <= self.tick_interval_s <= 3600:
            raise HubConfigError("engine tick_interval_s must be within [0.01, 3600]")
        if not 1 <= self.max_attempts <= 100:
            raise HubConfigError("engine max_attempts must be within [1, 100]")
        if not 0 < self.rollback_valid_hours <= 720:
            raise HubConfigError("engine rollback_valid_hours must be within (0, 720]")
        if not 1 <= self.max_live_rollouts <= 100_000:
            raise HubConfigError("engine max_live_rollouts must be within [1, 100000]")


class RolloutService(RolloutCommands):
    """Create, drive and observe staged rollouts stored in the registry: the operator's
    :class:`~cloud_hub.rollout.commands.RolloutCommands` plus the loop that delivers them."""

    def __init__(
        self,
        registry: Registry,
        delivery: RolloutDelivery,
        signer: RollbackSigner,
        *,
        config: EngineConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._wake = threading.Event()
        super().__init__(registry, clock=clock, on_change=self._wake.set)
        self.delivery = delivery
        self.signer = signer
        self.config = config or EngineConfig()
        self._steps = RolloutSteps(
            registry, delivery, signer, self.config, clock, wake=self._wake.set
        )

    # ---- the loop -----------------------------------------------------------------------

    def tick(self) -> int:
        """Advance every live rollout one step; returns how many were looked at."""
        with self.registry.session() as s:
            ids = rollouts.live_rollout_ids(  # newest first: never starved
                s, [st.value for st in _LIVE], limit=self.config.max_live_rollouts
            )
        for rid in ids:
            try:
                self._steps.tick_one(rid)
            except ConflictError:
                log.debug("rollout %s changed concurrently; next tick", rid)
            except (HubError, FedfleetError) as exc:
                log.warning("rollout %s: tick failed: %s", rid, exc)
        return len(ids)

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set (also woken early by :meth:`start`)."""
        while not stop.is_set():
            try:
                self.tick()
            except Exception:  # the loop must outlive one bad tick (e.g. the DB restarting)
                log.exception("rollout tick failed")
            self._wake.wait(self.config.tick_interval_s)
            self._wake.clear()

    def wake(self) -> None:
        """Tick as soon as possible (e.g. after an ingest batch)."""
        self._wake.set()
