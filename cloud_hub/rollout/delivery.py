"""What the rollout engine needs from the delivery plane and the key store (interfaces).

The engine talks to the fleet only through :class:`RolloutDelivery` (implemented over MQTT
by :class:`cloud_hub.delivery.FleetPublisher` via :class:`PublisherDelivery`) and signs
rollback orders through a :class:`RollbackSigner` (:class:`cloud_hub.keys.KeyStore`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol

__all__ = ["RollbackSigner", "RolloutDelivery"]


class RolloutDelivery(Protocol):
    """Publishes commands to devices. Both calls must be safe to repeat (QoS 1 semantics)."""

    def deploy(self, bundle_id: str, device_ids: Sequence[str], *, deployment_id: str) -> None:
        """Offer ``bundle_id`` to ``device_ids`` (DeployCommand + fan-out chunks)."""
        ...

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        """Send a RollbackCommand carrying the signed ``order`` to ``device_ids``."""
        ...


class RollbackSigner(Protocol):
    """Signs rollback orders (``cloud_hub.keys.KeyStore`` is one)."""

    def sign_rollback_order(
        self,
        *,
        model_name: str,
        device_class: str,
        to_version: int,
        to_bundle_id: str,
        valid_hours: float = 24.0,
        now: datetime | None = None,
    ) -> dict[str, Any]: ...
