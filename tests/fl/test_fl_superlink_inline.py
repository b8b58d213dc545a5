"""Quick SuperLink handlers run on the event loop (shared.flower_inline): no thread hop for
them, a worker thread still for the pulls that may be held, and the same answers to real
Fleet/runtime/Control requests as with Flower's threads."""

from __future__ import annotations

import asyncio
import importlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared import flower_inline
from tests.fl.test_fl_superlink_middleware import _answers, _flower_app


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever the test patches in FastAPI/Flower modules is put back afterwards."""
    for name in flower_inline.THREADPOOL_USERS:
        module = importlib.import_module(name)
        monkeypatch.setattr(module, "run_in_threadpool", module.run_in_threadpool)
    utils = importlib.import_module("fastapi.dependencies.utils")
    monkeypatch.setattr(utils, "contextmanager_in_threadpool", utils.contextmanager_in_threadpool)


def _thread_of(run: object, func: object) -> int:
    async def call() -> int:
        loop_thread = threading.get_ident()
        ran_in: int = await run(func)  # type: ignore[operator]
        return int(ran_in == loop_thread)

    return asyncio.run(call())


def _stand_in(module: str, name: str) -> object:
    def stand_in() -> int:
        return threading.get_ident()

    stand_in.__module__, stand_in.__name__ = module, name  # the identity Flower's has
    return stand_in


@pytest.mark.usefixtures("restored")
def test_fleet_and_runtime_handlers_run_in_place_the_rest_keeps_a_thread() -> None:
    fleet_router = importlib.import_module("flwr.superlink.routers.fleet.router")
    runtime_router = importlib.import_module("flwr.supercore.routers.runtime.router")
    control_router = importlib.import_module("flwr.superlink.routers.control.router")
    flower_inline.run_quick_handlers_inline()
    routing = importlib.import_module("fastapi.routing")
    in_place = [
        (fleet_router.__name__, fleet_router.fleet_push_object.__name__),
        (runtime_router.__name__, "push_object"),
        ("flwr.superlink.routers.fleet.node_auth", "authenticate_node"),
        ("flwr.superlink.dependencies.linkstate", "get_linkstate"),
    ]
    threaded = [
        (fleet_router.__name__, fleet_router.fleet_pull_messages.__name__),  # may be held
        (runtime_router.__name__, runtime_router.pull_messages.__name__),  # may be held
        (control_router.__name__, "list_runs"),  # the Control API: Flower's threads
        ("flwr.superlink.dependencies.account", "get_account"),  # may call a plugin
        (__name__, "anything_else"),
    ]
    for module, name in in_place:
        assert _thread_of(routing.run_in_threadpool, _stand_in(module, name)) == 1, name
    for module, name in threaded:
        assert _thread_of(routing.run_in_threadpool, _stand_in(module, name)) == 0, name


@pytest.mark.usefixtures("restored")
def test_generator_dependencies_are_entered_in_place() -> None:
    flower_inline.run_quick_handlers_inline()
    utils = importlib.import_module("fastapi.dependencies.utils")
    events: list[str] = []

    @contextmanager
    def dependency() -> Iterator[int]:
        events.append("enter")
        yield threading.get_ident()
        events.append("exit")

    async def use() -> bool:
        async with utils.contextmanager_in_threadpool(dependency()) as value:
            return bool(value == threading.get_ident())

    assert asyncio.run(use()) is True and events == ["enter", "exit"]


@pytest.mark.usefixtures("restored")
def test_the_superlink_answers_as_with_threads() -> None:
    with_threads = _answers(_flower_app())
    flower_inline.run_quick_handlers_inline()
    in_place = _answers(_flower_app())
    assert [a[:2] for a in in_place] == [a[:2] for a in with_threads]
