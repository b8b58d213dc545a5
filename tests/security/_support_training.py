"""Helpers for the training-order attack tests (R4, R13): a hub key store that signs real
training orders, an attacker's own key store, and the commands that carry them."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.keys import KeyStore
from shared.fl.order import TrainingOrder, sign_training_order
from shared.messages import TrainCommand, new_id
from shared.signing import format_time

__all__ = ["OrderIssuer", "write_ca"]

FAB = "ab" * 32


def write_ca(directory: Path) -> tuple[CertificateAuthority, Path]:
    """A hub CA on disk (``ca.key``/``ca.crt``), as enrollment creates it."""
    ca = CertificateAuthority.load_or_create(directory)
    return ca, directory / "ca.crt"


class OrderIssuer:
    """Signs training orders with a real key store (the hub's, or an attacker's own)."""

    def __init__(self, directory: Path) -> None:
        self.keys = KeyStore.init(directory)

    def order(
        self,
        device_id: str,
        *,
        run_id: str = "run-1",
        superlink: str = "127.0.0.1:9",
        fab_sha256: str = FAB,
        insecure: bool = False,
        secure_aggregation: bool = True,
        valid_for: timedelta = timedelta(hours=1),
        issued: datetime | None = None,
    ) -> TrainingOrder:
        issued = issued or datetime.now(timezone.utc)
        return TrainingOrder(
            order_id=new_id(),
            run_id=run_id,
            device_id=device_id,
            superlink=superlink,
            fab_sha256=fab_sha256,
            model_name="sensor-mlp",
            secure_aggregation=secure_aggregation,
            insecure=insecure,
            issued=format_time(issued),
            expires=format_time(issued + valid_for),
        )

    def sign(self, order: TrainingOrder) -> dict[str, Any]:
        return sign_training_order(order, self.keys.signing_keys())

    def command(
        self,
        order: TrainingOrder,
        *,
        envelope: dict[str, Any] | None = None,
        config: dict[str, Any] | None = None,
    ) -> TrainCommand:
        """The command a hub sends for ``order`` (``envelope``: a tampered one instead)."""
        return TrainCommand(
            command_id=new_id(),
            run_id=order.run_id,
            superlink=order.superlink,
            model_name=order.model_name,
            config=dict(config or {}),
            order=envelope if envelope is not None else self.sign(order),
            keyring=self.keys.keyring_envelope(),
        )

    def tampered(self, order: TrainingOrder, **changes: Any) -> TrainCommand:
        """A correctly signed order whose signed fields were edited afterwards."""
        envelope = self.sign(order)
        envelope["signed"] = {**envelope["signed"], **changes}
        return self.command(replace(order, **changes), envelope=envelope)
