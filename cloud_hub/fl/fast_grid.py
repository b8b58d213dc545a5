"""A Grid that pulls replies at a short interval (the hub's Deployment Engine ServerApp).

Flower 1.41's ``HttpGrid.send_and_receive`` sleeps a fixed 3 s between reply pulls, so every
Flower round trip (SecAgg+ has five per round) ends up to 3 s after the last reply arrived.
:class:`FastPullGrid` delegates everything to the Grid the SuperLink hands the ServerApp and
only re-implements ``send_and_receive`` with a ``poll_s`` pause (default 0.1 s) after a pull
that came back at once with nothing. A pull that brought replies, or that the SuperLink held
until one came (:mod:`shared.flower_long_poll`), is followed by the next pull at once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable

from flwr.app import Message, RecordDict
from flwr.proto.node_pb2 import NodeInfo
from flwr.serverapp import Grid
from flwr.supercore.run import Run

__all__ = ["DEFAULT_PULL_INTERVAL_S", "DelegatingGrid", "FastPullGrid"]

DEFAULT_PULL_INTERVAL_S = 0.1


class DelegatingGrid(Grid):
    """A Grid that hands every call to ``inner``; subclasses change what they need."""

    def __init__(self, inner: Grid) -> None:
        self._inner = inner

    def set_run(self, run: Run) -> None:
        self._inner.set_run(run)

    @property
    def run(self) -> Run:
        return self._inner.run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return self._inner.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self) -> Iterable[int]:
        return self._inner.get_node_ids()

    def get_nodes(self) -> Iterable[NodeInfo]:
        return self._inner.get_nodes()

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        return self._inner.push_messages(messages)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return self._inner.pull_messages(message_ids)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        return self._inner.send_and_receive(messages, timeout=timeout)


class FastPullGrid(DelegatingGrid):
    """``inner`` with replies pulled every ``poll_s`` seconds."""

    def __init__(
        self,
        inner: Grid,
        *,
        poll_s: float = DEFAULT_PULL_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        super().__init__(inner)
        self._poll_s = poll_s
        self._clock = clock
        self._sleep = sleep

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Push ``messages``; pull replies until all arrived or ``timeout`` s passed."""
        pending = set(self._inner.push_messages(messages))
        deadline = None if timeout is None else self._clock() + timeout
        replies: list[Message] = []
        while pending:
            asked = self._clock()
            pulled = list(self._inner.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(m.metadata.reply_to_message_id for m in pulled)
            if not pending or (deadline is not None and self._clock() >= deadline):
                break
            if not pulled and self._clock() - asked < self._poll_s:
                self._sleep(self._poll_s)  # answered at once with nothing: wait, then ask
        return replies
