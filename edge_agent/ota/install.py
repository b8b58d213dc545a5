"""From a complete download to a committed model: verify (or repair), install into the
inactive A/B slot, health-check, switch (the commit point); and every way back (abort,
roll back to the previous slot or to the version a signed order names).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import replace

from edge_agent.errors import InstallError
from edge_agent.ota.core import UpdaterCore
from edge_agent.ota.events import EVENT_CHUNKS_REPAIR, describe
from edge_agent.ota.machine import Phase, Trigger, timed_out
from edge_agent.ota.offer import (
    VerifiedDownload,
    corrupt_chunks,
    verify_command,
    verify_download,
)
from edge_agent.ota.slots import InstalledSlot, SlotMeta
from shared.bundle import RollbackOrder, parse_rollback_order, resolve_deltas
from shared.errors import BundleError
from shared.messages import ChunkRequest, EventKind

__all__ = ["InstallSteps", "holds"]

log = logging.getLogger("edge_agent.ota.updater")


class InstallSteps(UpdaterCore):
    """The steps after the download, each persisted before its side effect."""

    def _abort(self, trigger: Trigger, reason: str) -> None:
        """End the deployment through ``trigger``: roll back if something was installed."""
        self._step(trigger, reason=reason)
        if self._dep().phase == Phase.ROLLING_BACK:
            self._roll_back()
        else:
            self._finish()

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

    def _verify_and_install(self) -> None:
        self.transfer.stop_listening()
        dep = self._dep()
        if dep.phase == Phase.DOWNLOADING:
            # no sync here: a restart in Verifying re-hashes the chunks on disk and fetches
            # again whatever a power cut lost (Trigger.REPAIR)
            # reported as of when its last byte was written (on the network thread, maybe a
            # while before this worker got to it), with the bytes this process received
            received = {"bytes_received": self.transfer.bytes_received}
            self._step(
                Trigger.DOWNLOAD_COMPLETE,
                event=EventKind.DOWNLOAD_COMPLETE,
                data=received,
                event_at=self.transfer.completed_at,
            )
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
        try:
            # the commit point: a restart in Installing rewrites the slot from the download
            # and cannot fetch again, so every verified byte must be on disk before it
            self.transfer.sync()
        except InstallError as exc:
            self._abort(Trigger.ERROR, str(exc))
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
        return corrupt_chunks(self.transfer.view(), cmd, offer.manifest, chunk_size)

    def _reverify(self) -> VerifiedDownload:
        dep = self._dep()
        if not self.transfer.complete or self.transfer.bundle_id != dep.bundle_id:
            raise InstallError("download incomplete")
        return verify_download(self.transfer.view(), dep.command, self._policy(), dep.bundle_id)

    def _full_artifacts(self, verified: VerifiedDownload) -> Mapping[str, bytes | memoryview]:
        """The artifacts to install (views into the download unless a delta bundle is applied
        to the active slot's files; ``DeltaBaseError`` if this device lacks the base)."""
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
        wire = {name: bytes(view) for name, view in verified.artifacts.items()}
        return resolve_deltas(verified.manifest, wire, base)

    def _install(
        self, verified: VerifiedDownload, artifacts: Mapping[str, bytes | memoryview]
    ) -> None:
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
            self._roll_back_to_ordered()
            return
        if self.slots.active_name() != dep.previous_slot:
            self.slots.switch(dep.previous_slot)
            self._notify_active()
        self._sync_installed_versions()
        self._step(Trigger.ROLLBACK_DONE, reason=dep.reason or "rolled back")
        self._finish()

    def _roll_back_to_ordered(self) -> None:
        """A signed rollback order: the other slot must hold the version it names and pass
        the health check before it becomes active."""
        dep = self._dep()
        slot = self.slots.read(dep.target_slot)
        order = parse_rollback_order(dep.command.get("order"))
        if slot is None or not holds(slot, order):
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


def holds(slot: InstalledSlot, order: RollbackOrder) -> bool:
    """Whether ``slot`` holds the version ``order`` leads to (by bundle id, or by content
    whichever bundle delivered it)."""
    model = next((a for a in slot.meta.artifacts if a.get("role") == "model"), {})
    return order.names_target(
        model_name=slot.meta.model_name,
        version=slot.meta.version,
        bundle_id=slot.meta.bundle_id,
        sha256=str(model.get("sha256", "")),
    )
