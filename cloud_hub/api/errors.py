"""JSON errors for every failure: ``{"error": code, "message": text, "status": n}``.

Domain errors are mapped to 4xx; database outages to 503. The catch-all handler is the
last safety net — the fuzz test proves no request reaches it.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from cloud_hub.errors import HubConfigError, HubError, RolloutError
from cloud_hub.registry.errors import (
    ConflictError,
    DatabaseConflictError,
    DatabaseError,
    DatabaseUnavailableError,
    DatabaseValueError,
    NotFoundError,
    RegistryInputError,
)
from shared.errors import FedfleetError

__all__ = ["ApiError", "error_response", "install_error_handlers"]

log = logging.getLogger(__name__)

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid",
    500: "internal",
    501: "not_available",
    503: "unavailable",
}


class ApiError(Exception):
    """Raised by route code for an answer other than success."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def error_response(
    status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
) -> JSONResponse:
    body = {"error": _CODES.get(status, "error"), "message": message, "status": status, **extra}
    return JSONResponse(body, status_code=status, headers=headers)


def _status_of(exc: Exception) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | RolloutError):
        return 404 if "not found" in str(exc) else 409
    if isinstance(exc, RegistryInputError | HubConfigError | FedfleetError):
        return 422
    return 400


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.message, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        headers = dict(exc.headers) if exc.headers else None
        return error_response(exc.status_code, str(exc.detail), headers=headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [
            {"loc": [str(p) for p in e.get("loc", ())], "msg": str(e.get("msg", ""))}
            for e in exc.errors()
        ]
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        what = str(first.get("msg", "invalid request"))
        message = f"{where}: {what}" if where else what
        return error_response(422, message, problems=problems)

    @app.exception_handler(HubError)
    async def _hub(_: Request, exc: HubError) -> JSONResponse:
        return error_response(_status_of(exc), str(exc))

    @app.exception_handler(FedfleetError)
    async def _shared(_: Request, exc: FedfleetError) -> JSONResponse:
        return error_response(422, str(exc))

    @app.exception_handler(DatabaseError)
    async def _db(_: Request, exc: DatabaseError) -> JSONResponse:
        if isinstance(exc, DatabaseConflictError):
            return error_response(409, "conflicting write; retry")
        if isinstance(exc, DatabaseValueError):
            return error_response(422, "a value is not acceptable to the database")
        if isinstance(exc, DatabaseUnavailableError):
            log.warning("database unavailable: %s", exc)
            return error_response(503, "the registry database is unavailable; retry")
        log.exception("database error")
        return error_response(503, "registry error; retry")

    @app.exception_handler(Exception)
    async def _any(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled API error")
        return error_response(500, "internal error (logged)")
