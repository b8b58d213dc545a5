"""Flower's ``flower-superexec`` for a SuperNode, with ClientApp tasks forked from a warm process.

Flower 1.41's SuperNode (subprocess isolation) starts ``flower-superexec``, which starts a
new ``flwr-clientapp`` process for every message the node receives (SecAgg+: four per
round). Each of those processes imports Flower, torch and the ClientApp again: seconds of
CPU per message on a small device.

This entry point is :mod:`shared.warm_superexec` for ClientApp tasks: the process imports
Flower's ClientApp runner, torch and fedfleet's ClientApp once and runs one tiny torch
training step (:func:`warm_imports`), then forks a child per task that runs Flower's own
``flwr-clientapp`` with the task's token.

:mod:`edge_agent.fl.pinned_supernode` makes the SuperNode start this module instead of
``flower-superexec`` (POSIX only: it needs ``os.fork``).
"""

from __future__ import annotations

import logging
import sys

from shared.warm_superexec import run_warm_superexec

__all__ = ["main", "warm_imports", "warm_torch"]


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


def main(argv: list[str] | None = None) -> None:
    """``flower-superexec`` with ClientApp tasks forked after :func:`warm_imports`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from flwr.supercore.constant import TaskType
    from flwr.supernode.cli import flwr_clientapp

    warm_imports()
    run_warm_superexec(TaskType.CLIENT_APP, flwr_clientapp, sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
