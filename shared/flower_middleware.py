"""The SuperLink's HTTP middleware, applied per API: Fleet and runtime calls skip the
Control API's layers.

Why: Flower 1.41's SuperLink serves its Control, Fleet and runtime (ServerAppIo) APIs from
one FastAPI app with nine ``BaseHTTPMiddleware`` layers in front of every request
(``flwr.superlink.main._get_middleware``). Each layer costs a task group and a pair of
memory streams per request; the four Control layers pass every other request through
untouched, as their own code says (each returns ``await call_next(request)`` unless the
path starts with ``/v1/control/``): ``ControlSensitiveResponseMiddleware`` (only its
sensitive Control routes), ``ControlAuthenticationMiddleware``,
``ControlLicenseMiddleware`` and ``ControlEventLogMiddleware``. The two Fleet layers
(``NodeAuthMiddleware``, ``FleetEventLogMiddleware``) likewise touch only ``/v1/fleet/``
paths. Measured on 2 cores, 6 SuperNodes, a SecAgg+ round: the middleware machinery was
about half of the SuperLink's event-loop time, and the SuperLink the largest CPU user of
the federation.

:func:`scope_superlink_middleware` replaces Flower's list with one
:class:`PathScopedMiddleware` that holds Flower's own layers in Flower's order, three
times: every layer for Control (and any other) paths; without the Control layers for
``/v1/fleet/``; without the Control and Fleet layers for ``/v1/runtime/``. Nothing is
reimplemented: a layer that does act on a path is always in that path's stack.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

__all__ = [
    "CONTROL_ONLY",
    "FLEET_ONLY",
    "PathScopedMiddleware",
    "chain_dispatches",
    "scope_superlink_middleware",
    "stack_for_path",
]

#: Flower's middleware classes (by name) that pass through every non-Control request.
CONTROL_ONLY = frozenset(
    {
        "ControlSensitiveResponseMiddleware",
        "ControlAuthenticationMiddleware",
        "ControlLicenseMiddleware",
        "ControlEventLogMiddleware",
    }
)
#: ... and those that pass through every non-Fleet request.
FLEET_ONLY = frozenset({"NodeAuthMiddleware", "FleetEventLogMiddleware"})

FLEET_PREFIX = "/v1/fleet/"
RUNTIME_PREFIX = "/v1/runtime/"


def _name(middleware: Any) -> str:
    return str(getattr(middleware.cls, "__name__", ""))


def stack_for_path(path: str, middleware: Sequence[Any]) -> list[Any]:
    """The layers of ``middleware`` (Flower's ``Middleware`` entries, outermost first) that
    can act on a request for ``path``, in the same order."""
    if path.startswith(FLEET_PREFIX):
        skipped = CONTROL_ONLY
    elif path.startswith(RUNTIME_PREFIX):
        skipped = CONTROL_ONLY | FLEET_ONLY
    else:
        skipped = frozenset()
    return [m for m in middleware if _name(m) not in skipped]


def _dispatch_function(entry: Any) -> Any | None:
    """The ``dispatch`` of a ``BaseHTTPMiddleware`` entry (``None`` for any other kind)."""
    from starlette.middleware.base import BaseHTTPMiddleware

    cls, args, kwargs = entry
    if not (isinstance(cls, type) and issubclass(cls, BaseHTTPMiddleware)):
        return None
    return cls(_never_called, *args, **kwargs).dispatch_func


async def _never_called(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("a chained middleware's own app is never called")


def chain_dispatches(dispatches: Sequence[Any]) -> Any:
    """One ``dispatch`` that runs ``dispatches`` (outermost first) as nested layers would:
    each gets the request and a ``call_next`` that runs the next one; the last one's
    ``call_next`` is the real one. Same requests, responses and exceptions seen by each, one
    ``BaseHTTPMiddleware`` hand-off per request instead of one per layer."""

    async def dispatch(request: Any, call_next: Any) -> Any:
        async def run(index: int, current: Any) -> Any:
            if index == len(dispatches):
                return await call_next(current)
            return await dispatches[index](current, lambda nxt: run(index + 1, nxt))

        return await run(0, request)

    return dispatch


def _compose(app: Any, middleware: Sequence[Any]) -> Any:
    """``app`` wrapped in ``middleware`` (outermost first), as Starlette builds its stack,
    with each run of ``BaseHTTPMiddleware`` layers chained into one (:func:`chain_dispatches`)."""
    from starlette.middleware.base import BaseHTTPMiddleware

    layers: list[Any] = []
    run: list[Any] = []
    for entry in middleware:
        dispatch = _dispatch_function(entry)
        if dispatch is not None:
            run.append(dispatch)
            continue
        if run:
            layers.append((BaseHTTPMiddleware, (), {"dispatch": chain_dispatches(run)}))
            run = []
        layers.append(tuple(entry))
    if run:
        layers.append((BaseHTTPMiddleware, (), {"dispatch": chain_dispatches(run)}))
    for cls, args, kwargs in reversed(layers):
        app = cls(app, *args, **kwargs)
    return app


class PathScopedMiddleware:
    """A pure ASGI middleware: each HTTP request goes through the layers of Flower's list
    that can act on its path (:func:`stack_for_path`); other scopes through all of them."""

    def __init__(self, app: Any, middleware: Sequence[Any]) -> None:
        self._all = _compose(app, middleware)
        self._fleet = _compose(app, stack_for_path(FLEET_PREFIX, middleware))
        self._runtime = _compose(app, stack_for_path(RUNTIME_PREFIX, middleware))

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        path = scope.get("path", "") if scope.get("type") == "http" else ""
        if path.startswith(FLEET_PREFIX):
            await self._fleet(scope, receive, send)
        elif path.startswith(RUNTIME_PREFIX):
            await self._runtime(scope, receive, send)
        else:
            await self._all(scope, receive, send)


def scope_superlink_middleware() -> None:
    """Make this process's Flower SuperLink app use :class:`PathScopedMiddleware` around
    Flower's own middleware list (Flower 1.41 ``flwr.superlink.main._get_middleware``)."""
    from flwr.superlink import main as superlink_main
    from starlette.middleware import Middleware

    flower_middleware: Callable[[], list[Any]] | None = getattr(
        superlink_main, "_get_middleware", None
    )
    if flower_middleware is None:  # a Flower other than 1.41
        raise SystemExit("flower_middleware: this Flower SuperLink builds no middleware list")
    names = {_name(m) for m in flower_middleware()}
    if not names >= (CONTROL_ONLY | FLEET_ONLY):  # the layers this module reasons about
        raise SystemExit(f"flower_middleware: unexpected SuperLink middleware {sorted(names)}")

    def scoped() -> list[Any]:
        return [Middleware(PathScopedMiddleware, middleware=flower_middleware())]

    superlink_main._get_middleware = scoped  # type: ignore[attr-defined]
