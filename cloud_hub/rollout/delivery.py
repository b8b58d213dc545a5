"""What the rollout engine needs from the delivery plane and the key store (interfaces).

The engine talks to the fleet only through :class:`RolloutDelivery` (implemented over MQTT
by :class:`cloud_hub.delivery.FleetPublisher` via :class:`PublisherDelivery`) and signs
rollback orders through a :class:`RollbackSigner` (:class:`cloud_hub.keys.KeyStore`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

if TYPE_CHECKING:
    from cloud_hub.bundles import BundleStore
    from cloud_hub.delivery import FleetPublisher
    from cloud_hub.keys import KeyStore

__all__ = [
    "DeliveryTotals",
    "DeployCall",
    "PublisherDelivery",
    "RecordedDelivery",
    "RollbackCall",
    "RollbackSigner",
    "RolloutDelivery",
    "Shipment",
]


@dataclass
class DeliveryTotals:
    """Bytes devices downloaded for a rollout, and what full bundles would have cost."""

    bytes_shipped: int = 0
    bytes_full: int = 0
    devices: dict[str, int] = field(default_factory=dict)  # device id -> bytes it was sent


@dataclass(frozen=True)
class Shipment:
    """What one offer sent: bundle bytes per device (a delta or the full bundle), and the
    full bundle's size (what each device would have cost without deltas)."""

    sent: Mapping[str, int]
    full_size: int


class RolloutDelivery(Protocol):
    """Publishes commands to devices. Both calls must be safe to repeat (QoS 1 semantics)."""

    def deploy(
        self,
        bundle_id: str,
        device_ids: Sequence[str],
        *,
        deployment_id: str,
        orders: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Shipment | None:
        """Offer ``bundle_id`` to ``device_ids`` (DeployCommand + fan-out chunks); returns the
        bytes sent (``None``: not known to this delivery).

        ``orders``: device id -> a signed order sent with that device's offer, which it needs
        to take a bundle of another model than it runs (R5)."""
        ...

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        """Send a RollbackCommand carrying the signed ``order`` to ``device_ids``."""
        ...


class DeployCall(NamedTuple):
    """One :meth:`RolloutDelivery.deploy` call, as :class:`RecordedDelivery` keeps it."""

    bundle_id: str
    device_ids: tuple[str, ...]
    deployment_id: str
    orders: Mapping[str, Mapping[str, Any]]


class RollbackCall(NamedTuple):
    """One :meth:`RolloutDelivery.rollback` call, as :class:`RecordedDelivery` keeps it."""

    order: Mapping[str, Any]
    device_ids: tuple[str, ...]
    deployment_id: str


@dataclass
class RecordedDelivery:
    """A :class:`RolloutDelivery` that keeps every call that went through.

    Each call goes to ``forward_to`` when set, and is recorded once that returned (a call
    that raised is not). Without ``forward_to`` nothing is sent: ``refusal``, when set, is
    raised instead (a process that writes rollouts but must not deliver them), and ``deploy``
    reports what ``shipment`` says for the call (``None``: not known)."""

    forward_to: RolloutDelivery | None = None
    refusal: Exception | None = None
    shipment: Callable[[DeployCall], Shipment | None] | None = None
    deploys: list[DeployCall] = field(default_factory=list)
    rollbacks: list[RollbackCall] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def deploy(
        self,
        bundle_id: str,
        device_ids: Sequence[str],
        *,
        deployment_id: str,
        orders: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Shipment | None:
        call = DeployCall(bundle_id, tuple(device_ids), deployment_id, dict(orders or {}))
        if self.refusal is not None:
            raise self.refusal
        if self.forward_to is not None:
            sent = self.forward_to.deploy(
                bundle_id, device_ids, deployment_id=deployment_id, orders=orders
            )
        else:
            sent = self.shipment(call) if self.shipment is not None else None
        with self._lock:
            self.deploys.append(call)
        return sent

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        if self.refusal is not None:
            raise self.refusal
        if self.forward_to is not None:
            self.forward_to.rollback(order, device_ids, deployment_id=deployment_id)
        with self._lock:
            self.rollbacks.append(RollbackCall(dict(order), tuple(device_ids), deployment_id))

    def deployed_to(self) -> list[str]:
        """Every device offered a bundle, in the order of the calls (repeats kept)."""
        with self._lock:
            return [d for call in self.deploys for d in call.device_ids]

    def rolled_back_to(self) -> list[str]:
        """Every device sent a rollback, in the order of the calls (repeats kept)."""
        with self._lock:
            return [d for call in self.rollbacks for d in call.device_ids]

    def orders_sent(self) -> dict[str, Mapping[str, Any]]:
        """Device id -> the last signed order sent with an offer to it (R5)."""
        with self._lock:
            return {d: order for call in self.deploys for d, order in call.orders.items()}


class RollbackSigner(Protocol):
    """Signs rollback orders (``cloud_hub.keys.KeyStore`` is one)."""

    def sign_rollback_order(
        self,
        *,
        model_name: str,
        device_class: str,
        to_version: int,
        to_bundle_id: str,
        device_ids: Sequence[str],
        from_bundle_id: str,
        to_sha256: str = "",
        valid_hours: float = 24.0,
        now: datetime | None = None,
    ) -> dict[str, Any]: ...


class PublisherDelivery:
    """:class:`RolloutDelivery` over MQTT with :class:`cloud_hub.delivery.FleetPublisher`.

    Bundle bytes come from the hub's bundle store, verified against the hub's own trust
    before they are shipped (R1); rollback commands carry the key store's current keyring.
    """

    def __init__(
        self,
        publisher: FleetPublisher,
        keys: KeyStore,
        bundles: BundleStore,
        *,
        installed_lookup: Callable[[Sequence[str]], Mapping[str, str | None]] | None = None,
        indexed_lookup: Callable[[str], bool] | None = None,
    ) -> None:
        from cloud_hub.delta import DeltaCache

        self.publisher = publisher
        self.keys = keys
        self.bundles = bundles
        # device -> installed bundle id (from the registry): with it, each device gets a delta
        # against what it runs when that is smaller than the full bundle
        self.installed_lookup = installed_lookup
        # bundle id -> registered? (R1: deltas only between bundles of the verified index)
        self.indexed_lookup = indexed_lookup
        self.deltas = DeltaCache(bundles, indexed=self._indexed)
        self._lock = threading.Lock()
        self.shipped: dict[str, DeliveryTotals] = {}  # per rollout (deployment id prefix)

    def _indexed(self, bundle_id: str) -> bool:
        return self.indexed_lookup is None or self.indexed_lookup(bundle_id)

    def read_bundle(self, bundle_id: str) -> bytes:
        """The bundle's bytes, verified now against the hub's own trust (R1)."""
        return self.deltas.target(bundle_id).data

    def deploy(
        self,
        bundle_id: str,
        device_ids: Sequence[str],
        *,
        deployment_id: str,
        orders: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> Shipment:
        switching = [d for d in device_ids if orders and d in orders]
        shipped: dict[str, int] = {}
        if switching:
            assert orders is not None
            device_ids = [d for d in device_ids if d not in orders]
            with_orders = self._deploy_with_orders(
                bundle_id, switching, orders, deployment_id=deployment_id
            )
            if not device_ids:
                return with_orders
            shipped.update(with_orders.sent)
        if self.installed_lookup is None:
            full = self.read_bundle(bundle_id)
            self.publisher.deploy(full, list(device_ids), deployment_id=deployment_id)
            self._account(deployment_id, dict.fromkeys(device_ids, len(full)), len(full))
            return Shipment({**shipped, **dict.fromkeys(device_ids, len(full))}, len(full))
        from cloud_hub.delta import plan_delivery

        plan = plan_delivery(
            self.deltas,
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
        sent = {d: len(group.bundle) for group in plan.groups for d in group.device_ids}
        self._account(deployment_id, sent, plan.full_size)
        return Shipment({**shipped, **sent}, plan.full_size)

    def _deploy_with_orders(
        self,
        bundle_id: str,
        device_ids: Sequence[str],
        orders: Mapping[str, Mapping[str, Any]],
        *,
        deployment_id: str,
    ) -> Shipment:
        """The full bundle, one offer per distinct order (devices of one order share it)."""
        full = self.read_bundle(bundle_id)
        groups: dict[int, list[str]] = {}
        for d in device_ids:
            groups.setdefault(id(orders[d]), []).append(d)
        for index, ids in enumerate(groups.values()):
            self.publisher.deploy(
                full, ids, deployment_id=f"{deployment_id}-s{index}", rollback_order=orders[ids[0]]
            )
        sent = dict.fromkeys(device_ids, len(full))
        self._account(deployment_id, sent, len(full))
        return Shipment(sent, len(full))

    def _account(self, deployment_id: str, sent: Mapping[str, int], full_size: int) -> None:
        """Count the bytes ``sent`` to each device (and ``full_size`` each, had every one
        got the full bundle) under the deployment's rollout."""
        rollout = deployment_id.split(".", 1)[0]
        with self._lock:
            totals = self.shipped.setdefault(rollout, DeliveryTotals())
            totals.bytes_shipped += sum(sent.values())
            totals.bytes_full += full_size * len(sent)
            for device, size in sent.items():
                totals.devices[device] = totals.devices.get(device, 0) + size

    def rollback(
        self, order: Mapping[str, Any], device_ids: Sequence[str], *, deployment_id: str
    ) -> None:
        self.publisher.rollback(
            list(device_ids), order, self.keys.keyring_envelope(), deployment_id=deployment_id
        )

    def close(self) -> None:
        self.publisher.close()
