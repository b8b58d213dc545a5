"""The OTA shell: drives :mod:`edge_agent.ota.machine` with real files, chunks and reports.

Every call comes from the agent's single worker thread, except :meth:`OtaUpdater.take_chunk`:
the MQTT network thread writes chunks of the running download itself, meeting the worker only
at the transfer's lock (see :mod:`~edge_agent.ota.transfer`); a chunk that completes the
download is handed to the worker (:meth:`OtaUpdater.download_landed`), as is every chunk
the intake does not take.

Crash safety rests on three rules: each transition is persisted (atomically) before the
side effect that follows it; a step's event goes to the outbox *before* the transition that
records it, so a kill in between repeats the step and reports it again (at least once, never
lost); and the ``active`` slot pointer is the commit point. Power loss is met the same way
with fsyncs only where a later step relies on the disk: the download once, before
Installing is persisted (an install resumes from it), the slot before the pointer names it;
anything earlier is re-hashed on restart and what a power cut lost is fetched again. Each
deployment ends in a terminal event: ``committed``, ``rolled_back`` or ``failed`` (an offer
refused before download gets ``rejected``).

Layers: :mod:`~edge_agent.ota.core` (state and steps), :mod:`~edge_agent.ota.install`
(verify, install, commit, roll back), :mod:`~edge_agent.ota.recovery` (after a restart) and
this module (commands and chunk intake). Parts: :mod:`~edge_agent.ota.offer` (checks of
offers and downloads), :mod:`~edge_agent.ota.transfer` (chunks),
:mod:`~edge_agent.ota.slots` (A/B install), :mod:`~edge_agent.ota.health` (smoke test),
:mod:`~edge_agent.ota.events` (reports).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

from edge_agent.errors import InstallError
from edge_agent.ota.core import ActiveChanged, Emit
from edge_agent.ota.install import holds
from edge_agent.ota.machine import Deployment, Phase, Trigger, new_deployment, timed_out
from edge_agent.ota.offer import OfferFieldError, check_geometry, check_offer_ids, verify_command
from edge_agent.ota.recovery import CrashRecovery
from edge_agent.ota.transfer import Intake
from shared.bundle import VerifiedOffer, verify_rollback_order
from shared.chunks import parse_chunk_frame
from shared.errors import BundleError, ProtocolError
from shared.messages import DeployCommand, EventKind, InstalledModel, RollbackCommand

__all__ = ["ActiveChanged", "Emit", "Intake", "OtaStatus", "OtaUpdater"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class OtaStatus:
    ota_state: str
    deployment_id: str | None
    installed: InstalledModel | None


class OtaUpdater(CrashRecovery):
    """Deploy and rollback commands, chunk frames and the once-a-second tick."""

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

    def close(self) -> None:
        self.transfer.close()

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
            offer = self._accepted_offer(cmd)
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

    def _accepted_offer(self, cmd: DeployCommand) -> VerifiedOffer:
        """The verified offer of ``cmd`` (``BundleError``/``InstallError`` if refused); an
        order it carries to accept an older version is used up here (R5: it works once)."""
        offer = verify_command(cmd.to_dict(), self._policy())
        if offer.bundle_id != cmd.bundle_id:
            raise InstallError("offer names another bundle than its manifest")
        check_geometry(cmd, offer.manifest, limits=self.limits, topics=self.topics)
        if cmd.rollback_order is not None:
            self._use_order(verify_rollback_order(cmd.rollback_order, cmd.keyring, self._policy()))
        return offer

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
        if active is not None and holds(active, order):
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

    def take_chunk(self, frame: bytes) -> Intake:
        """The network thread's intake of a chunk frame (untrusted): a chunk of the running
        download is written here, under the transfer's lock only (``STORED``; ``COMPLETED``
        when it was the last: then call :meth:`download_landed` on the worker). Everything
        else is left untouched for :meth:`handle_chunk` on the worker (``DEFERRED``), which
        refuses or drops it as it always did."""
        try:
            chunk = parse_chunk_frame(frame, max_chunk_size=self.limits.max_chunk_bytes)
        except ProtocolError:
            return Intake.DEFERRED
        dep = self.state.deployment
        if dep is None or dep.phase != Phase.DOWNLOADING:
            return Intake.DEFERRED
        return self.transfer.take(chunk)

    def download_landed(self) -> None:
        """The worker's half of a download the network thread completed: verify, install."""
        dep = self.state.deployment
        if dep is not None and dep.phase == Phase.DOWNLOADING and self.transfer.complete:
            self._verify_and_install()

    def tick(self) -> None:
        """Enforce deadlines and ask for missing chunks; call about once a second."""
        self.refusals.flush()
        dep, now = self.state.deployment, self._clock()
        if dep is None or dep.terminal:
            return
        if dep.phase == Phase.DOWNLOADING and self.transfer.complete:
            self.download_landed()  # completed on the network thread, its hand-off lost
            return
        if timed_out(dep, now):
            self._abort(Trigger.TIMEOUT, f"{dep.phase.value} timed out")
            return
        if dep.phase == Phase.DOWNLOADING:
            try:
                self.transfer.tick()
            except InstallError as exc:  # the download's record cannot be written
                self._abort(Trigger.ERROR, str(exc))
