"""FedBuff's pure core: staleness weights and refusal, buffer choice, fold; held-update file."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.fedbuff import FedBuffConfig, HeldUpdateRef, choose_buffer, fold_buffer
from shared.errors import MalformedMessageError
from shared.fl.held_update import HeldUpdate, HeldUpdateStore
from shared.fl.staleness import StalenessError, staleness_weight


def test_staleness_weight_is_one_over_sqrt_one_plus_tau() -> None:
    assert staleness_weight(5, 5, 10) == 1.0
    assert staleness_weight(8, 5, 10) == pytest.approx(1 / math.sqrt(4))


@pytest.mark.parametrize(("current", "base"), [(12, 1), (3, 4)])
def test_too_stale_or_future_updates_are_refused(current: int, base: int) -> None:
    with pytest.raises(StalenessError):
        staleness_weight(current, base, 10)


def test_choose_buffer_takes_the_freshest_and_refuses_the_stale() -> None:
    refs = [HeldUpdateRef(i, f"o{i}", base) for i, base in enumerate([9, 2, 8, 10, 7])]
    choice = choose_buffer(refs, 10, FedBuffConfig(buffer_size=3, max_staleness=5))
    assert [r.device for r in choice.members] == [3, 0, 2]
    assert [r.device for r in choice.refused] == [1]
    waiting = choose_buffer(refs[:2], 10, FedBuffConfig(buffer_size=3, max_staleness=5))
    assert not waiting.ready and [r.device for r in waiting.refused] == [1]


def test_fold_adds_the_mean_weighted_update_times_the_server_lr() -> None:
    folded = fold_buffer([np.ones(3, np.float32)], [np.full(3, 6.0)], 3, 0.5)
    np.testing.assert_allclose(folded[0], np.full(3, 2.0))
    assert folded[0].dtype == np.float32
    with pytest.raises(HubConfigError):
        fold_buffer([np.ones(3)], [np.ones(4)], 3, 1.0)


@pytest.mark.parametrize(
    "bad", [{"buffer_size": 1}, {"server_lr": 0.0}, {"max_staleness": -1}, {"max_staleness": 10**6}]
)
def test_bad_fedbuff_configs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(HubConfigError):
        FedBuffConfig(**bad)  # type: ignore[arg-type]


def test_held_update_round_trips_and_garbage_is_refused(tmp_path: Path) -> None:
    store = HeldUpdateStore(tmp_path / "dev")
    held = HeldUpdate("run", "o1", 3, 40, (np.arange(4.0), np.ones((2, 2), np.float32)))
    store.save(held)
    assert store.path.stat().st_mode & 0o777 == 0o600
    loaded = store.load()
    assert loaded is not None and loaded.order_id == "o1" and loaded.base_version == 3
    np.testing.assert_array_equal(loaded.delta[1], held.delta[1])
    assert not store.release("other") and store.load() is not None
    assert store.release("o1") and store.load() is None
    store.path.write_bytes(b"not a zip")
    with pytest.raises(MalformedMessageError):
        store.load()
