"""A Flower ``Grid`` that delivers messages to ClientApps in this process.

Flower's Simulation Engine runs ClientApps on Ray actors: right for hundreds of clients,
but starting Ray costs seconds and ~1.4 GB, which dominates small runs ("retrain this
cohort of 8 devices", tests, the demo). This grid implements Flower's ``Grid`` interface
directly: each message is copied (as a transport would), handed to the real ``ClientApp``
with that node's persistent ``Context`` (SecAgg+ keeps its per-round state there), and an
exception becomes an error reply — exactly how the Simulation Engine reports a failed
client. The ServerApp, workflows, strategies and mods are Flower's own and unchanged.
"""

from __future__ import annotations

import copy
import random
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from flwr.app import Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.serverapp.grid import Grid
from flwr.supercore.run import Run

from shared.fl.config_keys import NodeConfigKey

__all__ = ["InProcessGrid"]


class InProcessGrid(Grid):
    """Runs ``client_app`` for ``num_nodes`` virtual SuperNodes inside this process.

    ``run_config`` is what every node's ClientApp sees as the run config (as a SuperLink
    hands it the hub's ``flwr run --run-config``)."""

    def __init__(
        self,
        client_app: ClientApp,
        num_nodes: int,
        *,
        run_id: int | None = None,
        workers: int = 2,
        seed: int = 0,
        run_config: Mapping[str, Any] | None = None,
    ) -> None:
        if num_nodes < 1:
            raise ValueError("num_nodes must be >= 1")
        self._app = client_app
        rng = random.Random(seed)
        self._run = Run.create_empty(run_id=run_id if run_id is not None else rng.getrandbits(63))
        self._node_ids = [rng.getrandbits(62) + 1 for _ in range(num_nodes)]
        self._contexts = {
            node_id: Context(
                run_id=self._run.run_id,
                node_id=node_id,
                node_config={
                    NodeConfigKey.PARTITION_ID: index,
                    NodeConfigKey.NUM_PARTITIONS: num_nodes,
                },
                state=RecordDict(),
                run_config=dict(run_config or {}),
            )
            for index, node_id in enumerate(self._node_ids)
        }
        self._replies: dict[str, Message] = {}
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="fl-client")

    def close(self) -> None:
        self._pool.shutdown(wait=True)

    def partition_of(self, node_id: int) -> int:
        return self._node_ids.index(node_id)

    # -- Grid interface -------------------------------------------------------------------
    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return self._run

    def create_message(
        self,
        content: RecordDict,
        message_type: str,
        dst_node_id: int,
        group_id: str,
        ttl: float | None = None,
    ) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self._node_ids)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        batch = list(messages)
        ids = [self._stamp(msg) for msg in batch]
        for reply in self._pool.map(self._deliver, batch):
            with self._lock:
                self._replies[reply.metadata.reply_to_message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        with self._lock:
            return [self._replies.pop(mid) for mid in list(message_ids) if mid in self._replies]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        ids = list(self.push_messages(messages))
        return list(self.pull_messages(ids))

    # -- delivery -------------------------------------------------------------------------
    def _stamp(self, message: Message) -> str:
        message_id = uuid.uuid4().hex
        message.metadata.__dict__["_message_id"] = message_id
        message.metadata.__dict__["_run_id"] = self._run.run_id
        return message_id

    def _deliver(self, message: Message) -> Message:
        node_id = message.metadata.dst_node_id
        context = self._contexts.get(node_id)
        if context is None:
            return Message(Error(ErrorCode.UNKNOWN, f"unknown node {node_id}"), reply_to=message)
        # Each node gets its own copy, as over a real transport (mods mutate content).
        local = copy.deepcopy(message)
        local.metadata.__dict__["_delivered_at"] = str(time.time())
        try:
            return self._app(local, context)
        except Exception as exc:  # a client failure is a reply, not a server crash
            reason = f"{type(exc).__name__}: {exc}"
            return Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason), reply_to=message)
