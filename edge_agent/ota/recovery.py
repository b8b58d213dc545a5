"""Crash recovery: what a restarted agent does with the deployment record it finds.

:func:`edge_agent.ota.machine.recovery_action` decides (a table over phase and active slot);
:data:`RECOVERY_STEPS` maps each decision to the step that carries it out. A step that redoes
interrupted work first spends one of ``max_resumes`` restarts, so a deployment that keeps
killing the agent ends instead of looping.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from edge_agent.errors import InstallError
from edge_agent.ota.events import describe
from edge_agent.ota.install import InstallSteps
from edge_agent.ota.machine import Deployment, Phase, RecoveryAction, Trigger, recovery_action
from shared.errors import BundleError

__all__ = ["RECOVERY_STEPS", "CrashRecovery"]

log = logging.getLogger("edge_agent.ota.updater")

# recovery actions that redo the interrupted step (each spends one of ``max_resumes``)
_REDO_ACTIONS = frozenset(
    {
        RecoveryAction.RESUME_DOWNLOAD,
        RecoveryAction.VERIFY,
        RecoveryAction.INSTALL,
        RecoveryAction.HEALTH_CHECK,
    }
)


class CrashRecovery(InstallSteps):
    """Continue whatever a previous process left."""

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
        RECOVERY_STEPS[action](self)

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

    def _finish_commit(self) -> None:
        self._commit(resume=True)


#: the step a restarted agent runs for each recovery action
RECOVERY_STEPS: dict[RecoveryAction, Callable[[CrashRecovery], None]] = {
    RecoveryAction.FAIL: CrashRecovery._give_up,
    RecoveryAction.ROLL_BACK: CrashRecovery._give_up,
    RecoveryAction.FINISH_COMMIT: CrashRecovery._finish_commit,
    RecoveryAction.RESUME_DOWNLOAD: CrashRecovery._resume_download,
    RecoveryAction.VERIFY: CrashRecovery._resume_verify,
    RecoveryAction.INSTALL: CrashRecovery._resume_install,
    RecoveryAction.HEALTH_CHECK: CrashRecovery._health_and_commit,
}


def _needs_download(dep: Deployment) -> bool:
    """Whether a deployment's next steps still read its download (until it is installed)."""
    return dep.phase in (Phase.DOWNLOADING, Phase.VERIFYING, Phase.INSTALLING)
