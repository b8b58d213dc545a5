"""The gate every request body passes before route code sees it (an ASGI middleware).

FastAPI reads and parses a body before it runs a route's dependencies, and a size check on
``Content-Length`` alone misses chunked bodies, which have none. So, in this order, for
every request that carries a body:

1. a body that declares more than the route's limit is refused with 413 unread;
2. under ``/api/`` (except enrollment, whose credential is the token inside the body) the
   caller's API token is checked first: without a valid one the answer is 401, with one
   whose role the operation does not admit 403, and no byte of the body is read (R9, #15:
   validation never answers before authentication and authorization);
3. bytes are counted as they arrive: past the limit the answer is 413 and the rest is never
   read, so at most ``limit`` bytes are ever held (R9);
4. a JSON body is decoded once with the strict decoder: ``NaN``, ``Infinity`` and numbers
   that overflow to infinity (``1e999``) are refused with 422 (R14).

The authenticated token is left in ``scope["state"]`` for :func:`cloud_hub.api.auth.require`,
which then checks the role without a second lookup.
"""

from __future__ import annotations

import email.message
import logging
from collections.abc import Callable
from dataclasses import dataclass

from fastapi.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import error_response
from cloud_hub.registry import ApiTokenRecord, admin
from shared.canonical import parse_json
from shared.errors import MalformedMessageError, NonFiniteNumberError

__all__ = ["AUTHENTICATED_TOKEN", "BodyLimits", "BodyTooLargeError", "RequestBodyGate"]

log = logging.getLogger(__name__)

AUTHENTICATED_TOKEN = "fedfleet.api_token"  # key in scope["state"]
_PROTECTED_PREFIX = "/api/"
_PUBLIC_PATHS = ("/api/v1/enroll",)  # the enrollment token in the body is the credential


class BodyTooLargeError(HTTPException):
    """Raised from ``receive`` once a body passes its limit. An ``HTTPException`` because
    FastAPI lets those through its body parsing unchanged (anything else becomes a 400)."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body over {limit} bytes")


@dataclass(frozen=True)
class BodyLimits:
    """How many body bytes a request may send: JSON calls are small, uploads are not."""

    json_bytes: int = 1024 * 1024
    upload_bytes: int = 512 * 1024 * 1024
    upload_suffix: str = "/upload"

    def for_path(self, path: str) -> int:
        return self.upload_bytes if path.endswith(self.upload_suffix) else self.json_bytes


class _CountingReceive:
    """``receive`` that counts body bytes and raises :class:`BodyTooLargeError` past
    ``limit`` (before handing the offending chunk on)."""

    def __init__(self, receive: Receive, limit: int) -> None:
        self._receive = receive
        self.limit = limit
        self.seen = 0

    async def __call__(self) -> Message:
        message = await self._receive()
        if message["type"] == "http.request":
            self.seen += len(message.get("body", b""))
            if self.seen > self.limit:
                log.warning(
                    "refused a request body: over %d bytes, the rest is not read", self.limit
                )
                raise BodyTooLargeError(self.limit)
        return message

    async def read_all(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            message = await self()
            if message["type"] != "http.request":
                return b"".join(chunks)  # the client left: the app sees an empty body
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands the already-read body on once, then the real channel (so
    disconnects are still seen)."""
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


def _headers(scope: Scope) -> dict[str, str]:
    return {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}


def _has_body(headers: dict[str, str]) -> bool:
    return "transfer-encoding" in headers or headers.get("content-length", "0") not in ("", "0")


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI decodes a body without a content type as JSON too
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _bearer(headers: dict[str, str]) -> str | None:
    scheme, _, credentials = headers.get("authorization", "").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" and credentials.strip() else None


class RequestBodyGate:
    """The ASGI middleware (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        context: ApiContext,
        limits: BodyLimits | None = None,
        protected: Callable[[str], bool] | None = None,
        required_role: Callable[[Scope], str | None] = lambda scope: None,
    ) -> None:
        self.app = app
        self.context = context
        self.limits = limits or BodyLimits(upload_bytes=context.max_upload_bytes)
        self.protected = protected or _needs_token
        self.required_role = required_role

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = _headers(scope)
        if not _has_body(headers):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        limit = self.limits.for_path(path)
        refusal = await self._refuse_before_reading(scope, headers, limit)
        if refusal is not None:
            await refusal(scope, receive, send)
            return
        counted = _CountingReceive(receive, limit)
        if path.endswith(self.limits.upload_suffix) or not _is_json(headers.get("content-type")):
            await self.app(scope, counted, send)  # streamed by the route: counted as it goes
            return
        try:
            body = await counted.read_all()
        except BodyTooLargeError as exc:
            await error_response(413, str(exc.detail))(scope, receive, send)
            return
        try:
            parse_json(body, max_bytes=limit)
        except NonFiniteNumberError as exc:
            log.warning("refused %s %s: %s", scope["method"], path, exc)
            await error_response(422, f"body: {exc}")(scope, receive, send)
            return
        except MalformedMessageError:
            pass  # FastAPI answers malformed JSON with its own 422
        await self.app(scope, _replay(body, receive), send)

    async def _refuse_before_reading(
        self, scope: Scope, headers: dict[str, str], limit: int
    ) -> Response | None:
        """413 for a body declared too large, 401 for a protected call without a valid
        token (R9); otherwise ``None``, with the token left in ``scope["state"]``."""
        method, path = scope["method"], scope["path"]
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            log.warning("refused %s %s: declares %s body bytes > %d", method, path, declared, limit)
            return error_response(413, f"request body over {limit} bytes")
        if not self.protected(path):
            return None
        record = await self._authenticate(headers)
        if record is None:
            log.warning("refused %s %s: body sent without a valid API token", method, path)
            challenge = {"WWW-Authenticate": "Bearer"}
            return error_response(401, "missing, invalid or revoked token", headers=challenge)
        # known before the role check: the audit log names who was refused
        scope.setdefault("state", {})[AUTHENTICATED_TOKEN] = record
        role = self.required_role(scope)
        if role is not None and not admin.role_allows(record.role, role):
            log.warning("refused %s %s: the %s role is needed", method, path, role)
            return error_response(
                403, f"this call needs the {role} role; token {record.name!r} is {record.role}"
            )
        return None

    async def _authenticate(self, headers: dict[str, str]) -> ApiTokenRecord | None:
        token = _bearer(headers)
        if token is None:
            return None
        ctx = self.context

        def lookup() -> ApiTokenRecord | None:
            with ctx.registry.session() as s:
                return admin.authenticate_token(s, token, now=ctx.clock())

        return await run_in_threadpool(lookup)


def _needs_token(path: str) -> bool:
    public = any(path == p or path.startswith(p + "/") for p in _PUBLIC_PATHS)
    return path.startswith(_PROTECTED_PREFIX) and not public
