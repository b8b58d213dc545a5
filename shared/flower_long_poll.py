"""The SuperLink answers a pull when there is something complete to pull (long polling).

Why: Flower 1.41 moves every message by polling. A SuperNode asks the SuperLink's Fleet API
for work and, finding none, sleeps and asks again; once it sees a message it pulls the
message's objects, which the ServerApp pushes only after the message itself, so the first
pull often finds them missing and retries later; the ServerApp polls for replies the same
way. On the Deployment Engine that is a wait on every hop of every SecAgg+ stage (four per
round), and each empty poll costs both ends CPU (measured with 6 SuperNodes on 2 cores: a
third of the SuperLink's requests were empty pulls).

:func:`hold_pulls_until_work` patches this process's SuperLink (Flower 1.41
``fleet_handlers.pull_messages`` and ``runtime_handlers.pull_messages``) so that a pull
that would return nothing, or a message whose objects have not all arrived, waits up to
``hold_s`` for the push that completes it, then answers as Flower would. Pushes
(``push_messages``/``push_object`` on both APIs) wake the waiting pulls. Nothing else
changes: the same handlers build the answers, and a client that does not know about
holding simply finds answers later and fuller. At most ``max_holders`` pulls wait at a time
(each holds a worker thread); the others answer at once as before.

The ServerApp's side is the same whether it runs as its own process (its requests reach
``runtime_handlers`` over HTTP) or in the SuperLink's process
(:mod:`cloud_hub.fl.inprocess_serverapp` calls ``runtime_handlers``' functions directly,
looked up per call): its pushes go through the wrapped handlers and wake the held SuperNode
pulls, and its pull of replies waits on the signal of the SuperNodes' pushes.

A SuperNode tells a held answer from an immediate one by how long it took
(:func:`was_held`): after a held empty answer it asks again at once, otherwise it backs off.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "DEFAULT_HOLD_S",
    "DEFAULT_MAX_HOLDERS",
    "PushSignal",
    "hold_pulls_until_work",
    "was_held",
]

#: Seconds a pull with nothing (complete) to return waits for a push.
DEFAULT_HOLD_S = 1.0
#: Pulls waiting at once (each holds one of the HTTP server's worker threads; Starlette has 40).
DEFAULT_MAX_HOLDERS = 16


def was_held(elapsed_s: float, hold_s: float = DEFAULT_HOLD_S) -> bool:
    """True when an empty answer took long enough that the SuperLink must have held it."""
    return elapsed_s >= hold_s / 2


class PushSignal:
    """Wakes waiting pulls when anything is pushed; bounds how many wait."""

    def __init__(self, max_holders: int = DEFAULT_MAX_HOLDERS) -> None:
        self._changed = threading.Condition()
        self._pushes = 0
        self._holders = 0
        self._max_holders = max_holders

    def pushed(self) -> None:
        with self._changed:
            self._pushes += 1
            self._changed.notify_all()

    def count(self) -> int:
        with self._changed:
            return self._pushes

    def wait_after(self, seen: int, deadline: float) -> bool:
        """Wait until a push after ``seen`` pushes, or ``deadline``; whether one came."""
        with self._changed:
            while self._pushes == seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._changed.wait(left)
            return True

    @contextmanager
    def holding(self) -> Iterator[bool]:
        """Whether this pull may wait (fewer than ``max_holders`` already do)."""
        with self._changed:
            allowed = self._holders < self._max_holders
            self._holders += allowed
        try:
            yield allowed
        finally:
            if allowed:
                with self._changed:
                    self._holders -= 1


def _objects_complete(store: Any, trees: Any) -> bool:
    """Whether every object of every message tree has its content in ``store``."""
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree

    return all(store.get(node.object_id) for tree in trees for node in iterate_object_tree(tree))


def held_pull(
    pull: Callable[[], Any],
    store: Any,
    signal: PushSignal,
    hold_s: float,
) -> Any:
    """``pull()``'s answer once it holds a message whose objects are all in ``store``, or
    the last answer after ``hold_s`` (an empty one: pull again; an incomplete one: the
    caller retries its objects, as Flower does)."""
    deadline = time.monotonic() + hold_s
    with signal.holding() as may_wait:
        seen = signal.count()
        answer = pull()
        while may_wait:
            if answer.messages_list and _objects_complete(store, answer.message_object_trees):
                return answer
            if not signal.wait_after(seen, deadline):
                return answer
            seen = signal.count()
            if not answer.messages_list:  # a message taken is never handed out twice
                answer = pull()
        return answer


def _wrap_push(module: Any, name: str, signal: PushSignal) -> None:
    original = getattr(module, name)

    def push(*args: Any, **kwargs: Any) -> Any:
        try:
            return original(*args, **kwargs)
        finally:
            signal.pushed()

    setattr(module, name, push)


def hold_pulls_until_work(
    hold_s: float = DEFAULT_HOLD_S, max_holders: int = DEFAULT_MAX_HOLDERS
) -> tuple[PushSignal, PushSignal]:
    """Make this process's Flower SuperLink hold empty or incomplete pulls (module doc);
    the signals of the ServerApp's pushes (they wake SuperNode pulls) and of the SuperNodes'
    pushes (they wake ServerApp pulls)."""
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    names = ("pull_messages", "push_messages", "push_object")
    for module in (fleet_handlers, runtime_handlers):
        if not all(callable(getattr(module, name, None)) for name in names):
            raise SystemExit(f"flower_long_poll: {module.__name__} lacks {names}")
    # what the ServerApp pushes (instructions) wakes the SuperNodes' pulls; what the
    # SuperNodes push (replies) wakes the ServerApp's pulls
    instructions, replies = PushSignal(max_holders), PushSignal(max_holders)
    for module, signal in ((runtime_handlers, instructions), (fleet_handlers, replies)):
        _wrap_push(module, "push_messages", signal)
        _wrap_push(module, "push_object", signal)
    fleet_pull = fleet_handlers.pull_messages
    runtime_pull = runtime_handlers.pull_messages

    def fleet_pull_messages(request: Any, state: Any, store: Any) -> Any:
        pull = lambda: fleet_pull(request=request, state=state, store=store)  # noqa: E731
        return held_pull(pull, store, instructions, hold_s)

    def runtime_pull_messages(request: Any, state: Any, task: Any) -> Any:
        pull = lambda: runtime_pull(request=request, state=state, task=task)  # noqa: E731
        return held_pull(pull, state.object_store, replies, hold_s)

    fleet_handlers.pull_messages = fleet_pull_messages
    runtime_handlers.pull_messages = runtime_pull_messages
    return instructions, replies
