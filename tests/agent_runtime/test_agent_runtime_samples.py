"""The sample store: bounds by bytes, count and age; labels; survives a killed writer."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentConfigError, InferenceInputError
from edge_agent.samples import SampleStore, SampleStoreConfig


def _row(i: int, n: int = 32) -> np.ndarray:
    return np.full(n, i, dtype=np.float32)  # 128 bytes


def test_size_bound_evicts_oldest_first(tmp_path: Path) -> None:
    store = SampleStore(SampleStoreConfig(tmp_path / "s.db", max_bytes=1024, max_sample_bytes=512))
    for i in range(20):
        store.add(f"s{i}", _row(i), model_version=1, label=i % 3, now=1000.0 + i)
    stats = store.stats()
    assert stats.total_bytes <= 1024 and stats.count == 8
    x, y = store.load_training_arrays()
    assert x[:, 0].tolist() == [19, 18, 17, 16, 15, 14, 13, 12]  # newest first, oldest gone
    assert y.tolist() == [i % 3 for i in range(19, 11, -1)]
    assert not store.contains("s0") and store.contains("s19")


def test_count_and_age_bounds(tmp_path: Path) -> None:
    store = SampleStore(
        SampleStoreConfig(tmp_path / "s.db", max_samples=5, max_age_s=100.0, max_sample_bytes=512)
    )
    now = time.time()
    for i in range(8):
        store.add(f"s{i}", _row(i), model_version=1, now=now + i)
    assert store.stats().count == 5
    store.prune(now=now + 104.5)  # s3, s4 are older than 100 s by then
    assert store.stats().count == 3
    assert store.load_training_arrays()[0].shape == (0,)  # nothing labelled


def test_labels_shapes_and_limits(tmp_path: Path) -> None:
    store = SampleStore(SampleStoreConfig(tmp_path / "s.db", max_sample_bytes=1024))
    store.add("a", _row(1), model_version=1)
    store.add("b", np.zeros((2, 4), np.float32), model_version=2, label=1)
    assert store.set_label("a", 4) and not store.set_label("zz", 1)
    x, y = store.load_training_arrays()
    assert x.shape == (1, 2, 4) and y.tolist() == [1]  # the newest labelled shape wins
    store.add("a", _row(9), model_version=1)  # duplicate ids are ignored, not double-counted
    assert store.stats().count == 2
    with pytest.raises(InferenceInputError):
        store.add("big", np.zeros(1024, np.float32), model_version=1)
    with pytest.raises(InferenceInputError):
        store.add("obj", np.array(["x"]), model_version=1)
    with pytest.raises(AgentConfigError):
        SampleStoreConfig(tmp_path / "s.db", max_bytes=10)


def test_a_killed_writer_leaves_a_consistent_store(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    code = textwrap.dedent(
        f"""
        import numpy as np, sys
        from pathlib import Path
        from edge_agent.samples import SampleStore, SampleStoreConfig
        s = SampleStore(SampleStoreConfig(Path({str(db)!r}), max_bytes=64 * 1024))
        i = 0
        while True:
            s.add(f"s{{i}}", np.full(256, i, np.float32), model_version=1, label=i % 3)
            i += 1
            if i == 50:
                print("ready", flush=True)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    time.sleep(0.3)
    proc.kill()
    proc.wait(10)
    store = SampleStore(SampleStoreConfig(db, max_bytes=64 * 1024))
    stats = store.stats()
    assert stats.count > 0 and stats.total_bytes <= 64 * 1024
    x, y = store.load_training_arrays()
    assert x.shape == (stats.count, 256)
    assert all(
        (row == row[0]).all() and int(row[0]) % 3 == lab for row, lab in zip(x, y, strict=True)
    )
