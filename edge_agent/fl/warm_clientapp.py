"""Flower's ``flower-superexec`` for a SuperNode, with ClientApp tasks forked from a warm process.

Flower 1.41's SuperNode (subprocess isolation) starts ``flower-superexec``, which starts a
new ``flwr-clientapp`` process for every message the node receives (SecAgg+: five per
round). Each of those processes imports Flower, torch and the ClientApp again: seconds of
CPU per message on a small device.

This entry point is ``flower-superexec`` unchanged except for how a ClientApp task is
launched: the process imports Flower's ClientApp runner, torch and fedfleet's ClientApp once
and runs one tiny torch training step (:func:`warm_imports`), then *forks* a child per task
that runs Flower's own ``run_clientapp`` with the task's token. Each task still runs in its own process (a crash or
a leak stays in that task), only the start-up cost is gone. Other task types take Flower's
subprocess path. It also polls the SuperNode for tasks every
``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` seconds (default here 0.1; Flower's default is 1.0).

:mod:`edge_agent.fl.pinned_supernode` makes the SuperNode start this module instead of
``flower-superexec`` (POSIX only: it needs ``os.fork``).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from typing import Any

__all__ = ["TASK_POLL_INTERVAL_S", "main", "make_executor_class", "warm_imports", "warm_torch"]

log = logging.getLogger(__name__)

TASK_POLL_INTERVAL_S = "0.1"  # FLWR_SUPEREXEC_TASK_POLL_INTERVAL unless set


def warm_imports() -> None:
    """Import what every ClientApp task needs, once, before any task is forked."""
    import flwr.supernode.runtime.run_clientapp  # noqa: F401
    import torch

    import edge_agent.fl.client_app  # noqa: F401
    import shared.fl.client
    import shared.models  # noqa: F401

    # one intra-op thread, as the ClientApp sets: no OpenMP pool exists when a task forks
    torch.set_num_threads(1)
    warm_torch()


def warm_torch() -> None:
    """One tiny training step and one evaluation, as the ClientApp runs them: torch builds
    its kernels, autograd engine and optimizer state lazily on first use, seconds of CPU
    that every forked task would otherwise pay again (and lose when it exits)."""
    import torch
    from torch import nn

    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    inputs, labels = torch.zeros(2, 4), torch.zeros(2, dtype=torch.int64)
    optimizer.zero_grad()
    nn.CrossEntropyLoss()(model(inputs), labels).backward()
    optimizer.step()
    with torch.no_grad():
        nn.CrossEntropyLoss(reduction="sum")(model(inputs), labels).item()


def _run_task(spec: Any) -> int:
    """In the forked child: run Flower's ClientApp runner for one task; its exit code."""
    import flwr.supercore.telemetry as telemetry
    from flwr.supercore.tls import validate_and_resolve_root_certificates
    from flwr.supernode.runtime.run_clientapp import run_clientapp

    telemetry.state_lock = threading.Lock()  # a lock another thread held at fork stays held
    try:
        run_clientapp(
            runtime_api_address=spec.runtime_api_address,
            token=spec.token,
            insecure=spec.insecure,
            certificates=validate_and_resolve_root_certificates(
                spec.root_certificates_path, spec.insecure
            ),
            parent_pid=spec.parent_pid,
            runtime_dependency_install=spec.runtime_dependency_install,
        )
    except SystemExit as done:  # flwr_exit ends every task with sys.exit
        return done.code if isinstance(done.code, int) else 1
    return 0


def make_executor_class() -> type:
    """Flower's subprocess executor with ClientApp tasks forked (built here: needs Flower)."""
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
    from flwr.supercore.superexec.executor.types import LaunchResult

    class _ForkingClientAppExecutor(SubprocessExecutor):  # type: ignore[misc]
        """Flower's subprocess executor; ClientApp tasks are forked from this process."""

        def launch(self, spec: Any) -> Any:
            self.reconcile()
            if spec.task_type != TaskType.CLIENT_APP:
                return super().launch(spec)
            pid = os.fork()
            if pid == 0:  # the child: never return into the SuperExec loop
                code = 1
                try:
                    code = _run_task(spec)
                finally:
                    os._exit(code)  # skip the parent's exit handlers and open connections
            log.info("ClientApp task %s forked as process %d", spec.task_id, pid)
            return LaunchResult.accepted()

        def reconcile(self) -> None:
            """Reap finished task processes (no zombies)."""
            try:
                while os.waitpid(-1, os.WNOHANG)[0] > 0:
                    pass
            except ChildProcessError:
                pass

    return _ForkingClientAppExecutor


def main(argv: list[str] | None = None) -> None:
    """``flower-superexec`` with :func:`make_executor_class`'s executor for subprocesses."""
    from flwr.supercore.cli.flower_superexec import flower_superexec
    from flwr.supercore.constant import ExecutorType
    from flwr.supercore.superexec import run_superexec as superexec

    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.environ.setdefault("FLWR_SUPEREXEC_TASK_POLL_INTERVAL", TASK_POLL_INTERVAL_S)
    warm_imports()
    executor_class = make_executor_class()
    flower_get_executor = superexec.get_executor

    def get_executor(executor_type: Any, *args: Any, **kwargs: Any) -> Any:
        if executor_type == ExecutorType.SUBPROCESS:
            return executor_class()
        return flower_get_executor(executor_type, *args, **kwargs)

    superexec.get_executor = get_executor  # Flower 1.41 looks it up at call time
    sys.argv = ["flower-superexec", *(sys.argv[1:] if argv is None else argv)]
    flower_superexec()


if __name__ == "__main__":
    main()
