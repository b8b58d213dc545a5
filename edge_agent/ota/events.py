"""The events a deployment reports: one per step, exactly one terminal event per deployment
(``committed``, ``rolled_back``, ``failed``), or ``rejected`` for an offer refused before
download. Each carries a fresh id; receivers deduplicate, since a step repeated after a
restart is reported again."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from edge_agent.ota.machine import Deployment, Phase
from edge_agent.ota.slots import SlotMeta
from shared.messages import Event, EventKind, Message, new_id

__all__ = ["EVENT_CHUNKS_REPAIR", "TERMINAL_EVENT", "DeploymentEvents", "describe"]

log = logging.getLogger(__name__)

EVENT_CHUNKS_REPAIR = "chunks_repair"  # not terminal: corrupt chunks are fetched again
TERMINAL_EVENT = {
    Phase.COMMITTED: EventKind.COMMITTED,
    Phase.ROLLED_BACK: EventKind.ROLLED_BACK,
    Phase.FAILED: EventKind.FAILED,
}


def describe(exc: Exception) -> str:
    """A refusal's reason as reported: the error class (the cause) and its message."""
    return f"{type(exc).__name__}: {exc}"


class DeploymentEvents:
    def __init__(self, device_id: str, emit: Callable[[Message], None]) -> None:
        self.device_id = device_id
        self._emit = emit

    def step(
        self,
        kind: str,
        dep: Deployment,
        *,
        detail: str = "",
        data: dict[str, Any] | None = None,
        at: float | None = None,
    ) -> None:
        """A step's event; ``at``: when it happened, if earlier than now (a download that
        completed on the network thread before the worker reports it)."""
        body = {"bundle_id": dep.bundle_id, "version": dep.version, "model": dep.model_name}
        self._send(kind, dep.deployment_id, detail, {**body, **(data or {})}, at=at)

    def terminal(self, dep: Deployment) -> None:
        self.step(TERMINAL_EVENT[dep.phase], dep, detail=dep.reason)

    def already(self, kind: str, deployment_id: str, meta: SlotMeta, detail: str) -> None:
        """A command whose outcome is already in place (e.g. the bundle is active)."""
        body = {"bundle_id": meta.bundle_id, "version": meta.version, "model": meta.model_name}
        self._send(kind, deployment_id, detail, body)

    def rejected(self, deployment_id: str | None, exc: Exception, *, bundle_id: str = "") -> None:
        """An offer refused before download; ``deployment_id`` is ``None`` when the offer's
        own ids were refused (they are never echoed)."""
        log.warning("deployment %s rejected: %s", deployment_id, describe(exc))
        data = {"error": type(exc).__name__, "bundle_id": bundle_id}
        self._send(EventKind.REJECTED, deployment_id, describe(exc), data)

    def _send(
        self,
        kind: str,
        deployment_id: str | None,
        detail: str,
        data: dict[str, Any],
        *,
        at: float | None = None,
    ) -> None:
        event = Event(
            device_id=self.device_id,
            event_id=new_id(),
            kind=kind,
            deployment_id=deployment_id,
            detail=detail,
            data=data,
        )
        self._emit(event if at is None else replace(event, ts=at))
