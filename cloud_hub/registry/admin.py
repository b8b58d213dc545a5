"""Operations records: training runs, the audit log and API tokens.

API tokens are ``ffh_<token_id>_<secret>``; only a SHA-256 of the whole token is stored,
so a leaked database does not leak usable tokens.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import to_record
from cloud_hub.registry.errors import ConflictError, NotFoundError, RegistryInputError
from cloud_hub.registry.records import ApiTokenRecord, AuditRecord, Page, TrainingRunRecord
from cloud_hub.registry.tables import ApiToken, AuditEntry, TrainingRun

__all__ = [
    "ROLES",
    "authenticate_token",
    "create_token",
    "create_training_run",
    "find_live_token",
    "get_training_run",
    "list_audit",
    "list_tokens",
    "list_training_runs",
    "record_audit",
    "revoke_token",
    "role_allows",
    "update_audit_detail",
    "update_training_run",
]

ROLES = ("viewer", "operator", "admin")  # each includes the rights of the ones before it
_RUN_FIELDS = {"state", "metrics", "result_version", "detail", "finished_at", "config"}


def role_allows(role: str, required: str) -> bool:
    """Whether ``role`` has at least the rights of ``required``."""
    if role not in ROLES or required not in ROLES:
        return False
    return ROLES.index(role) >= ROLES.index(required)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_token(
    session: Session, *, name: str, role: str, now: float
) -> tuple[ApiTokenRecord, str]:
    """Create an API token; returns its record and the secret (shown once, never stored)."""
    if role not in ROLES:
        raise RegistryInputError(f"role must be one of {', '.join(ROLES)}")
    if not name or len(name) > 128:
        raise RegistryInputError("token name must be 1-128 characters")
    token_id = secrets.token_hex(6)
    token = f"ffh_{token_id}_{secrets.token_urlsafe(32)}"
    row = ApiToken(
        token_id=token_id, name=name, role=role, secret_hash=_hash(token), created_at=now
    )
    session.add(row)
    session.flush()
    return to_record(ApiTokenRecord, row), token


def authenticate_token(session: Session, token: str, *, now: float) -> ApiTokenRecord | None:
    """The live token matching ``token``, or ``None``; records when it was last used."""
    if not token.startswith("ffh_") or len(token) > 200:
        return None
    token_id = token.split("_", 2)[1] if token.count("_") >= 2 else ""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.secret_hash, _hash(token)):
        return None
    if row.last_used_at is None or now - row.last_used_at > 60:  # spare a write per request
        row.last_used_at = now
    return to_record(ApiTokenRecord, row)


def find_live_token(session: Session, token_id: str) -> ApiTokenRecord | None:
    """The token ``token_id`` unless it is unknown or revoked (long-lived streams re-check
    the token they were opened with)."""
    row = session.get(ApiToken, token_id)
    if row is None or row.revoked_at is not None:
        return None
    return to_record(ApiTokenRecord, row)


def revoke_token(session: Session, token_id: str, *, now: float) -> ApiTokenRecord:
    row = session.get(ApiToken, token_id)
    if row is None:
        raise NotFoundError(f"token {token_id!r} not found")
    if row.revoked_at is None:
        row.revoked_at = now
    return to_record(ApiTokenRecord, row)


def list_tokens(session: Session) -> list[ApiTokenRecord]:
    rows = session.scalars(select(ApiToken).order_by(ApiToken.created_at))
    return [to_record(ApiTokenRecord, r) for r in rows]


def record_audit(
    session: Session,
    *,
    actor: str,
    role: str,
    action: str,
    resource: str,
    status: int,
    detail: Mapping[str, Any] | None = None,
    now: float,
) -> int:
    """Append an audit entry; its id."""
    entry = AuditEntry(
        ts=now,
        actor=actor[:128],
        role=role[:16],
        action=action[:16],
        resource=resource[:2000],
        status=status,
        detail=dict(detail or {}),
    )
    session.add(entry)
    session.flush()
    return entry.id


def update_audit_detail(session: Session, entry_id: int, detail: Mapping[str, Any]) -> None:
    """Replace the detail of an entry (the running count of a tallied entry)."""
    entry = session.get(AuditEntry, entry_id)
    if entry is not None:
        entry.detail = dict(detail)


def list_audit(
    session: Session,
    *,
    actor: str | None = None,
    since: float | None = None,
    resource: str | None = None,
    action: str | None = None,
    limit: int = 100,
    offset: int = 0,
) -> Page[AuditRecord]:
    """Audit entries, newest first (``resource`` and ``action``: exactly those)."""
    conds = []
    if actor is not None:
        conds.append(AuditEntry.actor == actor)
    if resource is not None:
        conds.append(AuditEntry.resource == resource)
    if action is not None:
        conds.append(AuditEntry.action == action)
    if since is not None:
        conds.append(AuditEntry.ts >= since)
    total = session.scalar(select(func.count()).select_from(AuditEntry).where(*conds)) or 0
    rows = session.scalars(
        select(AuditEntry).where(*conds).order_by(AuditEntry.id.desc()).limit(limit).offset(offset)
    )
    return Page(
        items=[to_record(AuditRecord, r) for r in rows], total=total, limit=limit, offset=offset
    )


def create_training_run(
    session: Session,
    *,
    run_id: str,
    model_name: str,
    state: str = "pending",
    trigger: str = "manual",
    config: Mapping[str, Any] | None = None,
    now: float,
) -> TrainingRunRecord:
    if session.get(TrainingRun, run_id) is not None:
        raise ConflictError(f"training run {run_id!r} exists")
    row = TrainingRun(
        run_id=run_id,
        model_name=model_name,
        state=state,
        trigger=trigger,
        config=dict(config or {}),
        metrics={},
        detail="",
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return to_record(TrainingRunRecord, row)


def update_training_run(
    session: Session, run_id: str, *, now: float, **changes: Any
) -> TrainingRunRecord:
    unknown = set(changes) - _RUN_FIELDS
    if unknown:
        raise RegistryInputError(f"cannot update training run fields {sorted(unknown)}")
    row = session.get(TrainingRun, run_id)
    if row is None:
        raise NotFoundError(f"training run {run_id!r} not found")
    for key, value in changes.items():
        setattr(row, key, value)
    row.updated_at = now
    session.flush()
    return to_record(TrainingRunRecord, row)


def get_training_run(session: Session, run_id: str) -> TrainingRunRecord:
    row = session.get(TrainingRun, run_id)
    if row is None:
        raise NotFoundError(f"training run {run_id!r} not found")
    return to_record(TrainingRunRecord, row)


def list_training_runs(
    session: Session, *, model_name: str | None = None, limit: int = 100, offset: int = 0
) -> Page[TrainingRunRecord]:
    conds = [TrainingRun.model_name == model_name] if model_name is not None else []
    total = session.scalar(select(func.count()).select_from(TrainingRun).where(*conds)) or 0
    rows = session.scalars(
        select(TrainingRun)
        .where(*conds)
        .order_by(TrainingRun.created_at.desc(), TrainingRun.run_id)
        .limit(limit)
        .offset(offset)
    )
    return Page(
        items=[to_record(TrainingRunRecord, r) for r in rows],
        total=total,
        limit=limit,
        offset=offset,
    )
