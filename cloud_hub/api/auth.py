"""Bearer API tokens with roles (viewer < operator < admin) and the audit log middleware."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError

from cloud_hub.api.body_gate import AUTHENTICATED_TOKEN
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError
from cloud_hub.registry import ApiTokenRecord, admin

__all__ = ["MUTATING_METHODS", "Principal", "install_audit", "require"]

log = logging.getLogger(__name__)

MUTATING_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
_bearer = HTTPBearer(auto_error=False, description="API token: `cloud-hub token create`")


@dataclass(frozen=True)
class Principal:
    """Who is calling."""

    name: str
    role: str
    token_id: str


def _context(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


def require(role: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting callers whose token has at least ``role``."""
    if role not in admin.ROLES:
        raise ValueError(f"unknown role {role!r}")

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Depends(_bearer),
    ) -> Principal:
        challenge = {"WWW-Authenticate": "Bearer"}
        if credentials is None or credentials.scheme.lower() != "bearer":
            raise ApiError(401, "missing bearer token", headers=challenge)
        ctx = _context(request)

        def lookup() -> ApiTokenRecord | None:
            with ctx.registry.session() as s:
                return admin.authenticate_token(s, credentials.credentials, now=ctx.clock())

        # the body gate already checked the token of a call with a body (R9)
        record = request.scope.get("state", {}).get(AUTHENTICATED_TOKEN)
        if record is None:
            record = await run_in_threadpool(lookup)
        if record is None:
            raise ApiError(401, "invalid or revoked token", headers=challenge)
        principal = Principal(name=record.name, role=record.role, token_id=record.token_id)
        request.state.principal = principal
        if not admin.role_allows(record.role, role):
            raise ApiError(
                403, f"this call needs the {role} role; token {record.name!r} is {record.role}"
            )
        return principal

    dependency.__name__ = f"require_{role}"
    return dependency


def install_audit(app: FastAPI) -> None:
    """Write every mutating call (who, what, when, outcome) to the audit log."""

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method in MUTATING_METHODS:
            principal: Principal | None = getattr(request.state, "principal", None)
            token = request.scope.get("state", {}).get(AUTHENTICATED_TOKEN)
            if principal is None and token is not None:  # refused after the body gate let it in
                principal = Principal(name=token.name, role=token.role, token_id=token.token_id)
            ctx = _context(request)
            query = str(request.url.query)[:500]

            def write() -> None:
                with ctx.registry.session() as s:
                    admin.record_audit(
                        s,
                        actor=principal.name if principal else "anonymous",
                        role=principal.role if principal else "",
                        action=request.method,
                        resource=request.url.path,
                        status=response.status_code,
                        detail={"query": query} if query else {},
                        now=ctx.clock(),
                    )

            try:
                await run_in_threadpool(write)
            except SQLAlchemyError:
                log.exception("audit entry for %s %s not written", request.method, request.url.path)
        return response
