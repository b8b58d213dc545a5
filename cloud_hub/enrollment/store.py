"""Where tokens and enrolled devices live: one repository interface, two backends.

- :class:`InMemoryEnrollmentRepository` — for unit tests and throwaway hubs;
- :class:`~cloud_hub.registry.enrollment.SqlEnrollmentRepository` — the hub registry's
  database (SQLite by default, PostgreSQL works the same; tables from its migrations).

Both implement :class:`EnrollmentRepository`; ``tests/identity`` runs one contract suite
against each. Redeeming a token and registering the device is one atomic step, so a token is
consumed only by an enrollment that succeeded, and two concurrent enrollments with the same
token cannot both win.

Revocation keeps serials, not devices: when a device id is re-enrolled its previous
certificate is revoked, so a stolen old key stays locked out after the device is re-imaged.

Times are stored as UNIX epoch seconds (``float``), like the hub registry.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime, timezone
from typing import Protocol

from cloud_hub.enrollment.errors import (
    EnrollmentConflictError,
    UnknownTokenError,
)
from cloud_hub.enrollment.tokens import EnrolledDevice, TokenRecord, check_redeemable
from cloud_hub.errors import RegistryError

__all__ = ["EnrollmentRepository", "InMemoryEnrollmentRepository"]

UTC = timezone.utc


class EnrollmentRepository(Protocol):
    """Storage of enrollment tokens (hashed) and enrolled devices."""

    def add_token(self, record: TokenRecord) -> None: ...

    def get_token(self, token_hash: str) -> TokenRecord | None: ...

    def list_tokens(self) -> list[TokenRecord]: ...

    def redeem(
        self, token_hash: str, device: EnrolledDevice, *, now: datetime, replace_device: bool
    ) -> TokenRecord:
        """Atomically mark the token used by ``device.device_id`` and store ``device``.

        Raises ``UnknownTokenError`` / ``TokenUsedError`` / ``TokenExpiredError``, or
        ``EnrollmentConflictError`` when the device id exists and ``replace_device`` is false;
        on any error nothing changes."""
        ...

    def get_device(self, device_id: str) -> EnrolledDevice | None: ...

    def list_devices(self) -> list[EnrolledDevice]: ...

    def revoke(self, device_id: str, *, now: datetime) -> EnrolledDevice:
        """Revoke the device's current certificate (idempotent); raises ``RegistryError`` for
        an unknown device. Re-enrolling the id issues a new certificate; the old one stays
        revoked."""
        ...

    def revoked_certificates(self) -> list[tuple[int, datetime]]:
        """``(serial, revoked_at)`` of every revoked certificate, for the CRL. A certificate
        replaced by a re-enrollment is revoked automatically."""
        ...


class InMemoryEnrollmentRepository:
    """A dict-backed repository (thread-safe)."""

    def __init__(self) -> None:
        self._tokens: dict[str, TokenRecord] = {}
        self._devices: dict[str, EnrolledDevice] = {}
        self._revoked: dict[int, datetime] = {}
        self._lock = threading.Lock()

    def add_token(self, record: TokenRecord) -> None:
        with self._lock:
            if record.token_hash in self._tokens:
                raise RegistryError("token already stored")
            self._tokens[record.token_hash] = record

    def get_token(self, token_hash: str) -> TokenRecord | None:
        return self._tokens.get(token_hash)

    def list_tokens(self) -> list[TokenRecord]:
        return sorted(self._tokens.values(), key=lambda r: (r.created_at, r.token_hash))

    def redeem(
        self, token_hash: str, device: EnrolledDevice, *, now: datetime, replace_device: bool
    ) -> TokenRecord:
        with self._lock:
            record = self._tokens.get(token_hash)
            if record is None:
                raise UnknownTokenError("unknown enrollment token")
            check_redeemable(record, now)
            if device.device_id in self._devices and not replace_device:
                raise EnrollmentConflictError(f"device id {device.device_id!r} is already enrolled")
            used = record.redeemed(device.device_id, now)
            self._tokens[token_hash] = used
            previous = self._devices.get(device.device_id)
            if previous is not None:
                self._revoked.setdefault(previous.cert_serial, now)
            self._devices[device.device_id] = device
            return used

    def get_device(self, device_id: str) -> EnrolledDevice | None:
        return self._devices.get(device_id)

    def list_devices(self) -> list[EnrolledDevice]:
        return [self._devices[k] for k in sorted(self._devices)]

    def revoke(self, device_id: str, *, now: datetime) -> EnrolledDevice:
        with self._lock:
            device = self._devices.get(device_id)
            if device is None:
                raise RegistryError(f"device {device_id!r} is not enrolled")
            if device.revoked_at is None:
                device = replace(device, revoked_at=now)
                self._devices[device_id] = device
            self._revoked.setdefault(device.cert_serial, now)
            return device

    def revoked_certificates(self) -> list[tuple[int, datetime]]:
        return sorted(self._revoked.items())
