"""Each run's ServerApp inside the SuperLink process (no ServerApp process, no runtime HTTP).

Why: Flower 1.41's SuperLink runs a ServerApp as its own process (``flwr-serverapp``, forked
warm by :mod:`cloud_hub.fl.warm_serverapp` in the ``forked`` mode) that talks to the
SuperLink's runtime API over HTTP: ~200 requests per SecAgg+ round over 6 SuperNodes, each
object pushed and pulled one by one, each request paid on both ends (serialisation, TLS,
the event loop's hand-offs). Here a thread of the SuperLink (:class:`InProcessServerAppExecutor`)
takes pending runs from the SuperLink's own LinkState the way the SuperExec does and drives
the run lifecycle ``flwr-serverapp`` drives, in process:

- claim the run's task (``acquire_task``: PENDING -> STARTING) and pull its inputs
  (``pull_task_input``: STARTING -> RUNNING; the run's context, its run, its FAB);
- refuse a FAB whose content is not the hash the run names; install it (Flower checks every
  file's hash) and load the ServerApp component the FAB names — only that;
- run it on a :class:`LinkStateGrid`, heartbeats sent to the state while it runs;
- store the result (``push_task_output``: FINISHED with Flower's sub-status COMPLETED or
  FAILED and the error text, the context stored back), and for a failed fedfleet run whose
  ServerApp wrote no ``summary.json`` (it could not load, or failed outside its own guard)
  write a failed one with the reason, so the hub's waiter reads it at once.

Why not Flower's ``InMemoryGrid``: it stores an instruction under a random id with no object
tree, and returns replies as the state holds them. That suits the simulation engine (which
exchanges whole Messages through the state) but not real SuperNodes: the Fleet API answers a
pull with the message's object tree from the ObjectStore (a missing tree: the message is
deleted as an error), and a SuperNode's reply reaches the state as metadata only, its content
as objects. :class:`LinkStateGrid` is therefore Flower's runtime-API Grid (``HttpGrid``: same
message ids, object trees, push sessions, validation, error replies) whose six runtime calls
go straight to the SuperLink's runtime handlers on its LinkState (:class:`LinkStateRuntime`)
instead of over HTTP. The handlers are looked up when called, so :mod:`shared.flower_long_poll`'s
wrapped ones apply: the grid's pushes wake the SuperNodes' held pulls, and its pull of replies
is held on the condition the Fleet push handler signals (no sleep between polls; the
ServerApp's :class:`~cloud_hub.fl.fast_grid.FastPullGrid` pulls again at once after a held
pull, as it does over HTTP).

Start the SuperLink with ``python -m cloud_hub.fl.inprocess_serverapp <flower-superlink
arguments>`` (:class:`cloud_hub.fl.superlink.SuperLinkProcess`, ``serverapp="inprocess"``).
"""

from __future__ import annotations

import hashlib
import logging
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flwr.superlink.grid import HttpGrid

from shared.fl.config_keys import RunConfigKey
from shared.poll_backoff import PollBackoff

__all__ = [
    "InProcessServerAppExecutor",
    "LinkStateGrid",
    "LinkStateRuntime",
    "RunOutcome",
    "main",
    "run_serverapps_in_process",
    "write_failed_summary",
]

log = logging.getLogger("cloud_hub.fl.inprocess_serverapp")  # also when run as __main__


class LinkStateRuntime:
    """The runtime-API calls Flower's ``HttpGrid`` makes, answered by the SuperLink's runtime
    handlers on ``state`` for ``task`` (what the HTTP route would do after its token check)."""

    def __init__(self, state: Any, task: Any) -> None:
        self._state = state
        self._task = task

    def _call(self, name: str, request: Any) -> Any:
        from flwr.superlink.servicer.runtime import runtime_handlers

        # looked up per call: shared.flower_long_poll's wrappers (wake, hold) apply
        return getattr(runtime_handlers, name)(request, self._state, self._task)

    def GetNodes(self, request: Any) -> Any:  # Flower's client method names
        return self._call("get_nodes", request)

    def PushMessages(self, request: Any) -> Any:
        return self._call("push_messages", request)

    def PushObject(self, request: Any) -> Any:
        return self._call("push_object", request)

    def PullMessages(self, request: Any) -> Any:
        return self._call("pull_messages", request)

    def PullObject(self, request: Any) -> Any:
        return self._call("pull_object", request)

    def ConfirmMessageReceived(self, request: Any) -> Any:
        return self._call("confirm_message_received", request)

    def close(self) -> None:
        """Nothing to close (no connection)."""


class LinkStateGrid(HttpGrid):  # type: ignore[misc]
    """Flower's ``HttpGrid`` whose runtime calls go to ``state`` in process (module doc)."""

    def __init__(self, state: Any, task: Any) -> None:
        super().__init__(token="in-process")
        self._client = LinkStateRuntime(state, task)  # type: ignore[assignment]  # its connection

    def _connect(self) -> None:
        raise RuntimeError("the in-process grid has no HTTP connection (closed?)")


def write_failed_summary(run_config: dict[str, Any], run_id: int, reason: str) -> Path | None:
    """For a fedfleet run (its run config names a results folder) whose ServerApp wrote no
    ``summary.json``: a failed one with ``reason``; the path written, else ``None``."""
    from cloud_hub.fl import superlink_app

    folder = run_config.get(RunConfigKey.RESULTS_DIR)
    if not isinstance(folder, str) or not folder:
        return None
    if (Path(folder) / "summary.json").exists():  # the ServerApp's own, fuller account
        return None
    name = run_config.get(RunConfigKey.RUN_NAME)
    label = superlink_app.run_label(name if isinstance(name, str) else None, run_id)
    return superlink_app.write_failed_summary(Path(folder), label, reason)


@contextmanager
def _restored_sys_path() -> Iterator[None]:
    """Flower's app loader puts the app's folder first on ``sys.path``; in the SuperLink's
    long-lived process it must not stay there (it would shadow imports of later runs)."""
    saved = list(sys.path)
    try:
        yield
    finally:
        sys.path[:] = saved


@contextmanager
def _forgetting_app_modules(app_path: str) -> Iterator[None]:
    """The FAB's own modules (loaded from ``app_path``) are dropped when the run ends: a later
    FAB's module of the same name must not be this one."""
    folder = str(Path(app_path).absolute()) + "/"
    try:
        yield
    finally:
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(folder):
                del sys.modules[name]


_THREAD_IDENTITY = threading.local()


def _thread_local_task_identity() -> None:
    """Make Flower's ``TaskIdentity`` (the run, node and task a new ``Message`` is stamped
    with; one per process in Flower, which runs one task per process) one per thread here:
    each run's thread has its own, so runs side by side stamp their own ids."""
    from flwr.supercore.task_identity import TaskIdentity

    meta = type(TaskIdentity)
    if getattr(meta, "_fedfleet_thread_local", False):
        return
    for name in ("task_id", "run_id", "node_id"):
        if not isinstance(getattr(meta, name, None), property):  # not Flower 1.41's
            raise SystemExit(f"inprocess_serverapp: TaskIdentity.{name} is not a property")

        def get(_cls: type, name: str = name) -> int:
            value = getattr(_THREAD_IDENTITY, name, None)
            if value is None:
                raise RuntimeError(f"TaskIdentity.{name} is not set.")
            return int(value)

        def put(_cls: type, value: int, name: str = name) -> None:
            setattr(_THREAD_IDENTITY, name, value)

        setattr(meta, name, property(get, put))
    meta._fedfleet_thread_local = True  # type: ignore[attr-defined]


@dataclass(frozen=True)
class RunOutcome:
    """How one run ended: Flower's sub-status and details, and the context to store."""

    sub_status: str
    details: str
    context: Any | None


def _load_and_run(grid: Any, run: Any, fab: Any, context: Any) -> Any:
    """Install ``fab`` (after checking it is the FAB ``run`` names), load its ServerApp
    component and run it on ``grid``; the resulting context."""
    from flwr.cli.config_utils import get_fab_metadata
    from flwr.cli.install import install_from_fab
    from flwr.common.config import (
        get_fused_config_from_dir,
        get_project_config,
        get_project_dir,
    )
    from flwr.server.run_serverapp import run as run_server_app
    from flwr.serverapp.server_app import LoadServerAppError, ServerApp
    from flwr.supercore.object_ref import load_app

    content_hash = hashlib.sha256(fab.content).hexdigest()
    if content_hash != run.fab_hash or fab.hash_str != run.fab_hash:
        raise LoadServerAppError(
            f"the FAB handed out for run {run.run_id} is {content_hash[:12]}, the run names "
            f"{run.fab_hash[:12]}: not run"
        )
    install_from_fab(fab.content, skip_prompt=True)  # checks each file's hash too
    fab_id, fab_version = get_fab_metadata(fab.content)
    app_path = str(get_project_dir(fab_id, fab_version, fab.hash_str))
    config = get_project_config(app_path)
    attr = config["tool"]["flwr"]["app"]["components"]["serverapp"]
    context.run_config = get_fused_config_from_dir(Path(app_path), run.override_config)
    with _forgetting_app_modules(app_path):
        with _restored_sys_path():
            server_app = load_app(attr, LoadServerAppError, app_path)
        if not isinstance(server_app, ServerApp):
            raise LoadServerAppError(f"{attr} in FAB {fab.hash_str[:12]} is not a ServerApp")
        log.info("run %d: ServerApp %s of FAB %s runs in the SuperLink", run.run_id, attr,
                 fab.hash_str)  # fmt: skip
        return run_server_app(
            grid=grid, context=context, server_app_dir=app_path, loaded_server_app=server_app
        )


def _fail_reason(exc: BaseException) -> str:
    return f"ServerApp failed with exception: {type(exc).__name__}: {exc}"


class InProcessServerAppExecutor:
    """Takes pending ServerApp runs from the SuperLink's LinkState and runs each in a thread
    of this process (module doc). ``backoff``: the waits between asks while none is pending."""

    def __init__(
        self,
        state_factory: Any,
        *,
        backoff: PollBackoff | None = None,
        warm_up: Callable[[], None] = lambda: None,
    ) -> None:
        _thread_local_task_identity()
        self._state_factory = state_factory
        self._backoff = backoff or PollBackoff()
        self._warm_up = warm_up
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._serve, name="serverapp-executor", daemon=True)
        self._thread.start()

    def stop(self, timeout_s: float = 2.0) -> None:
        """Stop asking for runs (runs in progress end with the process)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def _serve(self) -> None:
        try:
            self._warm_up()
        except Exception:  # a failed warm-up costs the first run its imports, nothing else
            log.exception("warming the in-process ServerApp failed")
        while not self._stop.is_set():
            task = self.acquire()
            if task is None:
                self._stop.wait(self._backoff.next_wait_s())
                continue
            self._backoff.activity()
            name = f"serverapp-run-{task.run_id}"  # runs side by side, as forked ones do
            threading.Thread(target=self.run_task, args=(task,), name=name, daemon=True).start()

    def acquire(self) -> Any | None:
        """Claim the oldest pending ServerApp task, as the SuperExec's ``AcquireTask`` does
        (its token is not needed: no HTTP request is made for the task)."""
        from flwr.proto.runtime_pb2 import AcquireTaskRequest
        from flwr.supercore.constant import TaskType
        from flwr.superlink.servicer.runtime import runtime_handlers

        request = AcquireTaskRequest(supported_task_types=[TaskType.SERVER_APP])
        response = runtime_handlers.acquire_task(request, self._state_factory.state())
        return response.task if response.HasField("task") else None

    def run_task(self, task: Any) -> RunOutcome:
        """Flower's ``run_serverapp`` for the claimed ``task``, in this thread."""
        from flwr.app import RecordDict
        from flwr.common.constant import SubStatus
        from flwr.common.serde import context_from_proto, fab_from_proto, run_from_proto
        from flwr.proto.runtime_pb2 import PullTaskInputRequest
        from flwr.supercore.task_identity import TaskIdentity
        from flwr.superlink.servicer.runtime import runtime_handlers

        state = self._state_factory.state()
        outcome = RunOutcome(SubStatus.FAILED, "Task failed with unknown error.", None)
        heartbeat = _start_heartbeat(state, task.task_id)
        run_config: dict[str, Any] = {}
        try:
            inputs = runtime_handlers.pull_task_input(PullTaskInputRequest(), state, task)
            context = context_from_proto(inputs.context)
            run = run_from_proto(inputs.run)
            TaskIdentity.task_id = inputs.task_id  # this thread's (_thread_local_task_identity)
            TaskIdentity.run_id = run.run_id
            TaskIdentity.node_id = context.node_id
            run_config = dict(run.override_config)
            grid = LinkStateGrid(state, task)
            grid.set_run(run)
            context = _load_and_run(grid, run, fab_from_proto(inputs.fab), context)
            context.state = RecordDict()  # as flwr-serverapp: the state is not pushed back
            outcome = RunOutcome(SubStatus.COMPLETED, "", context)
        except Exception as exc:
            log.exception("run %d: the ServerApp failed", task.run_id)
            outcome = RunOutcome(SubStatus.FAILED, _fail_reason(exc), None)
            write_failed_summary(run_config, task.run_id, outcome.details)
        finally:
            if heartbeat.is_running:
                heartbeat.stop()
            self._finish(state, task, outcome)
        return outcome

    @staticmethod
    def _finish(state: Any, task: Any, outcome: RunOutcome) -> None:
        from flwr.common.serde import context_to_proto
        from flwr.proto.runtime_pb2 import PushTaskOutputRequest
        from flwr.superlink.servicer.runtime import runtime_handlers

        request = PushTaskOutputRequest(
            context=context_to_proto(outcome.context) if outcome.context is not None else None,
            sub_status=outcome.sub_status,
            details=outcome.details,
        )
        runtime_handlers.push_task_output(request, state, task)


def _start_heartbeat(state: Any, task_id: int) -> Any:
    """Flower's heartbeat sender, acknowledging ``task_id`` on ``state`` (a running task
    without heartbeats is failed by the state after 2 x 30 s)."""
    from flwr.supercore.heartbeat import HeartbeatSender

    sender = HeartbeatSender(lambda: bool(state.acknowledge_task_heartbeat(task_id)))
    sender.start()
    return sender


def run_serverapps_in_process(warm_up: Callable[[], None] = lambda: None) -> None:
    """Make this process's Flower SuperLink run ServerApps in process: where it would start
    its SuperExec it starts an :class:`InProcessServerAppExecutor` on its LinkState."""
    import importlib

    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")

    flower_lifespan = cli.SuperLinkLifespan
    if not hasattr(flower_lifespan, "_start_superexec_if_needed"):  # not Flower 1.41's
        raise SystemExit("inprocess_serverapp: the SuperLink starts its SuperExec differently")

    class InProcessServerAppLifespan(flower_lifespan):  # type: ignore[misc, valid-type]
        executor: InProcessServerAppExecutor | None = None

        def _start_superexec_if_needed(self) -> None:
            self.executor = InProcessServerAppExecutor(self.state_factory, warm_up=warm_up)
            self.executor.start()

        def shutdown(self) -> None:
            if self.executor is not None:
                self.executor.stop()
            super().shutdown()

    cli.SuperLinkLifespan = InProcessServerAppLifespan  # type: ignore[attr-defined]


def _warm_up() -> None:
    from cloud_hub.fl.warm_serverapp import warm_imports

    warm_imports(one_thread=False)


def _log_hub_lines() -> None:
    """The ServerApp's own log lines (``cloud_hub.*``) to stderr, as the forked ServerApp
    process wrote them (Flower's logger keeps its own handler; the root logger stays bare)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    hub = logging.getLogger("cloud_hub")
    hub.addHandler(handler)
    hub.setLevel(logging.INFO)
    hub.propagate = False


def main(argv: list[str] | None = None) -> None:
    """``flower-superlink argv`` with fedfleet's patches and ServerApps run in process."""
    from shared.flower_pulls import retry_object_pulls_sooner
    from shared.warm_superexec import prepare_superlink, run_flower_superlink

    args = sys.argv[1:] if argv is None else argv
    prepare_superlink(args)
    retry_object_pulls_sooner()  # a reply seen before its objects: retry after 50 ms, not 1 s
    _log_hub_lines()
    run_serverapps_in_process(warm_up=_warm_up)
    run_flower_superlink(args)


if __name__ == "__main__":
    main()
