"""Optional step 0: global L1 magnitude pruning of conv/linear weights before export.

Unstructured zeros do not make a dense ONNX kernel faster; they make the weights compress
better in the bundle (zstd) and are a cheap accuracy/size trade a profile may ask for.
The pruning is made permanent (``prune.remove``) so the exported graph is plain.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import prune

from cloud_hub.errors import CompressionError

__all__ = ["PruningReport", "prune_magnitude"]


@dataclass(frozen=True)
class PruningReport:
    amount: float
    sparsity: float  # fraction of conv/linear weights that are exactly zero afterwards
    parameters: int  # conv/linear weights considered


def _weights(model: nn.Module) -> list[tuple[nn.Module, str]]:
    return [
        (m, "weight") for m in model.modules() if isinstance(m, nn.Conv2d | nn.Conv1d | nn.Linear)
    ]


def prune_magnitude(model: nn.Module, amount: float) -> tuple[nn.Module, PruningReport]:
    """Return a pruned copy of ``model`` (the input is left untouched) and a report."""
    if not 0.0 <= amount < 1.0:
        raise CompressionError(f"pruning amount must be in [0, 1), got {amount}")
    pruned = copy.deepcopy(model)
    targets = _weights(pruned)
    if not targets:
        raise CompressionError("nothing to prune: the model has no conv or linear layers")
    if amount > 0:
        prune.global_unstructured(targets, pruning_method=prune.L1Unstructured, amount=amount)
        for module, name in targets:
            prune.remove(module, name)
    with torch.no_grad():
        total = sum(int(getattr(m, n).numel()) for m, n in targets)
        zeros = sum(int((getattr(m, n) == 0).sum()) for m, n in targets)
    return pruned, PruningReport(amount=amount, sparsity=zeros / total, parameters=total)
