"""What the rollout engine needs from the delivery plane and the key store (interfaces).

The engine talks to the fleet only through :class:`RolloutDelivery` (implemented over MQTT
by :class:`cloud_hub.delivery.FleetPublisher` via :class:`PublisherDelivery`) and signs
rollback orders through a :class:`RollbackSigner` (:class:`cloud_hub.keys.KeyStore`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

__all__ = ["PublisherDelivery", "RollbackSigner", "RolloutDelivery"]


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

    def __init__(self, publisher: FleetPublisher, keys: KeyStore, bundle_dir: Path) -> None:
        self.publisher = publisher
        self.keys = keys
        self.bundle_dir = Path(bundle_dir)

    @classmethod
    def from_hub_config(cls, config: HubConfig, keys: KeyStore) -> PublisherDelivery:
        """Connect a publisher to the hub's broker (what ``cloud-hub serve`` uses)."""
        from cloud_hub.delivery import FleetPublisher
        from cloud_hub.delivery.config import PublisherConfig

        mqtt = config.mqtt
        publisher = FleetPublisher(
            PublisherConfig(
                host=mqtt.host,
                port=mqtt.port,
                prefix=config.topic_prefix,
                client_id=f"{config.ingest_client_id}-rollout"[:128],
                username=mqtt.username,
                password=mqtt.password,
                tls_ca="" if mqtt.tls else None,
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
        self.publisher.deploy(
            self.read_bundle(bundle_id), list(device_ids), deployment_id=deployment_id
        )

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        self.publisher.rollback(
            list(device_ids), order, self.keys.keyring_envelope(), deployment_id=deployment_id
        )

    def close(self) -> None:
        self.publisher.close()
