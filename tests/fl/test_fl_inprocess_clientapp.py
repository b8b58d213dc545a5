"""The SuperNode runs a message's ClientApp in its own process, on Flower's real NodeState
and ObjectStore: the reply and the new context land where Flower's push step reads them, a
raising ClientApp gets Flower's error reply, and the task ends as Flower's runtime API would
end it."""

from __future__ import annotations

import copy
import hashlib
import io
import time
import zipfile
from typing import Any

import pytest
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import Status, SubStatus
from flwr.supercore.constant import TaskType
from flwr.supercore.fab import Fab
from flwr.supercore.object_store import ObjectStoreFactory
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supernode.nodestate.in_memory_nodestate import InMemoryNodeState
from flwr.supernode.start_client_internal import _insert_message

from edge_agent.fl.inprocess_clientapp import ClientAppRunner

NODE_ID = 7
RUN_ID = 11

counting_app = ClientApp()


@counting_app.train()
def _train(msg: Message, context: Context) -> Message:
    seen = int(context.state.config_records.get("seen", ConfigRecord({"n": 0}))["n"]) + 1  # type: ignore[arg-type]
    context.state.config_records["seen"] = ConfigRecord({"n": seen})
    value = int(msg.content.config_records["in"]["x"])  # type: ignore[arg-type]
    out: dict[str, Any] = {
        "y": value * 2,
        "seen": seen,
        "run": TaskIdentity.run_id,
        "node": TaskIdentity.node_id,
    }
    return Message(RecordDict({"out": ConfigRecord(out)}), reply_to=msg)


slow_app = ClientApp()


@slow_app.train()
def _slow(msg: Message, context: Context) -> Message:
    time.sleep(0.35)  # a long local fit
    return Message(RecordDict(), reply_to=msg)


raising_app = ClientApp()


@raising_app.train()
def _fail(msg: Message, context: Context) -> Message:
    raise ValueError("no data on this device")


def _fab(component: str) -> Fab:
    pyproject = (
        '[project]\nname = "t"\nversion = "1.0.0"\n'
        '[tool.flwr.app]\npublisher = "t"\n'
        f'[tool.flwr.app.components]\nserverapp = "x:app"\nclientapp = "{component}"\n'
    )
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    content = buffer.getvalue()
    return Fab(hashlib.sha256(content).hexdigest(), content, {})


class _CopyingNodeState(InMemoryNodeState):  # type: ignore[misc]
    """Flower's in-memory NodeState handing out copies of the context, as a NodeState kept in
    a database does: what the ClientApp changed persists only if it is stored back."""

    beats: list[int] = []

    def get_run_series_context(self, series_id: int) -> Context | None:
        return copy.deepcopy(super().get_run_series_context(series_id))

    def acknowledge_task_heartbeat(self, task_id: int) -> bool:
        self.beats.append(task_id)
        return bool(super().acknowledge_task_heartbeat(task_id))


def _node_with_message(component: str, x: int) -> tuple[Any, Any, str]:
    """A NodeState/ObjectStore as Flower's SuperNode leaves them after pulling a message."""
    store = ObjectStoreFactory().store()
    state = _CopyingNodeState(store)
    state.set_node_id(NODE_ID)
    fab = _fab(component)
    run = Run.create_empty(RUN_ID)
    run.fab_hash = fab.hash_str
    state.store_run(run)
    state.store_fab(fab)
    state.set_run_series_context(
        run.series_id, Context(RUN_ID, NODE_ID, {}, RecordDict(), {}, run.series_id)
    )
    # the ServerApp's process names itself this way when it builds a message
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, RUN_ID, 0
    message = Message(RecordDict({"in": ConfigRecord({"x": x})}), NODE_ID, "train")
    TaskIdentity._task_id = TaskIdentity._run_id = TaskIdentity._node_id = None  # type: ignore[assignment]
    _insert_message(message, state, store)
    state.create_task(task_type=TaskType.CLIENT_APP, run_id=RUN_ID, fab_hash=fab.hash_str)
    return state, store, message.metadata.message_id


def _replies(state: Any) -> list[Any]:
    return list(state.get_messages_legacy(is_reply=True))


def _task_status(state: Any) -> tuple[str, str]:
    (task,) = state.get_tasks()
    return task.status.status, task.status.sub_status


def test_a_message_is_answered_in_process_and_the_context_kept_for_the_next() -> None:
    state, store, message_id = _node_with_message(f"{__name__}:counting_app", x=21)
    runner = ClientAppRunner()

    assert runner.run_pending(state, store) == 1

    (reply,) = _replies(state)
    assert reply.metadata.reply_to_message_id == message_id
    tree = store.get_object_tree(reply.metadata.message_id)  # objects where the push reads
    assert store.get(tree.object_id)
    assert _task_status(state) == (Status.FINISHED, SubStatus.COMPLETED)
    context = state.get_run_series_context(0)
    assert context.state.config_records["seen"]["n"] == 1
    assert store.get(message_id) is None  # the incoming message left the store
    assert runner.run_pending(state, store) == 0  # nothing pending: nothing runs twice


def test_the_reply_carries_what_the_client_app_computed() -> None:
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents

    state, store, _ = _node_with_message(f"{__name__}:counting_app", x=21)
    ClientAppRunner().run_pending(state, store)
    (reply,) = _replies(state)
    tree = store.get_object_tree(reply.metadata.message_id)
    contents = {node.object_id: store.get(node.object_id) for node in iterate_object_tree(tree)}
    inflated = inflate_object_from_contents(tree.object_id, contents)
    assert isinstance(inflated, Message)
    out = inflated.content.config_records["out"]
    assert (out["y"], out["run"], out["node"]) == (42, RUN_ID, NODE_ID)  # who runs, for Flower


def test_a_raising_client_app_gets_flowers_error_reply_and_a_failed_task() -> None:
    state, store, message_id = _node_with_message(f"{__name__}:raising_app", x=1)

    ClientAppRunner().run_pending(state, store)

    (reply,) = _replies(state)
    assert reply.metadata.reply_to_message_id == message_id
    assert reply.has_error() and "no data on this device" in reply.error.reason
    status, sub_status = _task_status(state)
    assert (status, sub_status) == (Status.FINISHED, SubStatus.FAILED)


def test_a_fab_naming_no_importable_client_app_gets_a_load_error_reply() -> None:
    from flwr.common.constant import ErrorCode

    state, store, _ = _node_with_message("no_such_module_here:app", x=1)
    ClientAppRunner().run_pending(state, store)
    (reply,) = _replies(state)
    assert reply.error.code == ErrorCode.LOAD_CLIENT_APP_EXCEPTION
    assert _task_status(state)[1] == SubStatus.FAILED


def test_the_supernode_runs_client_apps_before_it_pushes(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as supernode

    from edge_agent.fl.inprocess_clientapp import run_clientapps_in_process

    pushed: list[int] = []
    monkeypatch.setattr(
        supernode, "_push_messages", lambda **kw: pushed.append(len(_replies(kw["state"])))
    )
    run_clientapps_in_process()
    state, store, _ = _node_with_message(f"{__name__}:counting_app", x=3)
    supernode._push_messages(state=state, object_store=store, send=None, push_object=None)  # type: ignore[arg-type]
    assert pushed == [1]  # Flower's push step found the reply already stored


def test_a_long_client_app_keeps_its_task_alive_and_nothing_beats_after_it() -> None:
    state, store, _ = _node_with_message(f"{__name__}:slow_app", x=1)
    state.beats = []
    ClientAppRunner(heartbeat_s=0.1).run_pending(state, store)
    (task,) = state.get_tasks()
    assert len(state.beats) >= 2 and set(state.beats) == {task.task_id}
    assert _task_status(state) == (Status.FINISHED, SubStatus.COMPLETED)
    done = len(state.beats)
    time.sleep(0.3)
    assert len(state.beats) == done  # the task ended: no more heartbeats for it
