"""The signed training order: what a device may train, where, with which code (R4).

A ``TrainCommand`` arrives over the broker, which the device does not trust. What the device
acts on is the order inside it, signed like a rollback order by the hub's online signing key
(delegated by the root-signed keyring the device verifies against its pinned trust root).
The order names the SuperLink to dial, the hub's run id, the sha256 of the only Flower App
Bundle (FAB) the device's SuperNode may run, whether the SuperLink connection may be plain
text, whether the round must use SecAgg+, the one device it is for, and when it expires.

Everything here is pure: envelopes, trust root and clock in, an order or an exception out.
:class:`OrderLedger` is the pure record of used order ids (the shell persists it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from shared._codec import to_plain
from shared.errors import (
    ExpiredError,
    MalformedBundleError,
    VerificationError,
    WrongTargetError,
)
from shared.signing import (
    SPEC_VERSION,
    SigningKey,
    TrustRoot,
    parse_time,
    sign_envelope,
    verify_keyring,
)

__all__ = [
    "MAX_ORDER_VALIDITY",
    "ORDER_TYPE",
    "OrderLedger",
    "ReplayedOrderError",
    "TrainingOrder",
    "sign_training_order",
    "verify_training_order",
]

ORDER_TYPE = "training-order"
MAX_ORDER_VALIDITY = timedelta(days=1)  # an order lives one run, never longer
_CLOCK_SKEW = timedelta(minutes=5)
_SHA256 = re.compile(r"[0-9a-f]{64}")
_HOST_PORT = re.compile(r"[A-Za-z0-9.\-\[\]:]{1,253}:[0-9]{1,5}")


class ReplayedOrderError(VerificationError):
    """A training order this device has already acted on (replay until expiry)."""


@dataclass(frozen=True)
class TrainingOrder:
    """The hub's signed permission for one device to join one Flower run."""

    order_id: str
    run_id: str
    device_id: str
    superlink: str  # host:port of the hub's SuperLink (Fleet API)
    fab_sha256: str  # the only FAB the device's SuperNode may run
    model_name: str
    secure_aggregation: bool  # the round must use SecAgg+ (the server cannot switch it off)
    insecure: bool  # plain-text SuperLink; the device must also allow it locally
    issued: str
    expires: str
    type: str = ORDER_TYPE
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def check_shape(self) -> None:
        """Refuse values no honest hub signs (they would reach command lines and files)."""
        if not _SHA256.fullmatch(self.fab_sha256):
            raise MalformedBundleError("training order: fab_sha256 must be 64 hex digits")
        if not _HOST_PORT.fullmatch(self.superlink):
            raise MalformedBundleError(f"training order: bad superlink {self.superlink[:80]!r}")
        for name in ("order_id", "run_id", "device_id", "model_name"):
            value = getattr(self, name)
            if not value or len(value) > 128 or any(c in value for c in "\"'\n\r\0"):
                raise MalformedBundleError(f"training order: bad {name}")
        # a bad issue time is malformed, whether or not the order has expired
        parse_time(self.issued, "training order issued")


def sign_training_order(order: TrainingOrder, keys: list[SigningKey]) -> dict[str, Any]:
    return sign_envelope(to_plain(order), keys)


def verify_training_order(
    envelope: Any,
    keyring_envelope: Any,
    *,
    trust: TrustRoot,
    device_id: str,
    now: datetime,
    min_keyring_version: int = 0,
) -> TrainingOrder:
    """Verify a training order for ``device_id`` at ``now``; return it.

    Refuses (each with its own error class): a keyring not signed by the pinned root, older
    than seen or expired; an order not signed by an active keyring key (unsigned, forged,
    revoked key); an order of another type or spec; an expired order, one issued in the
    future or valid longer than :data:`MAX_ORDER_VALIDITY`; an order for another device.
    """
    keyring = verify_keyring(keyring_envelope, trust, now=now, min_version=min_keyring_version)
    order = keyring.verify_document(
        envelope, TrainingOrder, what="training order", now=now, check=TrainingOrder.check_shape
    )
    issued = parse_time(order.issued, "training order issued")
    expires = parse_time(order.expires, "training order expires")
    if issued > now + _CLOCK_SKEW or expires - issued > MAX_ORDER_VALIDITY:
        raise ExpiredError("training order issued in the future or valid for too long")
    if order.device_id != device_id:
        raise WrongTargetError(f"training order is for device {order.device_id!r}")
    return order


@dataclass(frozen=True)
class OrderLedger:
    """Order ids this device has acted on, each kept until its order expires."""

    used: Mapping[str, str] = field(default_factory=dict)  # order_id -> expires

    def check_unused(self, order: TrainingOrder) -> None:
        if order.order_id in self.used:
            raise ReplayedOrderError(f"training order {order.order_id} was already used")

    def record(self, order: TrainingOrder, now: datetime) -> OrderLedger:
        """This ledger plus ``order``, without the orders that expired before ``now``."""
        kept = {
            oid: exp for oid, exp in self.used.items() if parse_time(exp, "ledger expiry") > now
        }
        kept[order.order_id] = order.expires
        return OrderLedger(kept)

    def to_dict(self) -> dict[str, Any]:
        return {"used": dict(self.used)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> OrderLedger:
        used = data.get("used", {})
        if not isinstance(used, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in used.items()
        ):
            raise MalformedBundleError("order ledger: 'used' must map ids to expiry times")
        return cls(dict(used))
