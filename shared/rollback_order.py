"""The signed rollback order (R5): a one-time permission to leave the bundle a device runs.

An order names the devices it is for and the bundle they run now, so it cannot be replayed
to another device, nor to the same one once it has moved on. Its refusal for a device that
moved on is read back by the hub (:func:`stale_rollback_binding`), which then re-sends the
order bound to what the device runs: the message and its reader live side by side here.

Pure: envelopes, the device's policy and its clock in, an order or an exception out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from shared._codec import to_plain
from shared.bundle_policy import VerifyPolicy
from shared.errors import MalformedBundleError, WrongTargetError
from shared.signing import (
    SPEC_VERSION,
    SigningKey,
    read_document,
    sign_envelope,
    verify_keyring,
)

__all__ = [
    "MAX_ORDER_DEVICES",
    "RollbackOrder",
    "parse_rollback_order",
    "sign_rollback_order",
    "stale_rollback_binding",
    "verify_rollback_order",
]

MAX_ORDER_DEVICES = 1000


@dataclass(frozen=True)
class RollbackOrder:
    """A signed, one-time permission for the named devices to leave ``from_bundle_id`` (what
    they run now) for an older version of a model, or for another model (R5).

    The target is ``to_version`` held either by bundle ``to_bundle_id`` or, whichever bundle
    (full or delta) delivered it, by a model artifact with sha256 ``to_sha256``. Devices
    remember ``order_id`` until ``expires``: an order works once per device.
    """

    order_id: str
    model_name: str
    device_class: str
    to_version: int
    to_bundle_id: str
    issued: str
    expires: str
    device_ids: list[str] = field(default_factory=list)
    from_bundle_id: str = ""
    to_sha256: str = ""
    type: str = "rollback-order"
    spec_version: str = SPEC_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def names_target(self, *, model_name: str, version: int, bundle_id: str, sha256: str) -> bool:
        """Whether a bundle (or an installed slot) is the one this order leads to."""
        if model_name != self.model_name or version != self.to_version:
            return False
        return bundle_id == self.to_bundle_id or (bool(self.to_sha256) and sha256 == self.to_sha256)


def sign_rollback_order(order: RollbackOrder, keys: list[SigningKey]) -> dict[str, Any]:
    return sign_envelope(to_plain(order), keys)


def parse_rollback_order(envelope: Any) -> RollbackOrder:
    """The typed order inside an envelope, NOT verified (to re-read an order that
    :func:`verify_rollback_order` accepted earlier, e.g. from a persisted deployment)."""
    signed = envelope.get("signed") if isinstance(envelope, dict) else None
    if not isinstance(signed, dict):
        raise MalformedBundleError("rollback order envelope has no 'signed' object")
    return read_document(signed, RollbackOrder, "rollback order")


def verify_rollback_order(
    envelope: Any, keyring_envelope: Any, policy: VerifyPolicy
) -> RollbackOrder:
    keyring = verify_keyring(
        keyring_envelope, policy.trust, now=policy.now, min_version=policy.min_keyring_version
    )
    order = keyring.verify_document(envelope, RollbackOrder, what="rollback order", now=policy.now)
    if order.device_class != policy.device_class:
        raise WrongTargetError(f"rollback order targets class {order.device_class!r}")
    # R5: an order is bound to devices and to what they run now, so it cannot be replayed
    # to another device, nor to this one once it has moved on
    if not order.device_ids or len(order.device_ids) > MAX_ORDER_DEVICES:
        raise WrongTargetError("rollback order names no devices (or too many)")
    if not policy.device_id or policy.device_id not in order.device_ids:
        raise WrongTargetError(f"rollback order is not addressed to device {policy.device_id!r}")
    if not order.from_bundle_id or order.from_bundle_id != policy.active_bundle_id:
        running = (policy.active_bundle_id or "nothing")[:12]
        raise WrongTargetError(
            f"rollback order is for devices running {order.from_bundle_id[:12]!r}, "
            f"this device runs {running!r}"
        )
    return order


# the refusal just above, as the hub reads it back
_STALE_BINDING = re.compile(
    r"rollback order is for devices running '([0-9a-f]{0,12})', this device runs '([0-9a-f]{1,12})'"
)


def stale_rollback_binding(detail: str) -> tuple[str, str] | None:
    """The (ordered, running) bundle-id prefixes of a device's refusal of a rollback order bound
    to another bundle than the one it runs (the message :func:`verify_rollback_order` raises);
    ``None`` for any other refusal. The hub re-sends such an order bound to what it runs now."""
    match = _STALE_BINDING.search(detail)
    return (match.group(1), match.group(2)) if match else None
