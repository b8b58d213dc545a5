"""The asynchronous FAB tells its clients the SecAgg+ mask generator, as the synchronous one
does, and a fedfleet client refuses a buffer exchange whose run names another generator
(in-process grid, real Flower SecAgg+ stages)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from flwr.app import Message
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from cloud_hub.fl.async_run import AsyncBufferedRun
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.fedbuff import FedBuffConfig
from cloud_hub.fl.inprocess_grid import InProcessGrid
from shared.data import generate_sensor_data
from shared.fl import ArrayDataSource, InMemoryPartitions
from shared.fl.async_client import AsyncClientSpec, build_async_client_app
from shared.fl.config_keys import RunConfigKey
from shared.fl.held_update import HeldUpdateStore
from shared.fl.secure_prg import MASK_GENERATOR
from shared.fl.training import LocalTrainingLimits, get_weights
from shared.models import build_model

FL = Path(__file__).resolve().parents[2] / "cloud_hub" / "fl"
MODEL = "sensor-mlp"


def _fab_run_config(folder: str) -> dict[str, Any]:
    manifest = tomllib.loads((FL / folder / "pyproject.toml").read_text())
    config: dict[str, Any] = manifest["tool"]["flwr"]["app"]["config"]
    return config


def test_the_async_fab_names_the_mask_generator_like_the_sync_one() -> None:
    asynchronous = _fab_run_config("fab_async")
    assert asynchronous[RunConfigKey.MASK_GENERATOR] == MASK_GENERATOR
    synchronous = _fab_run_config("fab")
    for key in (RunConfigKey.MASK_GENERATOR, RunConfigKey.SECURE_AGGREGATION):
        assert asynchronous[key] == synchronous[key], key


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping a copy of every reply that reaches the hub."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.replies: list[Message] = []

    def pull_messages(self, message_ids):  # type: ignore[no-untyped-def]
        replies = list(super().pull_messages(message_ids))
        self.replies.extend(replies)
        return replies


@pytest.fixture
def grid(tmp_path: Path) -> Iterator[RecordingGrid]:
    sources = tuple(
        ArrayDataSource(*generate_sensor_data(40, seed=3, sample_seed=200 + i)) for i in range(3)
    )
    spec = AsyncClientSpec(
        model_name=MODEL,
        data=InMemoryPartitions(sources),
        held_root=tmp_path,
        limits=LocalTrainingLimits(batch_size=16, max_local_epochs=1),
    )
    opened = RecordingGrid(
        build_async_client_app(spec),
        3,
        seed=7,
        run_config={RunConfigKey.MASK_GENERATOR: "flower-mt19937"},
    )
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = opened.run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    yield opened
    opened.close()


def test_a_client_refuses_a_buffer_naming_another_mask_generator(
    tmp_path: Path, grid: RecordingGrid
) -> None:
    initial: list[np.ndarray] = get_weights(build_model(MODEL, seed=0))
    run = AsyncBufferedRun(
        grid, initial, fedbuff=FedBuffConfig(buffer_size=3), secagg=SecAggConfig()
    )
    members = run.order(grid.get_node_ids())
    assert len(members) == 3  # ordering is no SecAgg+ exchange: the devices train and hold
    before = len(grid.replies)
    record = run.fold_members(members)
    assert not record.completed and run.version == 0
    refusals = [r.error.reason or "" for r in grid.replies[before:] if r.has_error()]
    assert len(refusals) == 3, refusals
    for reason in refusals:
        assert "this run requires SecAgg+ mask generator 'flower-mt19937'" in reason
        assert f"this client masks with {MASK_GENERATOR!r} only" in reason
    for node_id in grid.get_node_ids():  # refused before masking: every update is kept
        held = HeldUpdateStore(tmp_path / f"partition-{grid.partition_of(node_id)}").load()
        assert held is not None and not held.spent and held.delta != ()
