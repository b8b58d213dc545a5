"""Local training and evaluation of a registered model on numpy arrays (imports torch).

Only training paths import this module; the device limits (batch size, epochs, time budget)
are enforced here so that every caller — simulation, SuperNode, the agent's fine-tuning —
gets the same behaviour.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
from numpy.typing import NDArray
from torch import nn

from shared.errors import ConfigError

__all__ = [
    "LocalTrainingLimits",
    "LocalTrainingReport",
    "evaluate_model",
    "get_weights",
    "set_weights",
    "train_model",
]


@dataclass(frozen=True)
class LocalTrainingLimits:
    """What a device allows one round of local training to use."""

    batch_size: int = 32
    max_local_epochs: int = 1
    time_budget_s: float = 60.0
    learning_rate: float = 0.05
    max_samples: int = 1_000_000

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 65_536:
            raise ConfigError(f"batch_size must be in [1, 65536], got {self.batch_size}")
        if not 1 <= self.max_local_epochs <= 1_000:
            raise ConfigError(f"max_local_epochs must be in [1, 1000], got {self.max_local_epochs}")
        if not 0 < self.time_budget_s <= 86_400:
            raise ConfigError(f"time_budget_s must be in (0, 86400], got {self.time_budget_s}")
        if not 0 < self.learning_rate <= 10:
            raise ConfigError(f"learning_rate must be in (0, 10], got {self.learning_rate}")
        if self.max_samples < 1:
            raise ConfigError("max_samples must be >= 1")


@dataclass(frozen=True)
class LocalTrainingReport:
    """What a client may tell the hub about its round (no raw data)."""

    num_examples: int
    epochs_done: int
    steps: int
    train_loss: float
    duration_s: float
    stopped_by_budget: bool


def get_weights(model: nn.Module) -> list[NDArray]:
    """The model's state as numpy arrays, in ``state_dict`` order."""
    return [t.detach().cpu().numpy().copy() for t in model.state_dict().values()]


def set_weights(model: nn.Module, weights: list[NDArray]) -> None:
    """Load numpy arrays (``state_dict`` order) into ``model``; shapes must match."""
    keys = list(model.state_dict().keys())
    if len(keys) != len(weights):
        raise ConfigError(f"expected {len(keys)} weight arrays, got {len(weights)}")
    state = {k: torch.as_tensor(np.asarray(w)) for k, w in zip(keys, weights, strict=True)}
    model.load_state_dict(state, strict=True)


def train_model(
    model: nn.Module,
    x: NDArray[np.float32],
    y: NDArray[np.int64],
    limits: LocalTrainingLimits,
    *,
    proximal_mu: float = 0.0,
    seed: int = 0,
) -> LocalTrainingReport:
    """SGD over ``(x, y)`` within ``limits``; FedProx's proximal term when ``proximal_mu`` > 0."""
    if len(y) == 0:
        return LocalTrainingReport(0, 0, 0, float("nan"), 0.0, False)
    x, y = x[: limits.max_samples], y[: limits.max_samples]
    started = time.monotonic()
    deadline = started + limits.time_budget_s
    generator = torch.Generator().manual_seed(seed)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    anchor = [p.detach().clone() for p in model.parameters()] if proximal_mu > 0 else []
    optimizer = torch.optim.SGD(model.parameters(), lr=limits.learning_rate, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    model.train()
    steps, epochs, total_loss, seen, out_of_time = 0, 0, 0.0, 0, False
    for _ in range(limits.max_local_epochs):
        order = torch.randperm(len(yt), generator=generator)
        for start in range(0, len(order), limits.batch_size):
            idx = order[start : start + limits.batch_size]
            optimizer.zero_grad()
            loss = loss_fn(model(xt[idx]), yt[idx])
            if anchor:
                prox = sum(
                    ((p - a) ** 2).sum() for p, a in zip(model.parameters(), anchor, strict=True)
                )
                loss = loss + proximal_mu / 2 * prox
            loss.backward()
            optimizer.step()
            steps += 1
            total_loss += float(loss.detach()) * len(idx)
            seen += len(idx)
            if time.monotonic() >= deadline:
                out_of_time = True
                break
        epochs += 1
        if out_of_time:
            break
    return LocalTrainingReport(
        num_examples=int(min(len(y), seen)),
        epochs_done=epochs,
        steps=steps,
        train_loss=total_loss / max(seen, 1),
        duration_s=time.monotonic() - started,
        stopped_by_budget=out_of_time,
    )


@torch.no_grad()
def evaluate_model(
    model: nn.Module, x: NDArray[np.float32], y: NDArray[np.int64], *, batch_size: int = 1024
) -> tuple[float, float]:
    """Return ``(mean cross-entropy loss, accuracy)`` of ``model`` on ``(x, y)``."""
    if len(y) == 0:
        return float("nan"), float("nan")
    model.eval()
    loss_fn = nn.CrossEntropyLoss(reduction="sum")
    total_loss, correct = 0.0, 0
    for start in range(0, len(y), batch_size):
        xb = torch.from_numpy(x[start : start + batch_size])
        yb = torch.from_numpy(y[start : start + batch_size])
        logits = model(xb)
        total_loss += float(loss_fn(logits, yb))
        correct += int((logits.argmax(dim=1) == yb).sum())
    return total_loss / len(y), correct / len(y)
