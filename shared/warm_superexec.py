"""Flower's ``flower-superexec`` with the tasks of one type forked from a warm process.

Flower 1.41 runs every task (a ClientApp message on a SuperNode, a ServerApp run on the
SuperLink) as a new process: ``flwr-clientapp`` / ``flwr-serverapp`` import Flower, torch and
the app again each time, seconds of CPU per task on a small machine. Both sides of fedfleet
start this SuperExec instead (:mod:`edge_agent.fl.warm_clientapp`,
:mod:`cloud_hub.fl.warm_serverapp`): it imports what the tasks need once, then *forks* a child
per task that runs Flower's own entry point (``flwr-clientapp`` or ``flwr-serverapp``) with
exactly the arguments Flower's subprocess executor would pass (the task's token included).
Each task still runs in its own process (a crash or a leak stays in that task); only the
start-up cost is gone. Other task types take Flower's subprocess path. The SuperExec asks
for the next task 0.05 s after launching one, then ever less often up to 0.5 s while none
comes (:class:`shared.poll_backoff.PollBackoff`; Flower asks every
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` = 1 s).

Flower's SuperNode and SuperLink start ``flower-superexec`` by name through their module's
``subprocess``; :func:`use_warm_superexec` puts a :class:`WarmSuperExecLauncher` there.
``python -m shared.warm_superexec superlink MODULE <flower-superlink arguments>`` runs
Flower's SuperLink with ``python -m MODULE`` as its SuperExec: this module imports nothing
heavy, so the SuperLink listens as soon as Flower's own imports allow (the warm SuperExec
imports torch and the app in its own process meanwhile). POSIX only (fork). The same patches
of the SuperLink (:func:`prepare_superlink`) serve a SuperLink that runs its ServerApps in
its own process (:mod:`cloud_hub.fl.inprocess_serverapp`, no SuperExec).
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from shared.poll_backoff import PollBackoff

__all__ = [
    "WarmSuperExecLauncher",
    "main",
    "make_forking_executor_class",
    "prepare_superlink",
    "run_flower_superlink",
    "run_warm_superexec",
    "start_superlink",
    "use_warm_superexec",
]

log = logging.getLogger(__name__)


#: A Flower console-script function (``flwr_clientapp``, ``flwr_serverapp``): reads sys.argv.
TaskEntryPoint = Callable[[], None]


class WarmSuperExecLauncher:
    """Stands in for ``subprocess`` in a Flower module: ``flower-superexec`` is started as
    ``python -m <module> <module_args>`` with the same arguments; everything else is
    ``subprocess``."""

    def __init__(self, module: str, *module_args: str) -> None:
        import subprocess

        self.command = [sys.executable, "-m", module, *module_args]
        self._subprocess = subprocess

    def __getattr__(self, name: str) -> Any:
        return getattr(self._subprocess, name)

    def Popen(self, command: list[str], *args: Any, **kwargs: Any) -> Any:
        if command and command[0] == "flower-superexec":
            command = [*self.command, *command[1:]]
        return self._subprocess.Popen(command, *args, **kwargs)


def use_warm_superexec(flower_module: str, superexec_module: str, *module_args: str) -> None:
    """Make Flower's ``flower_module`` (it starts ``flower-superexec`` through its
    ``subprocess``) start ``python -m superexec_module module_args`` instead."""
    module = importlib.import_module(flower_module)
    if not hasattr(module, "subprocess"):  # a Flower other than 1.41
        raise SystemExit(f"warm_superexec: {flower_module} starts no flower-superexec")
    module.subprocess = WarmSuperExecLauncher(superexec_module, *module_args)  # type: ignore[attr-defined]


def _in_memory_state(argv: list[str]) -> bool:
    """Whether ``flower-superlink argv`` keeps its state in memory (no database file)."""
    from flwr.supercore.constant import FLWR_IN_MEMORY_DB_NAME

    if "--database" not in argv:
        return False  # Flower's default is a database file
    return argv[argv.index("--database") + 1] == FLWR_IN_MEMORY_DB_NAME


def prepare_superlink(argv: list[str]) -> None:
    """fedfleet's patches of this process's Flower SuperLink (``flower-superlink argv``):
    scoped middleware, held pulls, SuperNode signatures verified once, and quick handlers
    inline on an in-memory state."""
    from shared.flower_long_poll import hold_pulls_until_work
    from shared.flower_middleware import scope_superlink_middleware
    from shared.flower_node_auth import cache_verified_signatures

    scope_superlink_middleware()  # Fleet and runtime calls skip the Control API's layers
    cache_verified_signatures()  # a SuperNode's signed timestamp is verified once
    hold_pulls_until_work()  # a pull waits for the push that gives it something to pull
    if _in_memory_state(argv):  # handlers that only touch memory run without a thread hop
        from shared.flower_inline import run_quick_handlers_inline

        run_quick_handlers_inline()


def run_flower_superlink(argv: list[str]) -> None:
    """Flower's ``flower-superlink argv`` in this process (blocks until it stops)."""
    from flwr.superlink.cli import flower_superlink

    sys.argv = ["flower-superlink", *argv]
    flower_superlink()


def start_superlink(superexec_module: str, argv: list[str]) -> None:
    """Flower's ``flower-superlink argv``, its SuperExec ``python -m superexec_module``."""
    prepare_superlink(argv)
    if os.name == "posix":  # forking needs POSIX; elsewhere Flower's own SuperExec
        use_warm_superexec("flwr.superlink.cli.flower_superlink", superexec_module)
    run_flower_superlink(argv)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "superlink":
        raise SystemExit(
            "usage: python -m shared.warm_superexec superlink SUPEREXEC_MODULE "
            "[flower-superlink arguments]"
        )
    start_superlink(args[1], args[2:])


def _task_argv(spec: Any) -> list[str]:
    """The command line Flower's ``SubprocessExecutor.launch`` builds for ``spec``."""
    from flwr.supercore.constant import TASK_TYPE_TO_APPIO_API_ADDRESS_ARG, TASK_TYPE_TO_COMMAND

    argv = [
        TASK_TYPE_TO_COMMAND[spec.task_type],
        TASK_TYPE_TO_APPIO_API_ADDRESS_ARG[spec.task_type],
        spec.runtime_api_address,
        "--token",
        spec.token,
    ]
    if spec.insecure:
        argv.append("--insecure")
    elif spec.root_certificates_path is not None:
        argv += ["--root-certificates", spec.root_certificates_path]
    if spec.parent_pid is not None:
        argv += ["--parent-pid", str(spec.parent_pid)]
    if spec.runtime_dependency_install:
        argv.append("--allow-runtime-dependency-installation")
    return argv


def _run_forked_task(spec: Any, entry: TaskEntryPoint, after_fork: Callable[[], None]) -> int:
    """In the forked child: Flower's entry point for one task; its exit code."""
    import flwr.supercore.telemetry as telemetry

    telemetry.state_lock = threading.Lock()  # a lock another thread held at fork stays held
    after_fork()
    sys.argv = _task_argv(spec)
    try:
        entry()
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    return 0


class _BackoffSleepTime:
    """Stands in for ``time`` in Flower's SuperExec loop: its fixed sleep between task
    requests becomes ``backoff``'s wait."""

    def __init__(self, backoff: PollBackoff) -> None:
        self.backoff = backoff

    def __getattr__(self, name: str) -> Any:
        return getattr(time, name)

    def sleep(self, _seconds: float) -> None:
        time.sleep(self.backoff.next_wait_s())


def make_forking_executor_class(
    task_type: Any,
    entry: TaskEntryPoint,
    after_fork: Callable[[], None] = lambda: None,
    backoff: PollBackoff | None = None,
) -> type:
    """Flower's subprocess executor with ``task_type`` tasks forked from this process
    (``entry`` runs in the child after ``after_fork``); each launch tells ``backoff``."""
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import LaunchResult

    class ForkingExecutor(SubprocessExecutor):  # type: ignore[misc]
        """Flower's subprocess executor; one task type is forked from this process."""

        def launch(self, spec: Any) -> Any:
            self.reconcile()
            if backoff is not None:
                backoff.activity()
            if spec.task_type != task_type:
                return super().launch(spec)
            pid = os.fork()
            if pid == 0:  # the child: never return into the SuperExec loop
                code = 1
                try:
                    code = _run_forked_task(spec, entry, after_fork)
                finally:
                    os._exit(code)  # skip the parent's exit handlers and open connections
            log.info("%s task %s forked as process %d", task_type, spec.task_id, pid)
            return LaunchResult.accepted()

        def reconcile(self) -> None:
            """Reap finished task processes (no zombies)."""
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass

    return ForkingExecutor


def run_warm_superexec(
    task_type: Any,
    entry: TaskEntryPoint,
    argv: list[str],
    *,
    after_fork: Callable[[], None] = lambda: None,
) -> None:
    """``flower-superexec argv`` with ``task_type`` tasks forked from this process (see
    :func:`make_forking_executor_class`), asking for tasks after a :class:`PollBackoff`'s
    waits; the forked tasks retry Flower's object pulls after 0.05 s
    (:mod:`shared.flower_pulls`) and log no line per HTTP request."""
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as superexec

    from shared.flower_pulls import retry_object_pulls_sooner

    retry_object_pulls_sooner()
    logging.getLogger("httpx").setLevel(logging.WARNING)  # a line per poll otherwise
    if getattr(superexec, "time", None) is not time:  # a Flower other than 1.41
        raise SystemExit("warm_superexec: this Flower SuperExec does not sleep in time.sleep")
    backoff = PollBackoff()
    superexec.time = _BackoffSleepTime(backoff)  # type: ignore[assignment]
    executor_class = make_forking_executor_class(task_type, entry, after_fork, backoff)
    flower_get_executor = superexec.get_executor

    def get_executor(executor_type: Any, *args: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return executor_class()
        return flower_get_executor(executor_type, *args, **kwargs)

    superexec.get_executor = get_executor  # Flower 1.41 looks it up at call time
    sys.argv = ["flower-superexec", *argv]
    flower_superexec()


if __name__ == "__main__":
    main()
