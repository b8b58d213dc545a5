"""The error answers each operation can really give, written into the OpenAPI document.

FastAPI documents only 200 and its own 422. The hub's answers follow from what an operation
is, so they are derived, not listed by hand per route:

- 401 where a token is needed; 403 where the role needed is above ``viewer``;
- 404 where the path names a resource; 409 for calls that change state;
- 400 (unparseable body), 413 (too large) and 422 (invalid) where a body is taken; 422 where
  parameters are; 503 when the registry is unreachable, for every ``/api/`` call;
- and what a route declares itself (``responses=``), e.g. 404 for a body naming a bundle.

Every error body has one shape (:data:`ERROR_SCHEMA`, see :mod:`cloud_hub.api.errors`).
Maps whose keys have a pattern are closed (``additionalProperties: false``), as validated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts

from cloud_hub.api.routing import role_of_route

__all__ = ["ERROR_SCHEMA", "document_errors"]

ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "message", "status"],
    "properties": {
        "error": {"type": "string", "description": "short code, e.g. not_found"},
        "message": {"type": "string", "description": "what went wrong, for people"},
        "status": {"type": "integer"},
        "problems": {"type": "array", "items": {"type": "object"}},
    },
}
_REF = {"$ref": "#/components/schemas/Error"}
_TEXT = {
    400: "The body could not be parsed",
    401: "Missing, invalid or revoked API token",
    403: "The token's role does not allow this call",
    404: "No such resource",
    409: "The call conflicts with the current state",
    413: "The body is too large",
    422: "The input is invalid",
    503: "The registry is unreachable",
}
_MUTATING = {"post", "put", "patch", "delete"}


def _codes(path: str, method: str, operation: dict[str, Any], role: str | None) -> set[int]:
    codes: set[int] = set()
    if operation.get("security"):
        codes.add(401)
        if role is not None and role != "viewer":
            codes.add(403)
    parameters = operation.get("parameters", [])
    if any(p.get("in") == "path" for p in parameters):
        codes.add(404)
    if parameters:
        codes.add(422)
    if "requestBody" in operation:
        codes |= {400, 413, 422}
    if method in _MUTATING:
        codes.add(409)
    if path.startswith("/api/"):
        codes.add(503)
    return codes


def _close_pattern_maps(node: Any) -> None:
    """pydantic writes a ``dict`` whose keys have a pattern as ``patternProperties`` and
    leaves other keys allowed; the server refuses them, so the document says so."""
    if isinstance(node, dict):
        if "patternProperties" in node and "properties" not in node:
            node.setdefault("additionalProperties", False)
        for value in node.values():
            _close_pattern_maps(value)
    elif isinstance(node, list):
        for value in node:
            _close_pattern_maps(value)


def document_errors(app: FastAPI) -> None:
    """Wrap ``app.openapi`` so the document lists every operation's error answers."""
    build: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        roles = {
            (context.path, method.lower()): role_of_route(context.original_route)
            for context in iter_route_contexts(app.router.routes)
            if isinstance(context.original_route, APIRoute)
            for method in context.methods or ()
        }
        schema.setdefault("components", {}).setdefault("schemas", {})["Error"] = ERROR_SCHEMA
        _close_pattern_maps(schema)
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for code in sorted(_codes(path, method, operation, roles.get((path, method)))):
                    responses.setdefault(str(code), {"description": _TEXT[code]})
                for code, response in responses.items():
                    if code[0] in "45":  # every error answer has the one error shape
                        response["content"] = {"application/json": {"schema": _REF}}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
