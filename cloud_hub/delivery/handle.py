"""One deployment as the hub tracks it, and the handle ``FleetPublisher.deploy`` returns."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from cloud_hub.delivery.progress import DeploymentResult, DeviceProgress

__all__ = ["Deployment", "DeploymentState"]


@dataclass
class DeploymentState:
    """Mutable tracking state; guarded by the publisher's condition."""

    deployment_id: str
    bundle_id: str
    devices: dict[str, DeviceProgress]
    started_at: float
    chunks_published: int = 0
    repairs_sent: int = 0


class Deployment:
    """A handle on one deployment: snapshot it, or wait until every device finished."""

    def __init__(self, state: DeploymentState, cond: threading.Condition) -> None:
        self._state = state
        self._cond = cond

    @property
    def deployment_id(self) -> str:
        return self._state.deployment_id

    @property
    def bundle_id(self) -> str:
        return self._state.bundle_id

    @property
    def device_ids(self) -> list[str]:
        with self._cond:
            return sorted(self._state.devices)

    def result(self) -> DeploymentResult:
        with self._cond:
            st = self._state
            return DeploymentResult(
                deployment_id=st.deployment_id,
                bundle_id=st.bundle_id,
                devices=dict(st.devices),
                started_at=st.started_at,
                chunks_published=st.chunks_published,
                repairs_sent=st.repairs_sent,
            )

    def wait(self, timeout: float | None = None) -> DeploymentResult:
        """Block until every device is in a terminal state or ``timeout`` passes; return a
        snapshot either way (check ``.done`` / ``.all_committed``)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            while not all(p.terminal for p in self._state.devices.values()):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    break
                self._cond.wait(0.5 if left is None else min(left, 0.5))
        return self.result()
