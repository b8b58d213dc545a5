"""The SQL backend of enrollment: tokens (hashed), enrolled devices and revoked
certificates in the hub registry's database (tables from migration 0005).

Implements ``cloud_hub.enrollment.store.EnrollmentRepository``; ``tests/identity`` runs one
contract suite against it and the in-memory backend. Redeeming a token and registering the
device is one transaction with a compare-and-set on the token, so of two concurrent
enrollments with the same token only one wins. Times are UNIX epoch seconds.

The enrollment package imports this module, so its records and errors are imported where
they are used (a module-level import would be circular).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, select, update
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from cloud_hub.errors import RegistryError
from cloud_hub.registry.database import migrate_schema
from cloud_hub.registry.tables import EnrolledDeviceRow, EnrollmentToken, RevokedCertificate

if TYPE_CHECKING:
    from cloud_hub.enrollment.tokens import EnrolledDevice, TokenRecord

__all__ = ["SqlEnrollmentRepository"]

UTC = timezone.utc


def _ts(t: datetime) -> float:
    return t.timestamp()


def _dt(v: float | None) -> datetime | None:
    return None if v is None else datetime.fromtimestamp(v, UTC)


def _token(row: EnrollmentToken) -> TokenRecord:
    from cloud_hub.enrollment.tokens import TokenRecord

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


def _device(row: EnrolledDeviceRow) -> EnrolledDevice:
    from cloud_hub.enrollment.tokens import EnrolledDevice

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
    """SQLAlchemy-backed repository in the hub registry's database.

    ``migrate`` (default) brings the database to the newest schema first: the enrollment
    tables come from the registry's migrations like every other table.
    """

    def __init__(self, engine: Engine, *, migrate: bool = True) -> None:
        self._engine = engine
        if migrate:
            migrate_schema(engine)

    def add_token(self, record: TokenRecord) -> None:
        row = EnrollmentToken(
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
            row = s.get(EnrollmentToken, token_hash)
            return None if row is None else _token(row)

    def list_tokens(self) -> list[TokenRecord]:
        with Session(self._engine) as s:
            rows = s.scalars(select(EnrollmentToken).order_by(EnrollmentToken.created_at)).all()
            return [_token(r) for r in rows]

    def redeem(
        self, token_hash: str, device: EnrolledDevice, *, now: datetime, replace_device: bool
    ) -> TokenRecord:
        from cloud_hub.enrollment.errors import (
            EnrollmentConflictError,
            TokenUsedError,
            UnknownTokenError,
        )
        from cloud_hub.enrollment.tokens import check_redeemable

        try:
            with Session(self._engine) as s, s.begin():
                row = s.get(EnrollmentToken, token_hash)
                if row is None:
                    raise UnknownTokenError("unknown enrollment token")
                check_redeemable(_token(row), now)
                # Compare-and-set: of two concurrent redeemers only one sees rowcount 1.
                result = s.execute(
                    update(EnrollmentToken)
                    .where(
                        EnrollmentToken.token_hash == token_hash, EnrollmentToken.used_at.is_(None)
                    )
                    .values(used_at=_ts(now), used_by=device.device_id)
                    .execution_options(synchronize_session=False)
                )
                if getattr(result, "rowcount", 0) != 1:  # a concurrent enrollment won
                    raise TokenUsedError(f"enrollment token {row.token_hash[:12]} was just used")
                existing = s.get(EnrolledDeviceRow, device.device_id)
                if existing is not None and not replace_device:
                    raise EnrollmentConflictError(
                        f"device id {device.device_id!r} is already enrolled"
                    )
                values = _device_values(device)
                if existing is None:
                    s.add(EnrolledDeviceRow(device_id=device.device_id, revision=0, **values))
                else:
                    if s.get(RevokedCertificate, existing.cert_serial) is None:
                        s.add(
                            RevokedCertificate(
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
            row = s.get(EnrolledDeviceRow, device_id)
            return None if row is None else _device(row)

    def list_devices(self) -> list[EnrolledDevice]:
        with Session(self._engine) as s:
            rows = s.scalars(select(EnrolledDeviceRow).order_by(EnrolledDeviceRow.device_id)).all()
            return [_device(r) for r in rows]

    def revoke(self, device_id: str, *, now: datetime) -> EnrolledDevice:
        try:
            with Session(self._engine) as s, s.begin():
                row = s.get(EnrolledDeviceRow, device_id)
                if row is None:
                    raise RegistryError(f"device {device_id!r} is not enrolled")
                if row.revoked_at is None:
                    row.revoked_at = _ts(now)
                    row.revision += 1
                if s.get(RevokedCertificate, row.cert_serial) is None:
                    s.add(
                        RevokedCertificate(
                            cert_serial=row.cert_serial, device_id=device_id, revoked_at=_ts(now)
                        )
                    )
                return _device(row)
        except SQLAlchemyError as exc:
            raise RegistryError(f"enrollment storage failed: {exc}") from exc

    def revoked_certificates(self) -> list[tuple[int, datetime]]:
        with Session(self._engine) as s:
            rows = s.scalars(select(RevokedCertificate)).all()
            out = []
            for r in rows:
                when = _dt(r.revoked_at)
                assert when is not None
                out.append((int(r.cert_serial), when))
            return sorted(out)
