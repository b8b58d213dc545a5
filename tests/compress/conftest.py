"""Fixtures for the compression tests: small models really trained on the hub-held data."""

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


def _train(name: str, epochs: int, lr: float) -> Trained:
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


@pytest.fixture(scope="session")
def digits() -> Trained:
    """The digits CNN trained for a few seconds (~97 % on the held-out 20 %)."""
    return _train("digits-cnn", epochs=8, lr=3e-3)


@pytest.fixture(scope="session")
def sensors() -> Trained:
    """The sensor MLP trained for about a second."""
    return _train("sensor-mlp", epochs=10, lr=3e-3)


@pytest.fixture()
def fast_config() -> CompressionConfig:
    """Few latency repeats: the tests check the figures exist, the benchmark measures them."""
    return CompressionConfig(latency=LatencyConfig(warmup=1, repeats=3))
