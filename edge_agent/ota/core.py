"""The OTA updater's state and the one way it changes: :meth:`UpdaterCore._step` applies a
trigger of :mod:`edge_agent.ota.machine`, queues the step's events and persists the record.

Also the state around deployments: remembered deployment ids, the verification policy,
and the anti-rollback floor (R5) with its single-use rollback orders. Every call comes from
the agent's single worker thread, so nothing here needs a lock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.config import AgentLimits, OtaTimeouts
from edge_agent.errors import InstallError
from edge_agent.ota.events import DeploymentEvents
from edge_agent.ota.floor import AntiRollbackFloor, FloorStore
from edge_agent.ota.health import HealthCheck, default_health_check, run_health_check
from edge_agent.ota.machine import Deployment, Trigger, phase_timeouts, transition
from edge_agent.ota.persist import OtaState, StateStore
from edge_agent.ota.slots import SLOT_NAMES, InstalledSlot, SlotStore
from edge_agent.ota.transfer import ChunkTransfer
from edge_agent.ota.trusted import TrustedStore
from shared.bundle import BundleLimits, RollbackOrder, VerifyPolicy
from shared.messages import Message
from shared.refusal_log import RefusalLog
from shared.signing import TrustRoot, parse_time
from shared.topics import TopicScheme

__all__ = ["ActiveChanged", "Emit", "UpdaterCore"]

log = logging.getLogger("edge_agent.ota.updater")

Emit = Callable[[Message], None]
ActiveChanged = Callable[[InstalledSlot | None], None]


class UpdaterCore:
    """State, stores and step bookkeeping shared by the updater's parts."""

    def __init__(
        self,
        *,
        device_id: str,
        device_class: str,
        state_dir: Path,
        trust: TrustRoot,
        topics: TopicScheme,
        emit: Emit,
        subscribe: Callable[[str], None],
        unsubscribe: Callable[[str], None],
        timeouts: OtaTimeouts | None = None,
        limits: AgentLimits | None = None,
        health_check: HealthCheck | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.device_id = device_id
        self.device_class = device_class
        self.trust = trust
        self.topics = topics
        self.timeouts = timeouts or OtaTimeouts()
        self.limits = limits or AgentLimits()
        self.health_check: HealthCheck = health_check or default_health_check()
        self.events = DeploymentEvents(device_id, emit)
        self.refusals = RefusalLog(log)  # chunk frames from the broker are untrusted
        self._emit = emit
        self._clock = clock
        self._phase_timeouts = phase_timeouts(
            download_s=self.timeouts.download_s,
            verify_s=self.timeouts.verify_s,
            install_s=self.timeouts.install_s,
            health_s=self.timeouts.health_s,
            rollback_s=self.timeouts.rollback_s,
        )
        self.store = StateStore(state_dir)
        # R10: the keyring floor lives in its own record; a corrupt ota_state.json cannot lower it
        self.trusted = TrustedStore(state_dir)
        self.slots = SlotStore(state_dir)
        self.state: OtaState = self.store.load()
        self.floor_store = FloorStore(state_dir)
        self.floor: AntiRollbackFloor = self.floor_store.load(fallback=self._derived_floor())
        self.active_changed: list[ActiveChanged] = []
        self.transfer = ChunkTransfer(
            device_id=device_id,
            root=state_dir / "downloads",
            topics=topics,
            limits=self.limits,
            retry_s=self.timeouts.chunk_retry_s,
            emit=emit,
            subscribe=subscribe,
            unsubscribe=unsubscribe,
            clock=clock,
        )

    def _dep(self) -> Deployment:
        dep = self.state.deployment
        if dep is None:
            raise InstallError("no deployment in progress")
        return dep

    def _save(self, dep: Deployment) -> None:
        self.state = replace(self.state, deployment=dep)
        self.store.save(self.state)

    def _step(
        self,
        trigger: Trigger,
        *,
        reason: str = "",
        event: str | None = None,
        detail: str = "",
        data: dict[str, Any] | None = None,
        terminal_event: bool = True,
        event_at: float | None = None,
        **changes: Any,
    ) -> None:
        """Apply ``trigger`` and persist. ``terminal_event=False``: the step's own event is the
        only report of a terminal phase (a delta fallback is no failure of the rollout). The step's event (and the terminal event, if the
        new phase is terminal) go to the outbox *before* the new state is saved: a kill in
        between repeats the step after restart and reports it again (at least once)."""
        dep = transition(
            self._dep(),
            trigger,
            now=self._clock(),
            timeouts=self._phase_timeouts,
            reason=reason,
            **changes,
        )
        if event is not None:
            self.events.step(event, dep, detail=detail, data=data, at=event_at)
        if dep.terminal and terminal_event:
            self.events.terminal(dep)
        self._save(dep)
        log.info(
            "deployment %s: %s -> %s %s", dep.deployment_id, trigger.value, dep.phase.value, reason
        )

    def _finish(self) -> None:
        """Delete the download of a deployment that reached a terminal phase (also one left
        on disk by an earlier process)."""
        self.transfer.clear()

    def _supersede(self, new_id_: str, *, keep_bundle: str | None) -> None:
        dep = self.state.deployment
        if dep is not None and not dep.terminal:
            self._step(Trigger.SUPERSEDED, reason=f"superseded by {new_id_}")
        self.transfer.release(keep=keep_bundle)

    def _duplicate(self, deployment_id: str) -> bool:
        if deployment_id in self.state.recent_deployments:
            log.info("duplicate command for deployment %s ignored", deployment_id)
            return True
        return False

    def _remember(self, deployment_id: str) -> None:
        self.state = self.state.remember(deployment_id)
        self.store.save(self.state)

    def _policy(self) -> VerifyPolicy:
        lim = self.limits.max_bundle_bytes
        return VerifyPolicy(
            trust=self.trust,
            device_class=self.device_class,
            now=datetime.fromtimestamp(self._clock(), tz=timezone.utc),
            installed_versions=self.floor.offer_floor(),  # R5: the class's high-water mark
            min_keyring_version=self.trusted.keyring_floor,
            limits=BundleLimits(max_artifact_bytes=lim, max_total_bytes=lim),
            device_id=self.device_id,
            active_bundle_id=active.meta.bundle_id if (active := self.slots.active()) else None,
        )

    def _derived_floor(self) -> AntiRollbackFloor:
        """The floor when its record is missing (first start, older agent) or unreadable:
        the active slot's model at the highest version either slot holds of it (a version
        left by a rollback is still in the other slot) or the deployment record knew."""
        active = self.slots.active()
        if active is None:
            return AntiRollbackFloor()
        model = active.meta.model_name
        versions = [self.state.installed_versions.get(model, 0)]
        for name in SLOT_NAMES:
            slot = self.slots.read(name)
            if slot is not None and slot.meta.model_name == model:
                versions.append(slot.meta.version)
        return AntiRollbackFloor(model_name=model, version=max(versions))

    def _save_floor(self, floor: AntiRollbackFloor) -> None:
        if floor != self.floor:
            self.floor_store.save(floor)
            self.floor = floor

    def _use_order(self, order: RollbackOrder) -> None:
        """R5: refuse an order this device already used (``ReplayError``); else remember it
        until it expires, durably, before it takes effect."""
        now = self._clock()
        self.floor.check_unused(order.order_id, now=now)
        expires = parse_time(order.expires, "rollback order expires").timestamp()
        self._save_floor(self.floor.use(order.order_id, expires=expires, now=now))

    def _sync_installed_versions(self) -> None:
        """The active slot is the truth for its model's installed version."""
        active = self.slots.active()
        if active is None:
            return
        versions = dict(self.state.installed_versions)
        if versions.get(active.meta.model_name) != active.meta.version:
            versions[active.meta.model_name] = active.meta.version
            self.state = replace(self.state, installed_versions=versions)
            self.store.save(self.state)

    def _notify_active(self) -> None:
        active = self.slots.active()
        for callback in list(self.active_changed):
            try:
                callback(active)
            except Exception:  # a listener must not break the install lifecycle
                log.exception("active-model listener failed")

    def _check_health(self, slot: InstalledSlot) -> None:
        run_health_check(self.health_check, slot, timeout_s=self.timeouts.health_s)
