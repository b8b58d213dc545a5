"""The SuperNode runs its ClientApp tasks in its own process, as each message arrives.

Why: Flower 1.41's SuperNode hands every message (SecAgg+: four per round) to a task
process: its SuperExec asks the SuperNode's runtime API for the task, starts (or, with
:mod:`edge_agent.fl.warm_clientapp`, forks) a ``flwr-clientapp`` process, which pulls the
task, the context, the run, the FAB and every object of the message over HTTP, runs the
ClientApp and pushes the reply, its objects and the context back; the SuperNode notices the
reply by polling. Measured on 2 cores with 6 SuperNodes: the task processes and the
SuperNodes' runtime-API servers used half the CPU of a SecAgg+ round, and each hand-off
added a poll interval.

Here the SuperNode does what that task process does, in place, between storing a message
and pushing its reply (:func:`run_clientapps_in_process` wraps Flower's
``_push_messages``): claim the task, run the ClientApp named by the FAB the node pinned
(:mod:`edge_agent.fl.pinned_supernode`: the order's hash, R4) on the stored message and
the run's context, store the reply and the new context, finish the task — the same
``NodeState`` calls Flower's runtime API makes for a task process, so ``_push_messages``
sends the reply unchanged. A ClientApp that raises produces Flower's own error reply
(``CLIENT_APP_RAISED_EXCEPTION`` / ``LOAD_CLIENT_APP_EXCEPTION``) and a FAILED task, as in
``flwr-clientapp``. What is given up is a process boundary between Flower's networking and
the ClientApp: a ClientApp that crashes the interpreter takes the SuperNode with it (the
agent's supervisor restarts it; the round counts the node as failed).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["ClientAppRunner", "run_clientapps_in_process"]

log = logging.getLogger(__name__)

#: Seconds between task heartbeats while a ClientApp runs (Flower expires a claimed task
#: after HEARTBEAT_PATIENCE x 30 s without one; a long local fit must not lose its task).
TASK_HEARTBEAT_S = 10.0


def _client_app_reference(fab_content: bytes) -> str:
    """The ``module:attribute`` of the ClientApp the FAB names."""
    from flwr.common.config import get_fab_config

    components = get_fab_config(fab_content)["tool"]["flwr"]["app"]["components"]
    reference: str = components["clientapp"]
    return reference


class ClientAppRunner:
    """Runs a SuperNode's pending ClientApp tasks in this process (see the module doc)."""

    def __init__(self, heartbeat_s: float = TASK_HEARTBEAT_S) -> None:
        self._apps: dict[str, Any] = {}  # FAB hash -> the ClientApp it names
        self._heartbeat = _TaskHeartbeat(heartbeat_s)

    def client_app(self, fab: Any) -> Any:
        """The ClientApp the FAB names, imported once per FAB."""
        if fab.hash_str not in self._apps:
            from flwr.clientapp.client_app import LoadClientAppError
            from flwr.supercore.object_ref import load_app

            try:
                reference = _client_app_reference(fab.content)
                self._apps[fab.hash_str] = load_app(reference, LoadClientAppError)
            except Exception as exc:  # an import raises anything: Flower's load error
                raise LoadClientAppError(f"cannot load the FAB's ClientApp: {exc}") from exc
        return self._apps[fab.hash_str]

    def run_pending(self, state: Any, store: Any) -> int:
        """Run every pending ClientApp task in ``state``; how many ran."""
        from flwr.common.constant import Status
        from flwr.supercore.constant import TaskType

        ran = 0
        for task in state.get_tasks(statuses=[Status.PENDING], order_by="pending_at"):
            if task.type == TaskType.CLIENT_APP and state.claim_task(task.task_id):
                self.run_task(state, store, task)
                ran += 1
        return ran

    def run_task(self, state: Any, store: Any, task: Any) -> None:
        """One claimed task: the ClientApp on its message; the reply and context stored."""
        from flwr.common.constant import SubStatus

        run = state.get_run(task.run_id)
        context = state.get_run_series_context(run.series_id) if run else None
        fab = state.get_fab(run.fab_hash) if run else None
        messages = state.get_messages_legacy(run_ids=[task.run_id], is_reply=False, limit=1)
        if run is None or context is None or fab is None or not messages:
            state.finish_task(task.task_id, SubStatus.FAILED, "task input missing from state")
            return
        state.activate_task(task.task_id)
        _set_task_identity(task.task_id, task.run_id, context.node_id)
        message_id = messages[0].metadata.message_id
        state.record_message_processing_start(message_id=message_id)
        with self._heartbeat.beating(lambda: state.acknowledge_task_heartbeat(task.task_id)):
            reply, sub_status, details = self._reply(fab, store, message_id, context)
        if reply is not None:
            _store_reply(state, store, reply)
        log.info(
            "ClientApp task %d of run %d (FAB %s) ran in this process: %s",
            task.task_id,
            task.run_id,
            fab.hash_str,
            sub_status,
        )
        state.finish_task(task.task_id, sub_status, details)
        state.set_run_series_context(run.series_id, context)

    def _reply(self, fab: Any, store: Any, message_id: str, context: Any) -> tuple[Any, str, str]:
        """The ClientApp's reply to the stored message, its sub-status and details."""
        from flwr.app import Message
        from flwr.app.error import Error
        from flwr.clientapp.client_app import LoadClientAppError
        from flwr.common.constant import ErrorCode, SubStatus

        message = None
        try:
            message = _stored_message(store, message_id)
            reply = self.client_app(fab)(message=message, context=context)
            return reply, SubStatus.COMPLETED, ""
        except Exception as exc:  # a ClientApp may raise anything: Flower's error reply
            log.exception("ClientApp raised an exception")
            code, reason = ErrorCode.CLIENT_APP_RAISED_EXCEPTION, f"{type(exc)}:<'{exc}'>"
            if isinstance(exc, LoadClientAppError):
                code = ErrorCode.LOAD_CLIENT_APP_EXCEPTION
                reason = "An exception was raised when attempting to load `ClientApp`"
            reply = None if message is None else Message(Error(code, reason), reply_to=message)
            return reply, SubStatus.FAILED, reason


def _set_task_identity(task_id: int, run_id: int, node_id: int) -> None:
    """Who is running, where Flower's messages read it (a task process sets it once)."""
    from flwr.supercore.task_identity import TaskIdentity

    TaskIdentity.task_id = task_id
    TaskIdentity.run_id = run_id
    TaskIdentity.node_id = node_id


def _stored_message(store: Any, message_id: str) -> Any:
    """The message ``message_id`` inflated from the object store (every object of it is
    there: the SuperNode pulls them all before it creates the task); its objects leave the
    store, as when a task process confirms a message received."""
    from flwr.app import Message
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    tree = store.get_object_tree(message_id)
    contents = {node.object_id: store.get(node.object_id) for node in iterate_object_tree(tree)}
    missing = [object_id for object_id, content in contents.items() if not content]
    if missing:
        raise RuntimeError(f"message {message_id}: {len(missing)} objects not in the store")
    message = inflate_object_from_contents(message_id, contents)
    if not isinstance(message, Message):
        raise TypeError(f"object {message_id} is a {type(message).__name__}, not a Message")
    message.metadata.__dict__["_message_id"] = message_id  # a deflated message has no id
    store.delete(message_id)
    return message


def _store_reply(state: Any, store: Any, reply: Any) -> None:
    """Store a reply where the SuperNode's ``_push_messages`` sends it from."""
    from flwr.supernode.start_client_internal import _insert_message

    state.record_message_processing_end(message_id=reply.metadata.reply_to_message_id)
    _insert_message(reply, state, store)


class _TaskHeartbeat:
    """Calls the running task's ``beat`` every ``every_s`` seconds from one thread, started
    on first use (a thread per task cost more than the task's own bookkeeping)."""

    def __init__(self, every_s: float) -> None:
        self._every_s = every_s
        self._beat: Callable[[], object] | None = None
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    def _loop(self) -> None:
        while True:
            time.sleep(self._every_s)
            with self._lock:
                if self._beat is not None:
                    self._beat()

    @contextmanager
    def beating(self, beat: Callable[[], object]) -> Iterator[None]:
        with self._lock:
            self._beat = beat
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._loop, name="clientapp-task-heartbeat", daemon=True
                )
                self._thread.start()
        try:
            yield
        finally:
            with self._lock:
                self._beat = None


def run_clientapps_in_process(runner: ClientAppRunner | None = None) -> ClientAppRunner:
    """Make this process's Flower SuperNode run each stored message's ClientApp itself,
    just before it pushes replies (Flower 1.41 ``start_client_internal._push_messages``)."""
    from flwr.supernode import start_client_internal as supernode

    original_push: Callable[..., None] | None = getattr(supernode, "_push_messages", None)
    if original_push is None or not hasattr(supernode, "_insert_message"):
        raise SystemExit("inprocess_clientapp: this Flower SuperNode has no push step to run in")
    in_process = runner or ClientAppRunner()

    def push(**kwargs: Any) -> None:
        in_process.run_pending(kwargs["state"], kwargs["object_store"])
        original_push(**kwargs)

    supernode._push_messages = push  # type: ignore[assignment]
    return in_process
