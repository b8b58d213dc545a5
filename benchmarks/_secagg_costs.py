"""Where a SecAgg+ round's extra seconds go, for ``benchmarks/fl.py`` (CPU, not wall).

The wall-clock ratios of ``_fl_pairs`` swing with the neighbours' load; CPU seconds do not,
and they answer the question a missed target raises: is the extra cost ours (and removable)
or the protocol's? One run of a plain and one of a SecAgg+ fit round, alternated and
repeated, each measured as

- the fit round's process CPU (the ServerApp's fit workflow and every in-process client
  under it, all threads): ``fit_cpu_s``;
- the clients' CPU per SecAgg+ stage (thread CPU inside the in-process grid's delivery);

next to two unit costs measured on the spot: one P-384 ECDH exchange (Flower's SecAgg+ key
agreement, ``SECP384R1``) and one mask expansion over the model's shapes. Each client of a
round with ``k`` neighbours does ``2k`` exchanges (one per neighbour to encrypt its shares,
one per neighbour for the pairwise mask seed) and ``k + 1`` mask expansions; the protocol
fixes both counts. ``floor_ratio_cpu`` is the plain round's CPU plus those exchanges alone,
over the plain round's CPU: no SecAgg+ implementation of this protocol on these clients can
get its CPU ratio below it. ``floor_with_masks_ratio_cpu`` adds the mask expansions (the
clients' and the hub's), which the protocol fixes too.
"""

from __future__ import annotations

import statistics
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["secagg_costs"]

StageCpu = defaultdict[str, float]  # the clients' thread CPU per SecAgg+ stage ("train": plain)


def _unit_cpu_s(action: Callable[[], object], repeats: int = 200, batches: int = 5) -> float:
    """Median thread CPU of one ``action()`` over ``batches`` batches of ``repeats``."""
    per_call = []
    for _ in range(batches):
        started = time.thread_time()
        for _ in range(repeats):
            action()
        per_call.append((time.thread_time() - started) / repeats)
    return statistics.median(per_call)


def _ecdh_cpu_s() -> float:
    from cryptography.hazmat.primitives.asymmetric import ec

    own = ec.generate_private_key(ec.SECP384R1())
    peer = ec.generate_private_key(ec.SECP384R1()).public_key()
    return _unit_cpu_s(lambda: own.exchange(ec.ECDH(), peer))


def _mask_cpu_s(shapes: list[tuple[int, ...]], modulus_range: int) -> float:
    """One mask added into a model-sized vector, as the client's masking stage does it."""
    import math

    import numpy as np

    from shared.fl.secure_prg import add_mask_into

    total = np.zeros(sum(math.prod(shape) for shape in shapes), dtype=np.uint64)
    return _unit_cpu_s(lambda: add_mask_into(total, b"s" * 44, modulus_range), 50)


@contextmanager
def _measured(stage_cpu: StageCpu, fit_cpu: list[float]) -> Iterator[None]:
    """Count the clients' CPU per stage and the fit round's process CPU (then restore)."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key

    from cloud_hub.fl.inprocess_grid import InProcessGrid
    from cloud_hub.fl.workflow import TimedFitWorkflow

    deliver, fit = InProcessGrid._deliver, TimedFitWorkflow.__call__

    def counted_deliver(grid: InProcessGrid, message: Any) -> Any:
        configs = message.content.config_records.get(RECORD_KEY_CONFIGS)
        stage = str(configs[Key.STAGE]) if configs is not None else "train"
        started = time.thread_time()
        try:
            return deliver(grid, message)
        finally:
            stage_cpu[stage] += time.thread_time() - started

    def counted_fit(workflow: TimedFitWorkflow, *args: Any) -> None:
        started = time.process_time()
        try:
            fit(workflow, *args)
        finally:
            fit_cpu.append(time.process_time() - started)

    InProcessGrid._deliver = counted_deliver  # type: ignore[method-assign,assignment]
    TimedFitWorkflow.__call__ = counted_fit  # type: ignore[method-assign,assignment]
    try:
        yield
    finally:
        InProcessGrid._deliver = deliver  # type: ignore[method-assign,assignment]
        TimedFitWorkflow.__call__ = fit  # type: ignore[method-assign,assignment]


def _one_round(sources: Any, holdout: Any, num_shares: float | None) -> tuple[float, StageCpu]:
    from cloud_hub.fl import FederatedRunConfig, SecAggConfig, run_federated

    cfg = FederatedRunConfig(
        model_name="digits-cnn", num_clients=len(sources), num_rounds=1, local_epochs=1,
        batch_size=16, learning_rate=0.05, engine="inprocess",
        secagg=SecAggConfig(num_shares=num_shares) if num_shares else SecAggConfig(enabled=False),
    )  # fmt: skip
    stage_cpu: StageCpu = defaultdict(float)
    fit_cpu: list[float] = []
    with _measured(stage_cpu, fit_cpu):
        run_federated(cfg, sources, holdout)
    return sum(fit_cpu), stage_cpu


def _neighbours(num_clients: int, num_shares: float) -> int:
    """Flower 1.41's share count (a float is a fraction, made odd), less the client itself."""
    if num_shares > 1:
        return int(num_shares) - 1
    shares = round(num_shares * num_clients)
    if shares < num_clients and shares % 2 == 0:
        shares += 1
    return (num_clients if shares <= 2 else shares) - 1


def secagg_costs(num_clients: int, repeats: int, *, num_shares: float = 1.0) -> dict[str, Any]:
    """CPU of a plain and a SecAgg+ fit round of ``num_clients`` (1 local epoch), split."""
    from benchmarks._fl_pairs import digits_partitions, secagg_args
    from cloud_hub.fl.run import initial_weights

    sources, holdout = digits_partitions(num_clients)
    plain: list[tuple[float, StageCpu]] = []
    secure: list[tuple[float, StageCpu]] = []
    for rep in range(repeats):
        order = ((plain, None), (secure, num_shares))
        for samples, shares in order if rep % 2 == 0 else order[::-1]:
            samples.append(_one_round(sources, holdout, shares))
    shapes = [a.shape for a in initial_weights("digits-cnn", 0, None)] + [()]  # + the factor
    ecdh_s = _ecdh_cpu_s()
    mask_s = _mask_cpu_s(shapes, secagg_args(num_shares)["modulus_range"])
    k = _neighbours(num_clients, num_shares)

    def median(samples: list[tuple[float, StageCpu]], pick: Callable[..., float]) -> float:
        return statistics.median(pick(fit, stages) for fit, stages in samples)

    plain_fit = median(plain, lambda fit, _: fit)
    secure_fit = median(secure, lambda fit, _: fit)
    train_ms = 1e3 * median(plain, lambda _, st: st["train"]) / num_clients
    stages_ms = {
        stage: round(1e3 * median(secure, lambda _, st, s=stage: st[s]) / num_clients, 2)
        for stage in ("setup", "share_keys", "collect_masked_vectors", "unmask")
    }
    ecdh_round_s = num_clients * 2 * k * ecdh_s
    masks_round_s = num_clients * (k + 1) * mask_s + num_clients * mask_s  # + the hub's
    extra = secure_fit - plain_fit
    return {
        "clients": num_clients,
        "neighbours_per_client": k,
        "ecdh_exchanges_per_client": 2 * k,
        "ecdh_ms": round(1e3 * ecdh_s, 4),
        "mask_expansion_ms": round(1e3 * mask_s, 4),
        "train_cpu_ms_per_client_plain": round(train_ms, 2),
        "client_cpu_ms_per_stage_secagg": stages_ms,
        "fit_cpu_s_plain": round(plain_fit, 4),
        "fit_cpu_s_secagg": round(secure_fit, 4),
        "ratio_fit_cpu": round(secure_fit / plain_fit, 3),
        "extra_cpu_s": round(extra, 4),
        "extra_ecdh_cpu_s": round(ecdh_round_s, 4),
        "extra_masks_cpu_s": round(masks_round_s, 4),
        "extra_other_cpu_s": round(extra - ecdh_round_s - masks_round_s, 4),
        "floor_ratio_cpu": round((plain_fit + ecdh_round_s) / plain_fit, 3),
        "floor_with_masks_ratio_cpu": round(
            (plain_fit + ecdh_round_s + masks_round_s) / plain_fit, 3
        ),
        "repeats": repeats,
    }
