"""The SuperLink runs its quick request handlers on its event loop, not in worker threads.

Why: Flower 1.41's SuperLink endpoints are plain functions, so FastAPI and Flower's protobuf
route hand every one of them — and every plain dependency and the node-signature check — to
a worker thread and back (``run_in_threadpool``): several thread hand-offs per request.
Measured on 2 cores with 6 SuperNodes during SecAgg+ rounds: waking those threads was ~40 %
of the SuperLink's busy samples, more than the handlers themselves. With Flower's in-memory
state the handlers only touch memory (sub-millisecond), so running them in place is cheaper
than the hand-off and blocks nothing for longer than the hand-off itself did.

:func:`run_quick_handlers_inline` makes ``run_in_threadpool`` (where FastAPI, its dependency
solver, Flower's protobuf route and Flower's node authentication look it up) call the
Fleet and runtime functions (:data:`QUICK_MODULES`) directly — except the pulls that
:mod:`shared.flower_long_poll` may hold for up to a second (:data:`HOLDING_ENDPOINTS`); the
Control API and anything else keep Flower's worker thread. Plain generator dependencies are
entered in place. Only for a SuperLink on Flower's in-memory state
(a database file means I/O in handlers: :func:`shared.warm_superexec.start_superlink` leaves
threads on then).
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractContextManager, asynccontextmanager
from typing import Any, TypeVar

__all__ = [
    "HOLDING_ENDPOINTS",
    "QUICK_MODULES",
    "THREADPOOL_USERS",
    "run_quick_handlers_inline",
    "runs_in_place",
]

T = TypeVar("T")

#: (module, function) of the endpoints that may wait for a push: they keep their thread.
HOLDING_ENDPOINTS = frozenset(
    {
        ("flwr.superlink.routers.fleet.router", "fleet_pull_messages"),
        ("flwr.supercore.routers.runtime.router", "pull_messages"),
    }
)
#: Modules whose ``run_in_threadpool`` serves the SuperLink's Fleet and runtime requests.
THREADPOOL_USERS = (
    "fastapi.routing",
    "fastapi.dependencies.utils",
    "flwr.supercore.protobuf.routing",
    "flwr.superlink.routers.fleet.node_auth",
)


#: Modules whose plain functions serve Fleet and runtime requests and only touch memory:
#: their endpoints (but :data:`HOLDING_ENDPOINTS`) and dependencies run in place. Anything
#: else — the Control API's endpoints, account and authentication plugins — keeps Flower's
#: worker thread.
QUICK_MODULES = frozenset(
    {
        "flwr.superlink.routers.fleet.router",
        "flwr.superlink.routers.fleet.node_auth",
        "flwr.supercore.routers.runtime.router",
        "flwr.supercore.dependencies.runtime",
        "flwr.supercore.dependencies.version",
        "flwr.supercore.protobuf.translation",
        "flwr.superlink.dependencies.linkstate",
    }
)


def runs_in_place(func: Callable[..., Any]) -> bool:
    """Whether ``func`` (an endpoint, a dependency or Flower's node check) runs in place."""
    target = getattr(func, "func", func)  # a functools.partial around the endpoint
    module = getattr(target, "__module__", "")
    return module in QUICK_MODULES and (module, getattr(target, "__name__", "")) not in (
        HOLDING_ENDPOINTS
    )


def run_quick_handlers_inline() -> None:
    """Patch this process's FastAPI/Flower SuperLink as the module doc says."""
    from starlette.concurrency import run_in_threadpool as in_thread

    async def run_in_place(func: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        if runs_in_place(func):
            return func(*args, **kwargs)
        return await in_thread(func, *args, **kwargs)

    @asynccontextmanager
    async def enter_in_place(cm: AbstractContextManager[T]) -> AsyncIterator[T]:
        with cm as value:
            yield value

    for name in THREADPOOL_USERS:
        module = importlib.import_module(name)
        if getattr(module, "run_in_threadpool", None) is not in_thread:  # not Flower 1.41's
            raise SystemExit(f"flower_inline: {name} does not use starlette's run_in_threadpool")
        module.run_in_threadpool = run_in_place  # type: ignore[attr-defined]
    dependencies = importlib.import_module("fastapi.dependencies.utils")
    if not hasattr(dependencies, "contextmanager_in_threadpool"):
        raise SystemExit("flower_inline: FastAPI enters generator dependencies differently")
    dependencies.contextmanager_in_threadpool = enter_in_place  # type: ignore[attr-defined]
