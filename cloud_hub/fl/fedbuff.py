"""FedBuff, the pure part: buffer choice and fold of asynchronous updates (no I/O).

The hub holds a global model at an integer version. Devices train from the version they
were ordered with and *hold* their update ``delta_i = local_i - base_i``. When ``K`` held
updates are ready, the buffer is folded::

    aggregate = (1 / K) * sum_i w(tau_i) * delta_i      w(tau) = 1 / sqrt(1 + tau)
    global    = global + server_lr * aggregate

(Nguyen et al., "Federated Learning with Buffered Asynchronous Aggregation", 2022). Under
SecAgg+ each device masks ``w(tau_i) * delta_i`` itself, so the hub only ever receives the
sum. Updates staler than ``max_staleness`` are refused (:mod:`shared.fl.staleness`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloud_hub.errors import HubConfigError
from shared.fl.staleness import MAX_STALENESS_LIMIT, StalenessError, staleness

__all__ = ["BufferChoice", "FedBuffConfig", "HeldUpdateRef", "choose_buffer", "fold_buffer"]

_MAX_BUFFER = 10_000


@dataclass(frozen=True)
class FedBuffConfig:
    """Buffer size ``K``, server learning rate and the staleness limit."""

    buffer_size: int = 5
    server_lr: float = 1.0
    max_staleness: int = 10

    def __post_init__(self) -> None:
        if not 2 <= self.buffer_size <= _MAX_BUFFER:
            raise HubConfigError(
                f"fedbuff buffer_size must be in [2, {_MAX_BUFFER}], got {self.buffer_size}"
            )
        if not 0 < self.server_lr <= 10:
            raise HubConfigError(f"fedbuff server_lr must be in (0, 10], got {self.server_lr}")
        if not 0 <= self.max_staleness <= MAX_STALENESS_LIMIT:
            raise HubConfigError(
                f"fedbuff max_staleness must be in [0, {MAX_STALENESS_LIMIT}], got {self.max_staleness}"
            )


@dataclass(frozen=True)
class HeldUpdateRef:
    """What the hub knows of an update a device holds: never its values."""

    device: int
    order_id: str
    base_version: int


@dataclass(frozen=True)
class BufferChoice:
    """The members of the next buffer, and held updates refused as too stale."""

    members: tuple[HeldUpdateRef, ...]
    refused: tuple[HeldUpdateRef, ...]

    @property
    def ready(self) -> bool:
        return bool(self.members)


def choose_buffer(
    held: Sequence[HeldUpdateRef], current_version: int, config: FedBuffConfig
) -> BufferChoice:
    """The ``K`` least stale held updates (ties: oldest order first), if there are ``K``.

    Updates beyond ``max_staleness`` are returned as ``refused`` whether or not a buffer
    is ready: the device should drop them and take a fresh order.
    """
    fresh: list[HeldUpdateRef] = []
    refused: list[HeldUpdateRef] = []
    for ref in held:
        try:
            staleness(current_version, ref.base_version, config.max_staleness)
        except StalenessError:
            refused.append(ref)
        else:
            fresh.append(ref)
    if len(fresh) < config.buffer_size:
        return BufferChoice((), tuple(refused))
    fresh.sort(key=lambda r: (current_version - r.base_version, r.order_id))
    return BufferChoice(tuple(fresh[: config.buffer_size]), tuple(refused))


def fold_buffer(
    global_weights: Sequence[NDArray],
    weighted_sum: Sequence[NDArray],
    buffer_size: int,
    server_lr: float,
) -> list[NDArray]:
    """``global + server_lr * weighted_sum / buffer_size`` (``weighted_sum``: sum of w*delta)."""
    if len(global_weights) != len(weighted_sum):
        raise HubConfigError(
            f"buffer sum has {len(weighted_sum)} arrays, the global model {len(global_weights)}"
        )
    if buffer_size < 1:
        raise HubConfigError("buffer_size must be >= 1")
    folded: list[NDArray] = []
    for g, s in zip(global_weights, weighted_sum, strict=True):
        if g.shape != s.shape:
            raise HubConfigError(f"buffer sum shape {s.shape} does not match {g.shape}")
        step = np.asarray(s, dtype=np.float64) * (server_lr / buffer_size)
        folded.append((g.astype(np.float64) + step).astype(g.dtype))
    return folded
