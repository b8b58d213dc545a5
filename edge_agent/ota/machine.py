"""The install lifecycle as one explicit transition table (pure: values in, values out).

::

    Idle ──offer_accepted──► Downloading ──download_complete──► Verifying ──verified──► Installing
                                 │ timeout/error/superseded          │ verify_failed/timeout/superseded
                                 ▼                                   ▼                     │ installed
                               Failed ◄──────────────────────────────┘                     ▼
                                 ▲                                                   HealthCheck
                                 │ rollback_failed                                  │        │
                           RollingBack ◄──── health_failed / install_failed / timeout┘        │ health_ok
                                 │ rollback_done                                              ▼
                                 ▼                                                        Committed
                             RolledBack

When verification fails and the offer shows which chunks are corrupt, ``repair`` goes back
to Downloading for exactly those (a bounded number of times). A signed rollback order
enters ``RollingBack`` directly (``rollback_ordered``). Committed,
RolledBack and Failed are terminal: the next offer starts a new deployment from them. A
deployment record is persisted after every transition (see :mod:`edge_agent.ota.persist`);
:func:`recovery_action` says what a restarted agent does with the record it finds.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from edge_agent.errors import InstallError
from shared.install_phase import TERMINAL_INSTALL_PHASES, InstallPhase
from shared.transitions import TransitionTable

__all__ = [
    "RECOVERY",
    "TERMINAL",
    "TRANSITIONS",
    "Deployment",
    "InvalidTransitionError",
    "Phase",
    "RecoveryAction",
    "Trigger",
    "new_deployment",
    "phase_timeouts",
    "recovery_action",
    "timed_out",
    "transition",
]


#: The phases are the shared install vocabulary (devices report them in ``Status``).
Phase = InstallPhase


class Trigger(str, enum.Enum):
    OFFER_ACCEPTED = "offer_accepted"
    ROLLBACK_ORDERED = "rollback_ordered"
    DOWNLOAD_COMPLETE = "download_complete"
    VERIFIED = "verified"
    VERIFY_FAILED = "verify_failed"
    INSTALLED = "installed"
    INSTALL_FAILED = "install_failed"
    HEALTH_OK = "health_ok"
    HEALTH_FAILED = "health_failed"
    ROLLBACK_DONE = "rollback_done"
    ROLLBACK_FAILED = "rollback_failed"
    ERROR = "error"
    TIMEOUT = "timeout"
    SUPERSEDED = "superseded"
    REPAIR = "repair"  # verification located corrupt chunks: fetch them again


TERMINAL = TERMINAL_INSTALL_PHASES
_START = (Phase.IDLE, *sorted(TERMINAL))


class InvalidTransitionError(InstallError):
    """A trigger that the transition table does not allow in the current phase."""


P, T = Phase, Trigger
#: The whole lifecycle. Anything not listed here is refused with ``InvalidTransitionError``.
TRANSITIONS: TransitionTable[Phase, Trigger, Phase] = TransitionTable(
    "an install",
    {
        **{(s, T.OFFER_ACCEPTED): P.DOWNLOADING for s in _START},
        **{(s, T.ROLLBACK_ORDERED): P.ROLLING_BACK for s in _START},
        (P.DOWNLOADING, T.DOWNLOAD_COMPLETE): P.VERIFYING,
        (P.DOWNLOADING, T.ERROR): P.FAILED,
        (P.DOWNLOADING, T.TIMEOUT): P.FAILED,
        (P.DOWNLOADING, T.SUPERSEDED): P.FAILED,
        (P.VERIFYING, T.VERIFIED): P.INSTALLING,
        (P.VERIFYING, T.VERIFY_FAILED): P.FAILED,
        (P.VERIFYING, T.ERROR): P.FAILED,
        (P.VERIFYING, T.TIMEOUT): P.FAILED,
        (P.VERIFYING, T.SUPERSEDED): P.FAILED,
        (P.VERIFYING, T.REPAIR): P.DOWNLOADING,
        (P.INSTALLING, T.INSTALLED): P.HEALTH_CHECK,
        (P.INSTALLING, T.INSTALL_FAILED): P.ROLLING_BACK,
        (P.INSTALLING, T.TIMEOUT): P.ROLLING_BACK,
        (P.INSTALLING, T.ERROR): P.ROLLING_BACK,
        (P.HEALTH_CHECK, T.HEALTH_OK): P.COMMITTED,
        (P.HEALTH_CHECK, T.HEALTH_FAILED): P.ROLLING_BACK,
        (P.HEALTH_CHECK, T.TIMEOUT): P.ROLLING_BACK,
        (P.HEALTH_CHECK, T.ERROR): P.ROLLING_BACK,
        (P.ROLLING_BACK, T.ROLLBACK_DONE): P.ROLLED_BACK,
        (P.ROLLING_BACK, T.ROLLBACK_FAILED): P.FAILED,
        (P.ROLLING_BACK, T.TIMEOUT): P.FAILED,
    },
    InvalidTransitionError,
)
del P, T


@dataclass(frozen=True)
class Deployment:
    """One deployment (or ordered rollback) and where it stands; persisted as JSON.

    ``command`` is the DeployCommand/RollbackCommand as received (``to_dict``) so a restarted
    agent can resume without the hub; ``target_slot`` is the slot being written,
    ``previous_slot`` the one that was active when the deployment started.
    """

    deployment_id: str
    kind: str  # "deploy" | "rollback"
    phase: Phase
    bundle_id: str = ""
    model_name: str = ""
    version: int = 0
    target_slot: str | None = None
    previous_slot: str | None = None
    reason: str = ""
    started_at: float = 0.0
    phase_since: float = 0.0
    deadline: float | None = None
    resumes: int = 0
    repairs: int = 0
    command: dict[str, Any] = field(default_factory=dict)

    @property
    def terminal(self) -> bool:
        return self.phase in TERMINAL

    def to_dict(self) -> dict[str, Any]:
        return {
            "deployment_id": self.deployment_id,
            "kind": self.kind,
            "phase": self.phase.value,
            "bundle_id": self.bundle_id,
            "model_name": self.model_name,
            "version": self.version,
            "target_slot": self.target_slot,
            "previous_slot": self.previous_slot,
            "reason": self.reason,
            "started_at": self.started_at,
            "phase_since": self.phase_since,
            "deadline": self.deadline,
            "resumes": self.resumes,
            "repairs": self.repairs,
            "command": self.command,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Deployment:
        try:
            return cls(
                deployment_id=str(data["deployment_id"]),
                kind=str(data["kind"]),
                phase=Phase(data["phase"]),
                bundle_id=str(data.get("bundle_id", "")),
                model_name=str(data.get("model_name", "")),
                version=int(data.get("version", 0)),
                target_slot=data.get("target_slot"),
                previous_slot=data.get("previous_slot"),
                reason=str(data.get("reason", "")),
                started_at=float(data.get("started_at", 0.0)),
                phase_since=float(data.get("phase_since", 0.0)),
                deadline=None if data.get("deadline") is None else float(data["deadline"]),
                resumes=int(data.get("resumes", 0)),
                repairs=int(data.get("repairs", 0)),
                command=dict(data.get("command") or {}),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise InstallError(f"persisted deployment record is invalid: {exc}") from exc


def phase_timeouts(
    *, download_s: float, verify_s: float, install_s: float, health_s: float, rollback_s: float
) -> dict[Phase, float]:
    """The per-phase bound used by :func:`transition` to set ``deadline``."""
    return {
        Phase.DOWNLOADING: download_s,
        Phase.VERIFYING: verify_s,
        Phase.INSTALLING: install_s,
        Phase.HEALTH_CHECK: health_s,
        Phase.ROLLING_BACK: rollback_s,
    }


def _deadline(phase: Phase, now: float, timeouts: Mapping[Phase, float]) -> float | None:
    bound = timeouts.get(phase)
    return None if bound is None else now + bound


def new_deployment(
    deployment_id: str,
    *,
    kind: str,
    now: float,
    bundle_id: str = "",
    model_name: str = "",
    version: int = 0,
    command: Mapping[str, Any] | None = None,
) -> Deployment:
    """A fresh record in ``Idle``; the caller then applies ``offer_accepted`` or
    ``rollback_ordered``."""
    return Deployment(
        deployment_id=deployment_id,
        kind=kind,
        phase=Phase.IDLE,
        bundle_id=bundle_id,
        model_name=model_name,
        version=version,
        started_at=now,
        phase_since=now,
        command=dict(command or {}),
    )


def transition(
    dep: Deployment,
    trigger: Trigger,
    *,
    now: float,
    timeouts: Mapping[Phase, float],
    reason: str = "",
    **changes: Any,
) -> Deployment:
    """Apply ``trigger``; raises ``InvalidTransitionError`` if the table forbids it.

    ``changes`` sets other fields in the same step (e.g. ``target_slot``), so one persisted
    write records the whole step.
    """
    target = TRANSITIONS.get((dep.phase, trigger))
    if target is None:
        raise InvalidTransitionError(
            f"{trigger.value!r} not allowed in phase {dep.phase.value!r} "
            f"(deployment {dep.deployment_id})"
        )
    return replace(
        dep,
        phase=target,
        phase_since=now,
        deadline=_deadline(target, now, timeouts),
        reason=reason or (dep.reason if target in TERMINAL else ""),
        **changes,
    )


def timed_out(dep: Deployment, now: float) -> bool:
    return dep.deadline is not None and not dep.terminal and now >= dep.deadline


class RecoveryAction(str, enum.Enum):
    """What a restarted agent does with the deployment record it finds on disk."""

    NOTHING = "nothing"  # idle or terminal
    RESUME_DOWNLOAD = "resume_download"  # keep the chunks on disk, ask for the rest
    VERIFY = "verify"  # verification is pure: run it again
    INSTALL = "install"  # the target slot is inactive: rewrite it from the download
    HEALTH_CHECK = "health_check"  # check the (inactive) new slot again
    FINISH_COMMIT = "finish_commit"  # the pointer was switched: record the commit
    ROLL_BACK = "roll_back"  # give up on the new slot, make sure the previous one is active
    FAIL = "fail"  # too many restarts before anything was installed


def recovery_action(
    dep: Deployment | None, *, active_slot: str | None, max_resumes: int
) -> RecoveryAction:
    """Decide how to continue after a restart (pure).

    The ``active`` pointer is the commit point: a health-checked install whose pointer
    switch reached the disk is committed; anything earlier leaves the previous slot active
    and is redone, at most ``max_resumes`` times (a model that crashes the agent during its
    health check thus ends rolled back instead of looping).
    """
    if dep is None:
        return RecoveryAction.NOTHING
    switched = dep.target_slot is not None and active_slot == dep.target_slot
    return RECOVERY[(dep.phase, switched, dep.resumes >= max_resumes)]


def _recovery_table() -> Mapping[tuple[Phase, bool, bool], RecoveryAction]:
    P, A, both = Phase, RecoveryAction, (False, True)
    resume = {
        P.DOWNLOADING: (A.RESUME_DOWNLOAD, A.FAIL),
        P.VERIFYING: (A.VERIFY, A.FAIL),
        P.INSTALLING: (A.INSTALL, A.ROLL_BACK),
        P.HEALTH_CHECK: (A.HEALTH_CHECK, A.ROLL_BACK),
    }
    return {
        **{(p, sw, sp): A.NOTHING for p in (P.IDLE, *TERMINAL) for sw in both for sp in both},
        **{(P.ROLLING_BACK, sw, sp): A.ROLL_BACK for sw in both for sp in both},
        # (phase, pointer names the new slot, restarts used up): before the pointer switch
        # a step is redone until the restarts run out, then given up
        **{(p, sw, sp): acts[sp] for p, acts in resume.items() for sw in both for sp in both},
        # the pointer switch is the commit point
        **{(P.HEALTH_CHECK, True, sp): A.FINISH_COMMIT for sp in both},
    }


#: (phase, the active pointer names the deployment's target slot, restarts used up) →
#: what a restarted agent does. Total over every combination (tests check it).
RECOVERY: Mapping[tuple[Phase, bool, bool], RecoveryAction] = _recovery_table()
