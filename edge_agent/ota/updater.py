"""The OTA shell: drives :mod:`edge_agent.ota.machine` with real files, chunks and reports.

Every call comes from the agent's single worker thread, so the updater needs no locks.

Crash safety rests on three rules: each transition is persisted (atomically) before the
side effect that follows it; a step's event goes to the outbox *before* the transition that
records it, so a kill in between repeats the step and reports it again (at least once, never
lost); and the ``active`` slot pointer is the commit point. Each deployment ends in a
terminal event: ``committed``, ``rolled_back`` or ``failed`` (an offer refused before
download gets ``rejected``).

Parts: :mod:`~edge_agent.ota.offer` (checks of offers and downloads),
:mod:`~edge_agent.ota.transfer` (chunks), :mod:`~edge_agent.ota.slots` (A/B install),
:mod:`~edge_agent.ota.health` (smoke test), :mod:`~edge_agent.ota.events` (reports).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.config import AgentLimits, OtaTimeouts
from edge_agent.errors import InstallError
from edge_agent.ota.events import EVENT_CHUNKS_REPAIR, DeploymentEvents, describe
from edge_agent.ota.floor import AntiRollbackFloor, FloorStore
from edge_agent.ota.health import HealthCheck, default_health_check, run_health_check
from edge_agent.ota.machine import (
    Deployment,
    Phase,
    RecoveryAction,
    Trigger,
    new_deployment,
    phase_timeouts,
    recovery_action,
    timed_out,
    transition,
)
from edge_agent.ota.offer import (
    OfferFieldError,
    check_geometry,
    check_offer_ids,
    corrupt_chunks,
    verify_command,
    verify_download,
)
from edge_agent.ota.persist import OtaState, StateStore
from edge_agent.ota.slots import SLOT_NAMES, InstalledSlot, SlotMeta, SlotStore
from edge_agent.ota.transfer import ChunkTransfer
from edge_agent.ota.trusted import TrustedStore
from shared.bundle import (
    BundleLimits,
    RollbackOrder,
    VerifiedBundle,
    VerifyPolicy,
    parse_rollback_order,
    resolve_deltas,
    verify_rollback_order,
)
from shared.chunks import parse_chunk_frame
from shared.errors import BundleError, ProtocolError
from shared.messages import (
    ChunkRequest,
    DeployCommand,
    EventKind,
    InstalledModel,
    Message,
    RollbackCommand,
)
from shared.refusal_log import RefusalLog
from shared.signing import TrustRoot, parse_time
from shared.topics import TopicScheme

__all__ = ["OtaStatus", "OtaUpdater"]

log = logging.getLogger(__name__)
# recovery actions that redo the interrupted step (each spends one of ``max_resumes``)
_REDO_ACTIONS = frozenset(
    {
        RecoveryAction.RESUME_DOWNLOAD,
        RecoveryAction.VERIFY,
        RecoveryAction.INSTALL,
        RecoveryAction.HEALTH_CHECK,
    }
)

Emit = Callable[[Message], None]
ActiveChanged = Callable[[InstalledSlot | None], None]


@dataclass(frozen=True)
class OtaStatus:
    ota_state: str
    deployment_id: str | None
    installed: InstalledModel | None


class OtaUpdater:
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

    # ------------------------------------------------------------------ queries
    @property
    def deployment(self) -> Deployment | None:
        return self.state.deployment

    def status(self) -> OtaStatus:
        dep = self.state.deployment
        active = self.slots.active()
        return OtaStatus(
            ota_state=dep.phase.value if dep else Phase.IDLE.value,
            deployment_id=dep.deployment_id if dep else None,
            installed=active.meta.installed_model() if active else None,
        )

    def subscriptions(self) -> list[str]:
        """Topics to (re)subscribe on connect besides the device's own."""
        dep = self.state.deployment
        if dep is not None and dep.phase == Phase.DOWNLOADING:
            return [self.topics.bundle_chunks(dep.bundle_id)]
        return []

    # ------------------------------------------------------------------ lifecycle
    def recover(self) -> None:
        """Continue whatever a previous process left (call once, before receiving)."""
        dep = self.state.deployment
        self._sync_installed_versions()
        self.transfer.remove_stale(dep.bundle_id if dep and _needs_download(dep) else None)
        action = recovery_action(
            dep, active_slot=self.slots.active_name(), max_resumes=self.limits.max_resumes
        )
        if dep is None or action == RecoveryAction.NOTHING:
            return
        log.info("recovering deployment %s in %s: %s", dep.deployment_id, dep.phase.value, action)
        if action in _REDO_ACTIONS:  # one more restart spent on this step
            deadline = self._clock() + self._phase_timeouts[dep.phase]
            self._save(replace(dep, resumes=dep.resumes + 1, deadline=deadline))
        recover_by = {
            RecoveryAction.FAIL: self._give_up,
            RecoveryAction.ROLL_BACK: self._give_up,
            RecoveryAction.FINISH_COMMIT: lambda: self._commit(resume=True),
            RecoveryAction.RESUME_DOWNLOAD: self._resume_download,
            RecoveryAction.VERIFY: self._resume_verify,
            RecoveryAction.INSTALL: self._resume_install,
            RecoveryAction.HEALTH_CHECK: self._health_and_commit,
        }
        recover_by[action]()

    def _give_up(self) -> None:
        """Restarts used up (or a rollback was under way): make the previous slot active."""
        dep = self._dep()
        if dep.phase == Phase.ROLLING_BACK:
            self._roll_back()
            return
        self._abort(Trigger.ERROR, f"interrupted {dep.resumes + 1} times in {dep.phase.value}")

    def _resume_download(self) -> None:
        if self._open_download() and self.transfer.complete:
            self._verify_and_install()

    def _resume_verify(self) -> None:
        if self._open_download():
            self._verify_and_install()

    def _resume_install(self) -> None:
        if not self._open_download():
            return
        try:
            verified = self._reverify()
            artifacts = self._full_artifacts(verified)
        except (BundleError, InstallError, OSError) as exc:
            self._step(Trigger.ERROR, reason=f"cannot resume install: {describe(exc)}")
            self._roll_back()
            return
        self._install(verified, artifacts)

    def close(self) -> None:
        self.transfer.close()

    # ------------------------------------------------------------------ commands
    def handle_deploy(self, cmd: DeployCommand) -> None:
        try:
            check_offer_ids(cmd)
        except OfferFieldError as exc:
            self.events.rejected(None, exc)
            return
        if self._duplicate(cmd.deployment_id):
            return
        active = self.slots.active()
        if active is not None and active.meta.bundle_id == cmd.bundle_id:
            self.events.already(
                EventKind.COMMITTED, cmd.deployment_id, active.meta, "already installed"
            )
            self._remember(cmd.deployment_id)
            return
        try:
            offer = verify_command(cmd.to_dict(), self._policy())
            if offer.bundle_id != cmd.bundle_id:
                raise InstallError("offer names another bundle than its manifest")
            check_geometry(cmd, offer.manifest, limits=self.limits, topics=self.topics)
            if cmd.rollback_order is not None:  # R5: an order works once
                self._use_order(
                    verify_rollback_order(cmd.rollback_order, cmd.keyring, self._policy())
                )
        except (BundleError, InstallError) as exc:
            self.events.rejected(cmd.deployment_id, exc, bundle_id=cmd.bundle_id)
            self._remember(cmd.deployment_id)
            return
        self._supersede(cmd.deployment_id, keep_bundle=cmd.bundle_id)
        now = self._clock()
        dep = new_deployment(
            cmd.deployment_id,
            kind="deploy",
            now=now,
            bundle_id=cmd.bundle_id,
            model_name=offer.manifest.model_name,
            version=offer.manifest.version,
            command=cmd.to_dict(),
        )
        self.trusted.accept_keyring(offer.keyring, cmd.keyring)  # R10: the floor only rises
        self.state = self.state.remember(cmd.deployment_id)
        self.state = replace(self.state, deployment=dep)
        # subscribe before download_started is queued: the broker handles our SUBSCRIBE
        # before that event, so a hub that waits for it loses no fan-out chunk
        self.transfer.listen(cmd.bundle_id)
        self._step(
            Trigger.OFFER_ACCEPTED,
            event=EventKind.DOWNLOAD_STARTED,
            data={"chunks": cmd.chunk_count},
            target_slot=self.slots.inactive_name(),
            previous_slot=self.slots.active_name(),
        )
        if self._open_download() and self.transfer.complete:
            self._verify_and_install()

    def handle_rollback(self, cmd: RollbackCommand) -> None:
        try:
            check_offer_ids(cmd)
        except OfferFieldError as exc:
            self.events.rejected(None, exc)
            return
        if self._duplicate(cmd.deployment_id):
            return
        try:
            order = verify_rollback_order(cmd.order, cmd.keyring, self._policy())
            self._use_order(order)  # R5: remembered (durably) before anything else happens
        except BundleError as exc:
            self.events.rejected(cmd.deployment_id, exc)
            self._remember(cmd.deployment_id)
            return
        active = self.slots.active()
        if active is not None and _holds(active, order):
            self.events.already(
                EventKind.ROLLED_BACK, cmd.deployment_id, active.meta, "already active"
            )
            self._remember(cmd.deployment_id)
            return
        self._supersede(cmd.deployment_id, keep_bundle=None)
        dep = new_deployment(
            cmd.deployment_id,
            kind="rollback",
            now=self._clock(),
            bundle_id=order.to_bundle_id,
            model_name=order.model_name,
            version=order.to_version,
            command=cmd.to_dict(),
        )
        self.state = replace(self.state, deployment=dep).remember(cmd.deployment_id)
        self._step(
            Trigger.ROLLBACK_ORDERED,
            target_slot=self.slots.inactive_name(),
            previous_slot=self.slots.active_name(),
        )
        self._roll_back()

    def handle_chunk(self, frame: bytes) -> None:
        """A chunk frame from the fan-out or the device's repair topic (untrusted).

        Its geometry is checked here and its data written straight to disk; its data hash
        is recorded, not computed: the assembled bundle is verified against the signed
        manifest, and only if that fails (or after a restart) are the chunks re-hashed
        against their recorded hashes to find the corrupt ones (each byte hashed once)."""
        try:
            chunk = parse_chunk_frame(frame, max_chunk_size=self.limits.max_chunk_bytes)
        except ProtocolError as exc:
            self.refusals.warn("bad-chunk-frame", "dropped chunk frame: %s", exc)
            return
        dep = self.state.deployment
        if dep is None or dep.phase != Phase.DOWNLOADING or self.transfer.bundle_id is None:
            log.debug("chunk %d of %s: no download in progress", chunk.index, chunk.bundle_id[:12])
            return
        if chunk.bundle_id != self.transfer.bundle_id:
            log.debug("chunk of another bundle %s dropped", chunk.bundle_id[:12])
            return
        try:
            self.transfer.accept(chunk)
        except ProtocolError as exc:
            self.refusals.warn("unfitting-chunk", "dropped chunk %d: %s", chunk.index, exc)
            return
        except InstallError as exc:
            self._abort(Trigger.ERROR, str(exc))
            return
        if self.transfer.complete:
            self._verify_and_install()

    def tick(self) -> None:
        """Enforce deadlines and ask for missing chunks; call about once a second."""
        self.refusals.flush()
        dep, now = self.state.deployment, self._clock()
        if dep is None or dep.terminal:
            return
        if timed_out(dep, now):
            self._abort(Trigger.TIMEOUT, f"{dep.phase.value} timed out")
            return
        if dep.phase == Phase.DOWNLOADING:
            try:
                self.transfer.tick()
            except InstallError as exc:  # the download could not be synced to disk
                self._abort(Trigger.ERROR, str(exc))

    # ------------------------------------------------------------------ steps
    def _verify_and_install(self) -> None:
        self.transfer.stop_listening()
        dep = self._dep()
        if dep.phase == Phase.DOWNLOADING:
            try:
                self.transfer.sync()  # completeness must be on disk before Verifying is
            except InstallError as exc:
                self._abort(Trigger.ERROR, str(exc))
                return
            received = {"bytes_received": self.transfer.bytes_received}
            self._step(Trigger.DOWNLOAD_COMPLETE, event=EventKind.DOWNLOAD_COMPLETE, data=received)
        try:
            verified = self._reverify()
        except (BundleError, InstallError) as exc:
            if self._repair(exc):
                return
            self._step(Trigger.VERIFY_FAILED, reason=describe(exc), event=EventKind.VERIFY_FAILED)
            self._finish()
            return
        try:
            artifacts = self._full_artifacts(verified)
        except BundleError as exc:
            # a signed, intact delta that does not apply to what this device has (another
            # base, a base changed on disk): nothing is installed; ask for the full bundle
            self._delta_fallback(exc)
            return
        if self._overdue():
            return
        self._step(Trigger.VERIFIED, event=EventKind.VERIFIED)
        self._install(verified, artifacts)

    def _delta_fallback(self, exc: Exception) -> None:
        dep = self._dep()
        log.warning(
            "delta of %s not applicable (%s): asking for the full bundle", dep.bundle_id[:12], exc
        )
        self._emit(
            ChunkRequest(device_id=self.device_id, bundle_id=dep.bundle_id, indices=[], full=True)
        )
        self._step(
            Trigger.VERIFY_FAILED,
            reason=f"delta not applicable, full bundle requested: {describe(exc)}",
            event=EventKind.DELTA_FALLBACK,
            detail=describe(exc),
            terminal_event=False,
        )
        self._finish()

    def _repair(self, exc: Exception) -> bool:
        """Fetch again exactly the chunks that are missing or corrupt, if that can be told."""
        dep = self._dep()
        if self.transfer.download is None or dep.repairs >= self.limits.max_repairs:
            return False
        # a power cut can lose the map's last entries: fetch what it lacks; otherwise the
        # chunks whose bytes do not match their frame's hash, else those that do not match
        # the signed offer
        dl = self.transfer.download
        suspects = dl.missing() or dl.mismatched() or self._corrupt_chunks()
        if not suspects:
            return False
        log.warning("bundle failed verification (%s): fetching chunks %s again", exc, suspects)
        self._step(
            Trigger.REPAIR,
            event=EVENT_CHUNKS_REPAIR,
            detail=describe(exc),
            data={"chunks": len(suspects)},
            repairs=dep.repairs + 1,
        )
        self.transfer.refetch(suspects)
        return True

    def _corrupt_chunks(self) -> list[int]:
        cmd = self._dep().command
        try:
            offer = verify_command(cmd, self._policy())
        except BundleError:
            return []  # the offer itself no longer verifies: nothing to repair against
        chunk_size = int(cmd["chunk_size"])
        return corrupt_chunks(self.transfer.read_all(), cmd, offer.manifest, chunk_size)

    def _reverify(self) -> VerifiedBundle:
        dep = self._dep()
        if not self.transfer.complete or self.transfer.bundle_id != dep.bundle_id:
            raise InstallError("download incomplete")
        return verify_download(self.transfer.read_all(), dep.command, self._policy(), dep.bundle_id)

    def _full_artifacts(self, verified: VerifiedBundle) -> dict[str, bytes]:
        """The artifacts to install; a delta bundle is applied to the active slot's files
        (``DeltaBaseError`` if this device does not have the base it names)."""
        if not verified.manifest.is_delta:
            return verified.artifacts
        base: dict[str, bytes] = {}
        active = self.slots.active()
        if active is not None:
            for a in active.meta.artifacts:
                try:
                    base[str(a["name"])] = (active.path / str(a["name"])).read_bytes()
                except OSError:
                    continue
        return resolve_deltas(verified.manifest, verified.artifacts, base)

    def _install(self, verified: VerifiedBundle, artifacts: dict[str, bytes]) -> None:
        dep = self._dep()
        assert dep.target_slot is not None
        manifest = verified.manifest
        meta = SlotMeta(
            model_name=manifest.model_name,
            version=manifest.version,
            bundle_id=dep.bundle_id,
            deployment_id=dep.deployment_id,
            installed_at=self._clock(),
            artifacts=[
                {
                    "name": a.name,
                    "sha256": a.sha256,
                    "size": a.size,
                    "role": a.role,
                    "media_type": a.media_type,
                }
                for a in manifest.artifacts
            ],
        )
        try:
            self.slots.write(dep.target_slot, artifacts, meta, dep.command["manifest"])
        except (OSError, InstallError) as exc:
            self._step(Trigger.INSTALL_FAILED, reason=f"install failed: {exc}")
            self._roll_back()
            return
        if self._overdue():
            return
        self._step(Trigger.INSTALLED, event=EventKind.INSTALLED, data={"slot": dep.target_slot})
        # the slot holds the artifacts now and no later step reads the download: free the
        # disk before the health check (a kill during it must not leave the bundle behind)
        self.transfer.clear()
        self._health_and_commit()

    def _health_and_commit(self) -> None:
        dep = self._dep()
        slot = self.slots.read(dep.target_slot)
        try:
            if slot is None or slot.meta.bundle_id != dep.bundle_id:
                raise InstallError("installed slot is missing or incomplete")
            self._check_health(slot)
        except InstallError as exc:
            self._step(
                Trigger.HEALTH_FAILED,
                reason=f"health check failed: {exc}",
                event=EventKind.HEALTH_FAILED,
                detail=str(exc),
                # e.g. the golden batch's measured agreement and logit error
                data=dict(getattr(exc, "figures", None) or {}),
            )
            self._roll_back()
            return
        assert dep.target_slot is not None
        self.slots.switch(dep.target_slot)  # the commit point
        self._commit(resume=False)

    def _commit(self, *, resume: bool) -> None:
        dep = self._dep()
        self._save_floor(self.floor.committed(dep.model_name, dep.version))
        versions = dict(self.state.installed_versions)
        versions[dep.model_name] = dep.version
        self.state = replace(self.state, installed_versions=versions)
        detail = "commit completed after restart" if resume else ""
        self._step(Trigger.HEALTH_OK, event=EventKind.HEALTH_OK, detail=detail)
        self._finish()
        self._notify_active()

    def _roll_back(self) -> None:
        """Phase RollingBack: make the right slot active, then RolledBack or Failed."""
        dep = self._dep()
        if dep.kind == "rollback":
            slot = self.slots.read(dep.target_slot)
            order = parse_rollback_order(dep.command.get("order"))
            if slot is None or not _holds(slot, order):
                held = "nothing" if slot is None else f"version {slot.meta.version}"
                self._step(
                    Trigger.ROLLBACK_FAILED,
                    reason=f"previous slot holds {held}, not version {dep.version} "
                    f"({dep.bundle_id[:12]})",
                )
                self._finish()
                return
            try:
                self._check_health(slot)
            except InstallError as exc:
                self._step(Trigger.ROLLBACK_FAILED, reason=f"previous model unhealthy: {exc}")
                self._finish()
                return
            assert dep.target_slot is not None
            self.slots.switch(dep.target_slot)
            self._save_floor(self.floor.rolled_back_to(dep.model_name, dep.version))
            versions = dict(self.state.installed_versions)
            versions[dep.model_name] = dep.version
            self.state = replace(self.state, installed_versions=versions)
            self._step(Trigger.ROLLBACK_DONE, reason="rolled back by signed order")
            self._finish()
            self._notify_active()
            return
        if self.slots.active_name() != dep.previous_slot:
            self.slots.switch(dep.previous_slot)
            self._notify_active()
        self._sync_installed_versions()
        self._step(Trigger.ROLLBACK_DONE, reason=dep.reason or "rolled back")
        self._finish()

    # ------------------------------------------------------------------ helpers
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
            self.events.step(event, dep, detail=detail, data=data)
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

    def _overdue(self) -> bool:
        dep = self._dep()
        if not timed_out(dep, self._clock()):
            return False
        self._abort(Trigger.TIMEOUT, f"{dep.phase.value} timed out")
        return True

    def _open_download(self) -> bool:
        dep = self._dep()
        try:
            self.transfer.open(
                dep.bundle_id,
                total_size=int(dep.command["total_size"]),
                chunk_size=int(dep.command["chunk_size"]),
            )
        except InstallError as exc:  # e.g. disk full: the deployment ends, the agent does not
            self._abort(Trigger.ERROR, str(exc))
            return False
        return True

    def _abort(self, trigger: Trigger, reason: str) -> None:
        """End the deployment through ``trigger``: roll back if something was installed."""
        self._step(trigger, reason=reason)
        if self._dep().phase == Phase.ROLLING_BACK:
            self._roll_back()
        else:
            self._finish()

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

    # ------------------------------------------------------------------ R5 floor and orders
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


def _holds(slot: InstalledSlot, order: RollbackOrder) -> bool:
    """Whether ``slot`` holds the version ``order`` leads to (by bundle id, or by content
    whichever bundle delivered it)."""
    model = next((a for a in slot.meta.artifacts if a.get("role") == "model"), {})
    return order.names_target(
        model_name=slot.meta.model_name,
        version=slot.meta.version,
        bundle_id=slot.meta.bundle_id,
        sha256=str(model.get("sha256", "")),
    )


def _needs_download(dep: Deployment) -> bool:
    """Whether a deployment's next steps still read its download (until it is installed)."""
    return dep.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING)
