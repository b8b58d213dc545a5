"""Bearer API tokens with roles (viewer < operator < admin) and the audit log middleware."""

from __future__ import annotations

import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from fastapi import Depends, FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cloud_hub.api.audit_tally import (
    AnonymousAuditTally,
    AuditInsert,
    AuditUpdate,
    RefusalKind,
)
from cloud_hub.api.body_gate import AUTHENTICATED_TOKEN
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError
from cloud_hub.api.routing import ROLE_ATTRIBUTE
from cloud_hub.registry import ApiTokenRecord, admin
from cloud_hub.registry.errors import DatabaseError

__all__ = ["MUTATING_METHODS", "Principal", "flush_audit", "install_audit", "require"]

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
    setattr(dependency, ROLE_ATTRIBUTE, role)  # read by the body gate (cloud_hub.api.routing)
    return dependency


def install_audit(app: FastAPI) -> None:
    """Write every mutating call (who, what, when, outcome) to the audit log; refused calls
    without a valid token are tallied instead (:mod:`cloud_hub.api.audit_tally`), so
    anonymous traffic cannot grow the log without bound. :func:`flush_audit` writes the
    counts still held (at shutdown)."""
    anonymous = _AnonymousAudit(app)
    app.state.anonymous_audit = anonymous

    @app.middleware("http")
    async def audit(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        response = await call_next(request)
        if request.method not in MUTATING_METHODS:
            return response
        principal: Principal | None = getattr(request.state, "principal", None)
        token = request.scope.get("state", {}).get(AUTHENTICATED_TOKEN)
        if principal is None and token is not None:  # refused after the body gate let it in
            principal = Principal(name=token.name, role=token.role, token_id=token.token_id)
        ctx = _context(request)
        if principal is None and response.status_code >= 400:
            await anonymous.refused(request, response.status_code)
            return response
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
        except DatabaseError:
            log.exception("audit entry for %s %s not written", request.method, request.url.path)
        return response


def flush_audit(app: FastAPI) -> None:
    """Write the anonymous refusal counts not written yet (call at shutdown)."""
    anonymous: _AnonymousAudit | None = getattr(app.state, "anonymous_audit", None)
    if anonymous is not None:
        anonymous.flush()


class _AnonymousAudit:
    """The I/O around :class:`AnonymousAuditTally`: one row per kind and window, its
    ``detail.count`` kept up to date."""

    def __init__(self, app: FastAPI) -> None:
        self._app = app
        self._tally = AnonymousAuditTally()
        self._rows: dict[tuple[RefusalKind, float], int] = {}
        self._lock = threading.Lock()  # flush() runs on another thread than the event loop

    def _context(self) -> ApiContext:
        ctx: ApiContext = self._app.state.context
        return ctx

    async def refused(self, request: Request, status: int) -> None:
        route = request.scope.get("route")
        resource = getattr(route, "path", None) or request.url.path[:200]
        kind = RefusalKind(request.method, str(resource), status)
        with self._lock:
            decision = self._tally.refused(kind, now=self._context().clock())
        if decision is None:
            return
        try:
            await run_in_threadpool(self._write, decision)
        except DatabaseError:
            log.exception("audit tally for %s %s not written", kind.method, kind.resource)

    def flush(self) -> None:
        with self._lock:
            pending = self._tally.pending()
        for update in pending:
            try:
                self._write(update)
            except DatabaseError:
                log.exception("audit tally for %s not written", update.kind.resource)

    def _write(self, decision: AuditInsert | AuditUpdate) -> None:
        ctx = self._context()
        kind, key = decision.kind, (decision.kind, decision.window_start)
        count = decision.count if isinstance(decision, AuditUpdate) else 1
        detail = {"anonymous_refusals": count, "since": decision.window_start}
        with ctx.registry.session() as s:
            with self._lock:
                row = self._rows.get(key)
            if row is not None:
                admin.update_audit_detail(s, row, detail)
                return
            row = admin.record_audit(
                s,
                actor="anonymous",
                role="",
                action=kind.method,
                resource=kind.resource,
                status=kind.status,
                detail=detail,
                now=ctx.clock(),
            )
        with self._lock:
            self._rows = {k: v for k, v in self._rows.items() if k[1] == decision.window_start}
            self._rows[key] = row
