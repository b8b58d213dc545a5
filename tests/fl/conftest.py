"""Shared fixtures for the federated-learning tests: tiny sensor cohorts (fast to train)."""

from __future__ import annotations

import logging

import pytest

from shared.data import generate_sensor_data
from shared.fl import ArrayDataSource


@pytest.fixture(autouse=True)
def _quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.WARNING)


@pytest.fixture
def sensor_cohort() -> tuple[list[ArrayDataSource], tuple]:
    """Five clients with 60 sensor samples each, and a 300-sample hub validation set."""
    sources = [
        ArrayDataSource(*generate_sensor_data(60, seed=3, sample_seed=100 + i)) for i in range(5)
    ]
    validation = generate_sensor_data(300, seed=3, sample_seed=99)
    return sources, validation
