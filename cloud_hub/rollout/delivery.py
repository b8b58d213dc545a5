"""What the rollout engine needs from the delivery plane and the key store (interfaces).

The engine talks to the fleet only through :class:`RolloutDelivery` (implemented over MQTT
by :class:`cloud_hub.delivery.FleetPublisher` via :class:`PublisherDelivery`) and signs
rollback orders through a :class:`RollbackSigner` (:class:`cloud_hub.keys.KeyStore`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from cloud_hub.errors import DeliveryError
from shared.errors import ConfigError
from shared.topics import validate_device_id

if TYPE_CHECKING:
    from cloud_hub.config import HubConfig
    from cloud_hub.delivery import FleetPublisher
    from cloud_hub.keys import KeyStore

__all__ = ["DeliveryTotals", "PublisherDelivery", "RollbackSigner", "RolloutDelivery"]


@dataclass
class DeliveryTotals:
    """Bytes devices downloaded for a rollout, and what full bundles would have cost."""

    bytes_shipped: int = 0
    bytes_full: int = 0


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


class PublisherDelivery:
    """:class:`RolloutDelivery` over MQTT with :class:`cloud_hub.delivery.FleetPublisher`.

    Bundle bytes are read from ``bundle_dir/BUNDLE_ID.ffb`` (where ``cloud-hub bundle build``
    and bundle uploads put them); rollback commands carry the key store's current keyring.
    """

    def __init__(
        self,
        publisher: FleetPublisher,
        keys: KeyStore,
        bundle_dir: Path,
        *,
        installed_lookup: Callable[[Sequence[str]], Mapping[str, str | None]] | None = None,
    ) -> None:
        self.publisher = publisher
        self.keys = keys
        self.bundle_dir = Path(bundle_dir)
        # device -> installed bundle id (from the registry): with it, each device gets a delta
        # against what it runs when that is smaller than the full bundle
        self.installed_lookup = installed_lookup
        self._lock = threading.Lock()
        self.shipped: dict[str, DeliveryTotals] = {}  # per rollout (deployment id prefix)

    @classmethod
    def from_hub_config(cls, config: HubConfig, keys: KeyStore) -> PublisherDelivery:
        """Connect a publisher to the hub's broker (what ``cloud-hub serve`` uses)."""
        from cloud_hub.broker_client import HubRole, hub_client_id_for
        from cloud_hub.delivery import FleetPublisher
        from cloud_hub.delivery.config import PublisherConfig

        publisher = FleetPublisher(
            PublisherConfig(
                broker=config.mqtt,
                prefix=config.topic_prefix,
                client_id=hub_client_id_for(config, HubRole.ROLLOUT),
            )
        )
        publisher.connect()
        return cls(publisher, keys, keys.directory / "bundles")

    def read_bundle(self, bundle_id: str) -> bytes:
        try:
            validate_device_id(bundle_id)
        except ConfigError as exc:
            raise DeliveryError(f"invalid bundle id: {exc}") from exc
        path = self.bundle_dir / f"{bundle_id}.ffb"
        try:
            return path.read_bytes()
        except OSError as exc:
            raise DeliveryError(
                f"bundle {bundle_id} not found in {self.bundle_dir}: {exc}"
            ) from exc

    def deploy(self, bundle_id: str, device_ids: Sequence[str], *, deployment_id: str) -> None:
        if self.installed_lookup is None:
            full = self.read_bundle(bundle_id)
            self.publisher.deploy(full, list(device_ids), deployment_id=deployment_id)
            self._account(deployment_id, len(full) * len(device_ids), len(full) * len(device_ids))
            return
        from cloud_hub.delta import DeltaCache, plan_delivery

        plan = plan_delivery(
            DeltaCache(self.bundle_dir, self.keys),
            bundle_id,
            self.installed_lookup(device_ids),
            list(device_ids),
        )
        for index, group in enumerate(plan.groups):
            # one deployment id per group: each group is its own fan-out of its own bundle
            dep = deployment_id if group.base_bundle_id is None else f"{deployment_id}-x{index}"
            self.publisher.deploy(
                group.bundle,
                list(group.device_ids),
                deployment_id=dep,
                full_bundle=plan.full_bundle if group.base_bundle_id is not None else None,
            )
        self._account(deployment_id, plan.bytes_shipped, plan.bytes_full)

    def _account(self, deployment_id: str, shipped: int, full: int) -> None:
        rollout = deployment_id.split(".", 1)[0]
        with self._lock:
            totals = self.shipped.setdefault(rollout, DeliveryTotals())
            totals.bytes_shipped += shipped
            totals.bytes_full += full

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        self.publisher.rollback(
            list(device_ids), order, self.keys.keyring_envelope(), deployment_id=deployment_id
        )

    def close(self) -> None:
        self.publisher.close()
