"""The signed training order's pure verification (R4): every refusal by its own error, the
clock jumped instead of waited for, and the ledger of used orders."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from shared.errors import (
    BadSignatureError,
    ExpiredError,
    MalformedBundleError,
    RollbackError,
    UnknownKeyError,
    WrongTargetError,
)
from shared.fl.order import (
    MAX_ORDER_VALIDITY,
    OrderLedger,
    ReplayedOrderError,
    sign_training_order,
    verify_training_order,
)
from shared.signing import format_time
from tests.security._support_training import OrderIssuer

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> OrderIssuer:
    return OrderIssuer(Path(tmp_path_factory.mktemp("keys")) / "keys")


def _verify(hub: OrderIssuer, envelope: dict, *, now: datetime = NOW, **kw: object):  # type: ignore[no-untyped-def]
    return verify_training_order(
        envelope,
        hub.keys.keyring_envelope(),
        trust=hub.keys.trust_root(),
        device_id=str(kw.pop("device_id", "dev-1")),
        now=now,
        **kw,  # type: ignore[arg-type]
    )


def test_a_genuine_order_verifies_for_its_device_until_it_expires(hub: OrderIssuer) -> None:
    order = hub.order("dev-1", issued=NOW)
    assert _verify(hub, hub.sign(order)) == order
    with pytest.raises(ExpiredError):
        _verify(hub, hub.sign(order), now=NOW + timedelta(hours=1))
    with pytest.raises(WrongTargetError):
        _verify(hub, hub.sign(order), device_id="dev-2")


@pytest.mark.parametrize(
    ("change", "error"),
    [
        ({"superlink": "10.6.6.6:9092"}, BadSignatureError),
        ({"fab_sha256": "cd" * 32}, BadSignatureError),
        ({"secure_aggregation": False}, BadSignatureError),
        ({"type": "rollback-order"}, BadSignatureError),
    ],
)
def test_edited_signed_fields_are_refused(
    hub: OrderIssuer, change: dict[str, object], error: type[Exception]
) -> None:
    envelope = hub.sign(hub.order("dev-1", issued=NOW))
    envelope["signed"] = {**envelope["signed"], **change}
    with pytest.raises(error):
        _verify(hub, envelope)


def test_orders_signed_by_another_root_or_with_a_bad_shape_are_refused(
    hub: OrderIssuer, tmp_path: Path
) -> None:
    attacker = OrderIssuer(tmp_path / "attacker")
    forged = sign_training_order(hub.order("dev-1", issued=NOW), attacker.keys.signing_keys())
    with pytest.raises(UnknownKeyError):
        _verify(hub, forged)
    for bad in ({"fab_sha256": "xyz"}, {"superlink": "host"}, {"run_id": 'r"1'}):
        with pytest.raises(MalformedBundleError):
            _verify(hub, hub.sign(replace(hub.order("dev-1", issued=NOW), **bad)))  # type: ignore[arg-type]


def test_orders_from_the_future_or_valid_too_long_are_refused(hub: OrderIssuer) -> None:
    with pytest.raises(ExpiredError, match="future or valid for too long"):
        _verify(hub, hub.sign(hub.order("dev-1", issued=NOW + timedelta(hours=1))))
    too_long = hub.order("dev-1", issued=NOW, valid_for=MAX_ORDER_VALIDITY + timedelta(hours=1))
    with pytest.raises(ExpiredError, match="too long"):
        _verify(hub, hub.sign(too_long))


def test_an_older_keyring_than_seen_is_refused(hub: OrderIssuer) -> None:
    with pytest.raises(RollbackError):
        _verify(hub, hub.sign(hub.order("dev-1", issued=NOW)), min_keyring_version=2)


def test_the_ledger_refuses_reuse_until_expiry_and_forgets_after(hub: OrderIssuer) -> None:
    order = hub.order("dev-1", issued=NOW)
    ledger = OrderLedger().record(order, NOW)
    with pytest.raises(ReplayedOrderError):
        ledger.check_unused(order)
    assert OrderLedger.from_dict(ledger.to_dict()) == ledger
    later = replace(order, order_id="other", expires=format_time(NOW + timedelta(days=1)))
    pruned = ledger.record(later, NOW + timedelta(hours=2))  # the first order has expired
    assert set(pruned.used) == {"other"}
    with pytest.raises(MalformedBundleError):
        OrderLedger.from_dict({"used": ["not", "a", "map"]})
