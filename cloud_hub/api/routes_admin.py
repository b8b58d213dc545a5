"""``/api/v1/whoami``, API tokens, the audit log and enrollment tokens."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import BaseModel, Field

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.errors import ApiError
from cloud_hub.api.params import ID_PATTERN, MAX_OFFSET, StrictBody
from cloud_hub.registry import ApiTokenRecord, AuditRecord, Page, admin

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["admin"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
Admin = Annotated[Principal, Depends(require("admin"))]
LABEL_KEY = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$"


class TokenBody(StrictBody):
    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9 ._@-]*$")
    role: str = Field(pattern=r"^(viewer|operator|admin)$")


class NewToken(BaseModel):
    token: str = Field(description="shown once; store it now")
    record: ApiTokenRecord


class EnrollmentTokenBody(StrictBody):
    device_class: str = Field(pattern=ID_PATTERN)
    labels: dict[
        Annotated[str, Field(pattern=LABEL_KEY)],
        Annotated[str, Field(pattern=LABEL_KEY)],
    ] = Field(default_factory=dict, max_length=32)
    ttl_s: int = Field(default=86_400, ge=60, le=30 * 86_400)
    device_id: str | None = Field(default=None, pattern=ID_PATTERN)


@router.get("/whoami", response_model=dict[str, str])
def whoami(who: Viewer) -> dict[str, str]:
    return {"name": who.name, "role": who.role, "token_id": who.token_id}


@router.get("/tokens", response_model=list[ApiTokenRecord])
def list_tokens(request: Request, _: Admin) -> list[ApiTokenRecord]:
    with request.app.state.context.registry.session() as s:
        return admin.list_tokens(s)


@router.post("/tokens", response_model=NewToken, status_code=201)
def create_token(request: Request, body: TokenBody, _: Admin) -> NewToken:
    ctx = request.app.state.context
    with ctx.registry.session() as s:
        record, secret = admin.create_token(s, name=body.name, role=body.role, now=ctx.clock())
    return NewToken(token=secret, record=record)


@router.delete("/tokens/{token_id}", response_model=ApiTokenRecord)
def revoke_token(
    request: Request,
    token_id: Annotated[str, Path(pattern=r"^[0-9a-f]{1,32}$")],
    _: Admin,
) -> ApiTokenRecord:
    ctx = request.app.state.context
    with ctx.registry.session() as s:
        return admin.revoke_token(s, token_id, now=ctx.clock())


@router.get("/audit", response_model=Page[AuditRecord])
def list_audit(
    request: Request,
    _: Admin,
    actor: Annotated[str | None, Query(max_length=128, pattern=r"^[^\x00-\x1f\x7f]*$")] = None,
    since: Annotated[float | None, Query(allow_inf_nan=False, ge=0, le=1e11)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[AuditRecord]:
    with request.app.state.context.registry.session() as s:
        return admin.list_audit(s, actor=actor, since=since, limit=limit, offset=offset)


@router.post("/enrollment-tokens", status_code=201)
def create_enrollment_token(
    request: Request, body: EnrollmentTokenBody, _: Admin
) -> dict[str, Any]:
    """A single-use device enrollment token (the secret is shown once)."""
    service = request.app.state.context.enrollment
    if service is None:
        raise ApiError(409, "enrollment is not configured on this hub (run cloud-hub enroll init)")
    secret, record = service.issue_token(
        device_class=body.device_class,
        labels=body.labels,
        ttl=timedelta(seconds=body.ttl_s),
        device_id=body.device_id,
    )
    expires = getattr(record, "expires_at", None) or getattr(record, "expires", None)
    return {
        "token": secret,
        "device_class": body.device_class,
        "device_id": body.device_id,
        "labels": body.labels,
        "expires": str(expires) if expires is not None else None,
    }
