"""Fixtures for the compression tests: small models really trained on the hub-held data.

Test modules use these only as fixtures (the suite runs with ``--import-mode=importlib``,
where a test cannot import a sibling module).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from cloud_hub.compress import CompressionConfig, LabelledSet, LatencyConfig
from cloud_hub.compress.datasets import hub_datasets
from shared.models import build_model


@dataclass(frozen=True)
class Trained:
    name: str
    model: torch.nn.Module
    state_dict: dict[str, torch.Tensor]
    calib: LabelledSet
    eval: LabelledSet


def train(name: str, epochs: int, lr: float) -> Trained:
    calib, evaluation = hub_datasets(name)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # 3x faster than 2 threads on the shared 2-core machine
    torch.manual_seed(0)
    model = build_model(name, seed=0)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(calib.x), torch.from_numpy(calib.y)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(x))
        for start in range(0, len(x), 64):
            idx = order[start : start + 64]
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    torch.set_num_threads(threads)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return Trained(name, model, state, calib, evaluation)


class Eig(torch.nn.Module):
    """A model whose operator (torch.linalg.eig) has no ONNX translation."""

    def __init__(self) -> None:
        super().__init__()
        self.linear = torch.nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = self.linear(x.reshape(x.shape[0], 8, 8))
        return torch.linalg.eig(m)[0].real


@pytest.fixture(scope="session")
def digits() -> Trained:
    """The digits CNN trained for a few seconds (~97 % on the held-out 20 %)."""
    return train("digits-cnn", epochs=8, lr=3e-3)


@pytest.fixture(scope="session")
def sensors() -> Trained:
    """The sensor MLP trained for about a second."""
    return train("sensor-mlp", epochs=10, lr=3e-3)


@pytest.fixture()
def fast_config() -> CompressionConfig:
    """Few latency repeats: the tests check the figures exist, the benchmark measures them."""
    return CompressionConfig(latency=LatencyConfig(warmup=1, repeats=3))


@pytest.fixture()
def unexportable_model() -> torch.nn.Module:
    return Eig()
