"""The in-process ServerApp executor (cloud_hub.fl.inprocess_serverapp) on a real Flower
LinkState with Flower's own handlers: the grid's pushes wake the SuperNodes' held pulls with
whole messages, a run whose FAB cannot be run is FAILED at once with the reason (and the
hub's waiter gets a failed summary), each run thread stamps its own messages."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

HOLD_S = 5.0


@pytest.fixture
def held_pulls(monkeypatch: pytest.MonkeyPatch) -> None:
    """shared.flower_long_poll's patch of Flower's handlers, undone after the test."""
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    from shared.flower_long_poll import hold_pulls_until_work

    for module in (fleet_handlers, runtime_handlers):
        for name in ("pull_messages", "push_messages", "push_object"):
            monkeypatch.setattr(module, name, getattr(module, name))
    hold_pulls_until_work(hold_s=HOLD_S)


@pytest.fixture
def identity(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Flower's TaskIdentity as it was after the test (the executor makes it thread-local)."""
    from flwr.supercore.task_identity import TaskIdentity

    meta = type(TaskIdentity)
    for name in ("task_id", "run_id", "node_id"):
        monkeypatch.setattr(meta, name, getattr(meta, name))
    monkeypatch.setattr(meta, "_fedfleet_thread_local", False, raising=False)
    yield


class _Link:
    """A SuperLink's in-memory LinkState with one online SuperNode and one pending run."""

    def __init__(self, fab_content: bytes, override_config: dict[str, Any]) -> None:
        from flwr.server.superlink.linkstate import LinkStateFactory
        from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME, TaskType
        from flwr.supercore.fab import Fab
        from flwr.supercore.object_store import ObjectStoreFactory
        from flwr.superlink.federation import NoOpFederationManager

        self.factory = LinkStateFactory(
            FLWR_IN_MEMORY_DB_NAME, NoOpFederationManager(), ObjectStoreFactory()
        )
        self.state = self.factory.state()
        self.node_id = self.state.create_node(
            owner_aid="a", owner_name="a", public_key=b"key", heartbeat_interval=30
        )
        self.state.activate_node(self.node_id, 30)
        fab_hash = hashlib.sha256(fab_content).hexdigest()
        self.state.store_fab(Fab(fab_hash, fab_content, {}))
        self.run_id = self.state.create_run(
            "fedfleet/test", "1.0.0", fab_hash, override_config, "@none/default", None, None,
            TaskType.SERVER_APP,
        )  # fmt: skip

    def run_status(self) -> Any:
        return self.state.get_run_status({self.run_id})[self.run_id]


def test_the_grids_push_wakes_a_held_supernode_pull_with_the_whole_message(
    held_pulls: None, identity: None
) -> None:
    from flwr.app import ArrayRecord, ConfigRecord, Message, RecordDict
    from flwr.common.serde import run_from_proto
    from flwr.proto.fleet_pb2 import PullMessagesRequest
    from flwr.proto.node_pb2 import Node
    from flwr.proto.runtime_pb2 import PullTaskInputRequest
    from flwr.supercore.inflatable.inflatable_object import iterate_object_tree
    from flwr.supercore.task_identity import TaskIdentity
    from flwr.superlink.servicer.fleet import fleet_handlers
    from flwr.superlink.servicer.runtime import runtime_handlers

    from cloud_hub.fl.inprocess_serverapp import InProcessServerAppExecutor, LinkStateGrid

    link = _Link(b"not run here", {})
    task = InProcessServerAppExecutor(link.factory).acquire()
    assert task is not None and task.run_id == link.run_id
    inputs = runtime_handlers.pull_task_input(PullTaskInputRequest(), link.state, task)
    TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = task.task_id, link.run_id, 1
    grid = LinkStateGrid(link.state, task)
    grid.set_run(run_from_proto(inputs.run))
    assert list(grid.get_node_ids()) == [link.node_id]

    pulled: dict[str, Any] = {}

    def supernode_pull() -> None:  # what the Fleet API does for a SuperNode's pull
        started = time.monotonic()
        request = PullMessagesRequest(node=Node(node_id=link.node_id))
        pulled["answer"] = fleet_handlers.pull_messages(
            request, link.state, link.state.object_store
        )
        pulled["s"] = time.monotonic() - started

    waiting = threading.Thread(target=supernode_pull)
    waiting.start()
    time.sleep(0.3)  # the pull is held now: nothing to pull yet
    content = RecordDict({"w": ArrayRecord([np.arange(3.0)]), "c": ConfigRecord({"k": 1})})
    [message_id] = grid.push_messages([Message(content, link.node_id, "train")])
    waiting.join(HOLD_S + 2)

    answer = pulled["answer"]
    assert pulled["s"] < 0.3 + 1.0, f"the pull was not woken by the push ({pulled['s']:.2f} s)"
    assert [m.metadata.message_id for m in answer.messages_list] == [message_id]
    objects = [node.object_id for node in iterate_object_tree(answer.message_object_trees[0])]
    assert message_id in objects and len(objects) > 2  # content-addressed, with its records
    assert all(link.state.object_store.get(o) for o in objects)  # every object is there


def test_a_fab_that_cannot_be_installed_fails_the_run_at_once_with_the_reason(
    tmp_path: Path, identity: None
) -> None:
    from flwr.common.constant import Status, SubStatus

    from cloud_hub.fl.inprocess_serverapp import InProcessServerAppExecutor

    results = tmp_path / "results"
    link = _Link(b"not a FAB", {"results-dir": str(results), "run-name": "r1"})
    executor = InProcessServerAppExecutor(link.factory)
    task = executor.acquire()
    assert task is not None

    started = time.monotonic()
    outcome = executor.run_task(task)

    assert time.monotonic() - started < 5
    status = link.run_status()
    assert (status.status, status.sub_status) == (Status.FINISHED, SubStatus.FAILED)
    assert status.details == outcome.details and "ServerApp failed" in status.details
    summary = json.loads((results / "summary.json").read_text())
    assert summary == {"status": "failed", "run_id": "r1", "error": status.details}
    assert executor.acquire() is None  # taken once: not handed out again


def test_a_fab_whose_content_is_not_the_hash_the_run_names_is_not_run(
    tmp_path: Path, identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flwr.cli import install
    from flwr.supercore.fab import Fab

    from cloud_hub.fl.inprocess_serverapp import InProcessServerAppExecutor

    installed: list[bytes] = []
    monkeypatch.setattr(install, "install_from_fab", lambda content, **k: installed.append(content))
    link = _Link(b"the FAB the run names", {"results-dir": str(tmp_path)})
    fab_hash = link.state.get_run_info(run_ids=[link.run_id])[0].fab_hash
    swapped = Fab(fab_hash, b"other code", {})  # a state handing out other bytes
    monkeypatch.setattr(link.state, "get_fab", lambda _hash: swapped)
    executor = InProcessServerAppExecutor(link.factory)
    task = executor.acquire()

    outcome = executor.run_task(task)

    assert installed == [] and "the run names" in outcome.details
    assert "not run" in json.loads((tmp_path / "summary.json").read_text())["error"]


def test_each_run_thread_stamps_its_own_run_on_new_messages(identity: None) -> None:
    from flwr.app import Message, RecordDict
    from flwr.supercore.task_identity import TaskIdentity

    from cloud_hub.fl.inprocess_serverapp import _thread_local_task_identity

    _thread_local_task_identity()
    stamped: dict[int, int] = {}
    both_set = threading.Barrier(2)

    def run(run_id: int) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = run_id, run_id, 1
        both_set.wait()  # the other thread has set its own by now
        stamped[run_id] = Message(RecordDict(), 5, "train").metadata.run_id

    threads = [threading.Thread(target=run, args=(i,)) for i in (11, 22)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert stamped == {11: 11, 22: 22}
    unset: list[str] = []

    def fresh_thread() -> None:
        try:
            TaskIdentity.run_id  # noqa: B018 - this thread set none
        except RuntimeError as exc:
            unset.append(str(exc))

    fresh = threading.Thread(target=fresh_thread)
    fresh.start()
    fresh.join()
    assert unset == ["TaskIdentity.run_id is not set."]


def test_the_superlink_runs_serverapps_in_process_unless_forked_is_asked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cloud_hub.errors import HubConfigError
    from cloud_hub.fl.superlink import SERVERAPP_ENV, SuperLinkConfig, SuperLinkProcess

    config = SuperLinkConfig(insecure=True)
    monkeypatch.delenv(SERVERAPP_ENV, raising=False)
    assert SuperLinkProcess(config, workdir=tmp_path).serverapp == "inprocess"
    monkeypatch.setenv(SERVERAPP_ENV, "forked")  # the operator's switch
    assert SuperLinkProcess(config, workdir=tmp_path).serverapp == "forked"
    assert SuperLinkProcess(config, workdir=tmp_path, serverapp="inprocess").serverapp == (
        "inprocess"
    )
    monkeypatch.setenv(SERVERAPP_ENV, "threads")
    with pytest.raises(HubConfigError, match="must be one of inprocess, forked"):
        SuperLinkProcess(config, workdir=tmp_path)


QUIET_APP = """
import json
from pathlib import Path

from flwr.serverapp import ServerApp

app = ServerApp()


@app.main()
def main(grid, context):
    seen = {"run": grid.run.run_id, "context_run": context.run_id, "name": context.run_config["run-name"]}
    Path(context.run_config["results-dir"], "seen.json").write_text(json.dumps(seen))
"""


def test_a_run_that_ends_is_completed_its_context_stored_and_its_modules_dropped(
    tmp_path: Path, identity: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil
    import sys

    from flwr.common.constant import Status, SubStatus

    from cloud_hub.fl.inprocess_serverapp import InProcessServerAppExecutor
    from cloud_hub.fl.superlink import FAB_DIR, build_fab

    monkeypatch.setenv("FLWR_HOME", str(tmp_path / "flwr-home"))
    app_dir = tmp_path / "quiet-fab"
    shutil.copytree(FAB_DIR, app_dir, ignore=shutil.ignore_patterns("__pycache__"))
    manifest = app_dir / "pyproject.toml"
    manifest.write_text(
        manifest.read_text().replace("cloud_hub.fl.superlink_app:app", "quiet_app:app")
    )
    (app_dir / "quiet_app.py").write_text(QUIET_APP)
    link = _Link(build_fab(app_dir), {"results-dir": str(tmp_path), "run-name": "quiet"})
    executor = InProcessServerAppExecutor(link.factory)
    path_before = list(sys.path)

    outcome = executor.run_task(executor.acquire())

    status = link.run_status()
    assert (status.status, status.sub_status, status.details) == (
        Status.FINISHED, SubStatus.COMPLETED, ""
    )  # fmt: skip
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen == {"run": link.run_id, "context_run": link.run_id, "name": "quiet"}
    series = link.state.get_run_info(run_ids=[link.run_id])[0].series_id
    stored = link.state.get_run_series_context(series)
    assert stored is not None and stored.run_config["run-name"] == "quiet"
    assert outcome.context is not None and stored.run_id == outcome.context.run_id
    assert sys.path == path_before and "quiet_app" not in sys.modules  # nothing outlives it
    assert not (tmp_path / "summary.json").exists()  # only a failed run gets one from here
