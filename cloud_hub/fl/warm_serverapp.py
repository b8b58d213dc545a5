"""The SuperExec of the hub's SuperLink, with ServerApp runs forked from a warm process.

Flower 1.41's SuperLink (subprocess isolation) starts ``flower-superexec``, which asks for a
new run every second and starts a new ``flwr-serverapp`` process for it: that process imports
Flower, torch and the hub's ServerApp before round 1 can start (measured ~7 s of a run's
fixed cost on 2 busy cores).

The hub runs Flower's SuperLink as ``python -m shared.warm_superexec superlink
cloud_hub.fl.warm_serverapp <flower-superlink arguments>``: unchanged except that it starts
this module (``python -m cloud_hub.fl.warm_serverapp <flower-superexec arguments>``) where
Flower starts ``flower-superexec``: :mod:`shared.warm_superexec` with ServerApp runs forked
from a process that imported the ServerApp, torch and Flower's ServerApp runner once
(:func:`warm_imports`), asking for runs 0.05-0.5 s apart (Flower: every 1 s). Each run
still gets its own process and Flower's own ``flwr-serverapp`` code (token, TLS to the
SuperLink's runtime API, the FAB's component); only the start-up cost is gone. POSIX only
(fork): elsewhere the SuperLink starts Flower's own SuperExec.
"""

from __future__ import annotations

import logging
import sys

from shared.warm_superexec import run_warm_superexec

__all__ = ["main", "run_superexec", "warm_imports"]

_THREADS_AT_START = {"torch": 0}  # torch's intra-op threads before the warm process set 1


def warm_imports(*, one_thread: bool = True) -> None:
    """Import what every ServerApp run needs, once, before any run is forked, and evaluate a
    tiny model once (torch sets up its kernels lazily, on first use). ``one_thread``: torch
    uses one thread while warm (a process that forks runs; the in-process mode of
    :mod:`cloud_hub.fl.inprocess_serverapp` forks none and passes ``False``)."""
    import flwr.superlink.cli
    import flwr.superlink.runtime  # noqa: F401
    import torch
    from torch import nn

    import cloud_hub.fl.server_app
    import cloud_hub.fl.superlink_app  # noqa: F401
    import shared.models  # noqa: F401

    # one thread while warm: no OpenMP pool exists when a run forks (it would hang there)
    _THREADS_AT_START["torch"] = torch.get_num_threads()
    if one_thread:
        torch.set_num_threads(1)
    with torch.no_grad():
        model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        nn.CrossEntropyLoss(reduction="sum")(model(torch.zeros(2, 4)), torch.zeros(2).long())


def _after_fork() -> None:
    """In a forked run: torch may use as many threads as a fresh ``flwr-serverapp``."""
    import torch

    torch.set_num_threads(max(1, _THREADS_AT_START["torch"]))


def run_superexec(argv: list[str]) -> None:
    """``flower-superexec argv`` with ServerApp runs forked after :func:`warm_imports`."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from flwr.supercore.constant import TaskType
    from flwr.superlink.cli import flwr_serverapp

    warm_imports()
    run_warm_superexec(TaskType.SERVER_APP, flwr_serverapp, argv, after_fork=_after_fork)


def main(argv: list[str] | None = None) -> None:
    run_superexec(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
