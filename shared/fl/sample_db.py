"""The labelled part of an agent's sample store, as training arrays.

The agent owns the store (``edge_agent.samples.store``: SQLite, one row per sample with its
shape, dtype, raw bytes and optional label) and writes it; training reads it. The same read
serves the agent's Flower ClientApp and the simulations' in-process trainer, which reads the
stores of devices that run on the same machine (``simulations.demo.sample_stores``); the hub
itself never reads a sample store.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = ["LABELLED_SAMPLES_QUERY", "labelled_arrays", "read_labelled_samples"]

LABELLED_SAMPLES_QUERY = (
    "SELECT shape, dtype, x, label FROM samples WHERE label IS NOT NULL "
    "ORDER BY created DESC, rowid DESC"
)

TrainingArrays = tuple[NDArray[np.float32], NDArray[np.int64]]


def _empty() -> TrainingArrays:
    return np.zeros((0,), np.float32), np.zeros((0,), np.int64)


def labelled_arrays(rows: Iterable[tuple[Any, ...]], *, limit: int | None = None) -> TrainingArrays:
    """Rows of :data:`LABELLED_SAMPLES_QUERY` as ``(x, y)``, newest first.

    Only samples with the shape of the newest labelled one are kept (a model update may change
    the input shape). Empty arrays when nothing is labelled.
    """
    rows = list(rows)
    if not rows:
        return _empty()
    shape_key = rows[0][0]
    shape = tuple(int(d) for d in shape_key.split(",") if d)
    xs: list[NDArray[np.float32]] = []
    ys: list[int] = []
    for row_shape, dtype, blob, label in rows:
        if row_shape != shape_key:
            continue
        xs.append(np.frombuffer(blob, dtype=np.dtype(dtype)).reshape(shape).astype(np.float32))
        ys.append(int(label))
        if limit is not None and len(xs) >= limit:
            break
    return np.stack(xs), np.asarray(ys, dtype=np.int64)


def read_labelled_samples(path: Path, *, limit: int | None = None) -> TrainingArrays:
    """The labelled samples of the store at ``path``; empty arrays when there is no store."""
    if not Path(path).is_file():
        return _empty()
    db = sqlite3.connect(str(path), timeout=30.0)
    try:
        rows = db.execute(LABELLED_SAMPLES_QUERY).fetchall()
    finally:
        db.close()
    return labelled_arrays(rows, limit=limit)
