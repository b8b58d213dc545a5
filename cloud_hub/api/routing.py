"""What the route table says about a request before any route code runs.

- :func:`required_role`: the role a matched operation demands (from its
  :func:`cloud_hub.api.auth.require` dependency), so the body gate can answer 401/403 before
  a body is read or parsed: a caller without the right learns nothing from validation.
- :func:`allowed_methods`: the methods a path really has, for ``OPTIONS`` and for the
  ``Allow`` header of a 405 (Starlette names only the first route that matched the path).
- :class:`MethodGate`: the ASGI middleware answering those two.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import lru_cache

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.responses import Response
from starlette.routing import BaseRoute, compile_path
from starlette.types import ASGIApp, Receive, Scope, Send

from cloud_hub.api.errors import error_response

__all__ = ["ROLE_ATTRIBUTE", "MethodGate", "allowed_methods", "required_role", "role_of_route"]

ROLE_ATTRIBUTE = "fedfleet_required_role"  # set on the dependency ``require(role)`` returns


def _roles(dependant: Dependant) -> Iterable[str]:
    for dep in dependant.dependencies:
        role = getattr(dep.call, ROLE_ATTRIBUTE, None)
        if isinstance(role, str):
            yield role
        yield from _roles(dep)


@lru_cache(maxsize=1024)
def _path_regex(path: str) -> re.Pattern[str]:
    return compile_path(path)[0]


def _operations(routes: Sequence[BaseRoute], path: str) -> Iterator[tuple[set[str], BaseRoute]]:
    """(methods, route) of every operation whose path template matches ``path`` (routers
    included with a prefix are flattened as FastAPI itself routes them)."""
    for context in iter_route_contexts(routes):
        template, methods = context.path, context.methods
        if template and methods and _path_regex(template).match(path):
            yield set(methods), context.original_route


def role_of_route(route: BaseRoute) -> str | None:
    """The role an operation's :func:`~cloud_hub.api.auth.require` dependency names."""
    return next(iter(_roles(route.dependant)), None) if isinstance(route, APIRoute) else None


def required_role(routes: Sequence[BaseRoute], scope: Scope) -> str | None:
    """The role the operation ``scope`` reaches requires; ``None``: none or no such route."""
    for methods, route in _operations(routes, scope["path"]):
        if scope["method"] in methods:
            return role_of_route(route)
    return None


def allowed_methods(routes: Sequence[BaseRoute], scope: Scope) -> set[str]:
    """Every method some route serves at ``scope``'s path, plus ``OPTIONS``; empty when no
    route has the path (or a mounted app owns it)."""
    methods: set[str] = set()
    for served, _ in _operations(routes, scope["path"]):
        methods |= served
    return methods | {"OPTIONS"} if methods else methods


class MethodGate:
    """``OPTIONS`` answers 204 with the path's real methods; a method the path does not have
    answers 405 with them, whichever route Starlette would have tried first."""

    def __init__(self, app: ASGIApp, *, routes: Callable[[], Sequence[BaseRoute]]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        methods = allowed_methods(self.routes(), scope)
        method: str = scope["method"]
        if not methods or (method in methods and method != "OPTIONS"):
            await self.app(scope, receive, send)
            return
        allow = {"Allow": ", ".join(sorted(methods))}
        response: Response
        if method == "OPTIONS":
            response = Response(status_code=204, headers=allow)
        else:
            response = error_response(405, f"{method} is not allowed here", headers=allow)
        await response(scope, receive, send)
