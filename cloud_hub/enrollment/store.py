"""Where tokens and enrolled devices live: one repository interface, two backends.

- :class:`InMemoryEnrollmentRepository` — for unit tests and throwaway hubs;
- :class:`SqlEnrollmentRepository` — SQLAlchemy (SQLite by default, PostgreSQL works the same).

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
from collections.abc import Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any, Protocol

from sqlalchemy import JSON, BigInteger, Engine, Float, MetaData, String, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from cloud_hub.enrollment.errors import (
    EnrollmentConflictError,
    TokenUsedError,
    UnknownTokenError,
)
from cloud_hub.enrollment.tokens import EnrolledDevice, TokenRecord, check_redeemable
from cloud_hub.errors import RegistryError

__all__ = [
    "EnrollmentRepository",
    "InMemoryEnrollmentRepository",
    "SqlEnrollmentRepository",
]

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


# -- SQL backend -----------------------------------------------------------------------------


class _Base(DeclarativeBase):
    metadata = MetaData()
    type_annotation_map = {dict[str, Any]: JSON}


class _TokenRow(_Base):
    __tablename__ = "enrollment_tokens"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    device_id: Mapped[str | None] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float)
    used_by: Mapped[str | None] = mapped_column(String(128))


class _DeviceRow(_Base):
    __tablename__ = "enrolled_devices"

    device_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    device_class: Mapped[str] = mapped_column(String(128))
    labels: Mapped[dict[str, Any]] = mapped_column(default=dict)
    cert_serial: Mapped[str] = mapped_column(String(64))  # 160-bit serials overflow BIGINT
    cert_fingerprint: Mapped[str] = mapped_column(String(80))
    cert_not_after: Mapped[float] = mapped_column(Float)
    enrolled_at: Mapped[float] = mapped_column(Float)
    token_id: Mapped[str] = mapped_column(String(16), default="")
    revoked_at: Mapped[float | None] = mapped_column(Float)
    revision: Mapped[int] = mapped_column(BigInteger, default=0)


class _RevokedRow(_Base):
    __tablename__ = "revoked_certificates"

    cert_serial: Mapped[str] = mapped_column(String(64), primary_key=True)
    device_id: Mapped[str] = mapped_column(String(128))
    revoked_at: Mapped[float] = mapped_column(Float)


def _ts(t: datetime) -> float:
    return t.timestamp()


def _dt(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, UTC)


def _token(row: _TokenRow) -> TokenRecord:
    created, expires = _dt(row.created_at), _dt(row.expires_at)
    assert created is not None and expires is not None
    return TokenRecord(
        token_hash=row.token_hash,
        device_class=row.device_class,
        created_at=created,
        expires_at=expires,
        labels=dict(row.labels or {}),
        device_id=row.device_id,
        used_at=_dt(row.used_at),
        used_by=row.used_by,
    )


def _device(row: _DeviceRow) -> EnrolledDevice:
    not_after, enrolled = _dt(row.cert_not_after), _dt(row.enrolled_at)
    assert not_after is not None and enrolled is not None
    return EnrolledDevice(
        device_id=row.device_id,
        device_class=row.device_class,
        cert_serial=int(row.cert_serial),
        cert_fingerprint=row.cert_fingerprint,
        cert_not_after=not_after,
        enrolled_at=enrolled,
        labels=dict(row.labels or {}),
        token_id=row.token_id,
        revoked_at=_dt(row.revoked_at),
    )


def _device_values(device: EnrolledDevice) -> Mapping[str, Any]:
    return {
        "device_class": device.device_class,
        "labels": dict(device.labels),
        "cert_serial": str(device.cert_serial),
        "cert_fingerprint": device.cert_fingerprint,
        "cert_not_after": _ts(device.cert_not_after),
        "enrolled_at": _ts(device.enrolled_at),
        "token_id": device.token_id,
        "revoked_at": None if device.revoked_at is None else _ts(device.revoked_at),
    }


class SqlEnrollmentRepository:
    """SQLAlchemy-backed repository; its two tables are created on construction if missing."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        try:
            _Base.metadata.create_all(engine, checkfirst=True)
        except SQLAlchemyError as exc:
            raise RegistryError(f"cannot prepare the enrollment tables: {exc}") from exc

    def add_token(self, record: TokenRecord) -> None:
        row = _TokenRow(
            token_hash=record.token_hash,
            device_class=record.device_class,
            labels=dict(record.labels),
            device_id=record.device_id,
            created_at=_ts(record.created_at),
            expires_at=_ts(record.expires_at),
            used_at=None if record.used_at is None else _ts(record.used_at),
            used_by=record.used_by,
        )
        try:
            with Session(self._engine) as s, s.begin():
                s.add(row)
        except IntegrityError as exc:
            raise RegistryError("token already stored") from exc

    def get_token(self, token_hash: str) -> TokenRecord | None:
        with Session(self._engine) as s:
            row = s.get(_TokenRow, token_hash)
            return None if row is None else _token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with Session(self._engine) as s:
            rows = s.scalars(select(_TokenRow).order_by(_TokenRow.created_at)).all()
            return [_token(r) for r in rows]

    def redeem(
        self, token_hash: str, device: EnrolledDevice, *, now: datetime, replace_device: bool
    ) -> TokenRecord:
        try:
            with Session(self._engine) as s, s.begin():
                row = s.get(_TokenRow, token_hash)
                if row is None:
                    raise UnknownTokenError("unknown enrollment token")
                check_redeemable(_token(row), now)
                # Compare-and-set: of two concurrent redeemers only one sees rowcount 1.
                result = s.execute(
                    update(_TokenRow)
                    .where(_TokenRow.token_hash == token_hash, _TokenRow.used_at.is_(None))
                    .values(used_at=_ts(now), used_by=device.device_id)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) != 1:  # a concurrent enrollment won
                    raise TokenUsedError(f"enrollment token {row.token_hash[:12]} was just used")
                existing = s.get(_DeviceRow, device.device_id)
                if existing is not None and not replace_device:
                    raise EnrollmentConflictError(
                        f"device id {device.device_id!r} is already enrolled"
                    )
                values = _device_values(device)
                if existing is None:
                    s.add(_DeviceRow(device_id=device.device_id, revision=0, **values))
                else:
                    if s.get(_RevokedRow, existing.cert_serial) is None:
                        s.add(
                            _RevokedRow(
                                cert_serial=existing.cert_serial,
                                device_id=existing.device_id,
                                revoked_at=_ts(now),
                            )
                        )
                    for key, value in values.items():
                        setattr(existing, key, value)
                    existing.revision += 1
            used = self.get_token(token_hash)
            assert used is not None
            return used
        except IntegrityError as exc:  # a concurrent enrollment took the device id
            raise EnrollmentConflictError(
                f"device id {device.device_id!r} is already enrolled"
            ) from exc
        except SQLAlchemyError as exc:
            raise RegistryError(f"enrollment storage failed: {exc}") from exc

    def get_device(self, device_id: str) -> EnrolledDevice | None:
        with Session(self._engine) as s:
            row = s.get(_DeviceRow, device_id)
            return None if row is None else _device(row)

    def list_devices(self) -> list[EnrolledDevice]:
        with Session(self._engine) as s:
            rows = s.scalars(select(_DeviceRow).order_by(_DeviceRow.device_id)).all()
            return [_device(r) for r in rows]

    def revoke(self, device_id: str, *, now: datetime) -> EnrolledDevice:
        try:
            with Session(self._engine) as s, s.begin():
                row = s.get(_DeviceRow, device_id)
                if row is None:
                    raise RegistryError(f"device {device_id!r} is not enrolled")
                if row.revoked_at is None:
                    row.revoked_at = _ts(now)
                    row.revision += 1
                if s.get(_RevokedRow, row.cert_serial) is None:
                    s.add(
                        _RevokedRow(
                            cert_serial=row.cert_serial, device_id=device_id, revoked_at=_ts(now)
                        )
                    )
                return _device(row)
        except SQLAlchemyError as exc:
            raise RegistryError(f"enrollment storage failed: {exc}") from exc

    def revoked_certificates(self) -> list[tuple[int, datetime]]:
        with Session(self._engine) as s:
            rows = s.scalars(select(_RevokedRow)).all()
            out = []
            for r in rows:
                when = _dt(r.revoked_at)
                assert when is not None
                out.append((int(r.cert_serial), when))
            return sorted(out)
