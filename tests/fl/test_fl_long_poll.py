"""Long polling on the SuperLink (shared.flower_long_poll): a pull with nothing complete to
return waits for the push that completes it, answers as Flower would otherwise, never hands
out a message twice, and never ties up more than its share of the server's threads."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any

import pytest
from flwr.proto.message_pb2 import ObjectTree

from shared.flower_long_poll import PushSignal, held_pull, hold_pulls_until_work, was_held

HOLD_S = 0.6


@dataclass
class _Answer:
    """The two fields of Flower's PullMessagesResponse that holding reads."""

    messages_list: list[str] = field(default_factory=list)
    message_object_trees: list[ObjectTree] = field(default_factory=list)


class _Link:
    """A message queue and object store standing in for the SuperLink's state."""

    def __init__(self) -> None:
        self.queue: list[tuple[str, ObjectTree]] = []
        self.objects: dict[str, bytes] = {}
        self.pulls = 0

    def pull(self) -> _Answer:
        self.pulls += 1
        if not self.queue:
            return _Answer()
        message, tree = self.queue.pop(0)  # taken: never handed out again
        return _Answer([message], [tree])

    def get(self, object_id: str) -> bytes | None:
        return self.objects.get(object_id)


def _tree(root: str, *children: str) -> ObjectTree:
    return ObjectTree(object_id=root, children=[ObjectTree(object_id=c) for c in children])


def _later(seconds: float, action: Any) -> threading.Thread:
    def run() -> None:
        time.sleep(seconds)
        action()

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_a_complete_message_is_answered_at_once() -> None:
    link = _Link()
    link.queue.append(("m1", _tree("m1", "a")))
    link.objects.update({"m1": b"x", "a": b"y"})
    started = time.monotonic()
    answer = held_pull(link.pull, link, PushSignal(), HOLD_S)
    assert answer.messages_list == ["m1"] and time.monotonic() - started < HOLD_S / 4


def test_an_empty_pull_waits_for_the_push_and_returns_what_it_brought() -> None:
    link, signal = _Link(), PushSignal()

    def push() -> None:
        link.objects.update({"m1": b"x"})
        link.queue.append(("m1", _tree("m1")))
        signal.pushed()

    pusher = _later(0.1, push)
    started = time.monotonic()
    answer = held_pull(link.pull, link, signal, HOLD_S)
    took = time.monotonic() - started
    pusher.join()
    assert answer.messages_list == ["m1"]
    assert 0.08 < took < HOLD_S / 2  # not a poll interval later: when the push came


def test_nothing_pushed_means_an_empty_answer_after_the_hold() -> None:
    link = _Link()
    started = time.monotonic()
    answer = held_pull(link.pull, link, PushSignal(), HOLD_S)
    took = time.monotonic() - started
    assert answer.messages_list == [] and HOLD_S <= took < HOLD_S + 0.3
    assert was_held(took, HOLD_S) and not was_held(0.01, HOLD_S)


def test_a_message_whose_objects_are_missing_is_held_until_they_arrive() -> None:
    link, signal = _Link(), PushSignal()
    link.queue.append(("m1", _tree("m1", "a", "b")))
    link.objects.update({"m1": b"x", "a": b""})  # "a" pre-registered, "b" unknown yet

    def push_objects() -> None:
        link.objects.update({"a": b"1", "b": b"2"})
        signal.pushed()

    pusher = _later(0.1, push_objects)
    answer = held_pull(link.pull, link, signal, HOLD_S)
    pusher.join()
    assert answer.messages_list == ["m1"]
    assert all(link.get(o) for o in ("m1", "a", "b"))
    assert link.pulls == 1  # the message was taken once and held, not pulled again


def test_an_incomplete_message_is_still_answered_when_the_hold_ends() -> None:
    link = _Link()
    link.queue.append(("m1", _tree("m1", "a")))
    link.objects.update({"m1": b"x", "a": b""})
    answer = held_pull(link.pull, link, PushSignal(), 0.2)
    assert answer.messages_list == ["m1"]  # the puller retries the objects, as in Flower


def test_only_max_holders_pulls_wait_the_others_answer_at_once() -> None:
    link, signal = _Link(), PushSignal(max_holders=1)
    holder = threading.Thread(target=held_pull, args=(link.pull, link, signal, HOLD_S))
    holder.start()
    time.sleep(0.05)
    started = time.monotonic()
    answer = held_pull(link.pull, link, signal, HOLD_S)
    assert answer.messages_list == [] and time.monotonic() - started < 0.1
    holder.join()


def test_the_superlink_handlers_hold_and_every_push_wakes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    pushes: list[str] = []
    link = _Link()
    for module in (fleet_handlers, runtime_handlers):
        for name in ("push_messages", "push_object"):
            monkeypatch.setattr(module, name, lambda *a, name=name, **k: pushes.append(name))
        monkeypatch.setattr(module, "pull_messages", lambda **kwargs: link.pull())
    instructions, replies = hold_pulls_until_work(hold_s=5.0)
    for module, wakes, not_woken in (
        (runtime_handlers, instructions, replies),  # the ServerApp's pushes wake SuperNodes
        (fleet_handlers, replies, instructions),  # the SuperNodes' pushes wake the ServerApp
    ):
        for name in ("push_messages", "push_object"):
            seen, other = wakes.count(), not_woken.count()
            getattr(module, name)()
            assert (wakes.count(), not_woken.count()) == (seen + 1, other)
    assert len(pushes) == 4  # Flower's own handler still ran each time

    def push() -> None:
        link.objects["m"] = b"x"
        link.queue.append(("m", _tree("m")))
        runtime_handlers.push_object()  # type: ignore[call-arg]  # the ServerApp's push wakes it

    woke = _later(0.1, push)
    started = time.monotonic()
    answer = fleet_handlers.pull_messages(request=None, state=None, store=link)  # type: ignore[arg-type]
    woke.join()
    assert answer.messages_list == ["m"] and time.monotonic() - started < 1.0
