"""A bounded, crash-safe on-disk buffer of recent inputs and their feedback labels.

SQLite in WAL mode: a crash or power loss leaves the last committed state, never a torn
file. Bounded by total bytes, sample count and age — the oldest samples go first. The Flower
ClientApp reads ``load_training_arrays()`` to fine-tune on the labelled part.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import AgentConfigError, InferenceInputError
from shared.fl.sample_db import LABELLED_SAMPLES_QUERY, labelled_arrays

__all__ = ["SampleStore", "SampleStoreConfig", "SampleStoreStats"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS samples (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    model_version INTEGER NOT NULL,
    shape TEXT NOT NULL,
    dtype TEXT NOT NULL,
    x BLOB NOT NULL,
    nbytes INTEGER NOT NULL,
    label INTEGER
);
CREATE INDEX IF NOT EXISTS samples_created ON samples (created);
"""
_DTYPES = frozenset({"float32", "float16", "float64", "uint8", "int8", "int32", "int64"})


@dataclass(frozen=True)
class SampleStoreConfig:
    """Where the buffer lives and how large and old it may grow."""

    path: Path
    max_bytes: int = 256 * 1024 * 1024
    max_samples: int = 100_000
    max_age_s: float = 7 * 24 * 3600.0
    max_sample_bytes: int = 8 * 1024 * 1024

    def __post_init__(self) -> None:
        if not 1024 <= self.max_bytes <= 1 << 40:
            raise AgentConfigError("sample store max_bytes must be in [1 KiB, 1 TiB]")
        if not 1 <= self.max_samples <= 100_000_000:
            raise AgentConfigError("sample store max_samples must be in [1, 1e8]")
        if not 1.0 <= self.max_age_s <= 10 * 365 * 86400.0:
            raise AgentConfigError("sample store max_age_s must be in [1 s, 10 years]")
        if not 1 <= self.max_sample_bytes <= 1 << 32:
            raise AgentConfigError("sample store max_sample_bytes must be in [1, 4 GiB]")

    @property
    def sample_limit(self) -> int:
        """The largest storable sample (never more than the whole store)."""
        return min(self.max_sample_bytes, self.max_bytes)


@dataclass(frozen=True)
class SampleStoreStats:
    count: int
    labelled: int
    total_bytes: int


class SampleStore:
    """Thread-safe (one connection behind a lock; calls are short)."""

    def __init__(self, config: SampleStoreConfig) -> None:
        self.config = config
        config.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(config.path), check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM samples").fetchone()
        self._count, self._bytes = int(row[0]), int(row[1])

    def add(
        self,
        sample_id: str,
        x: NDArray[Any],
        *,
        model_version: int,
        label: int | None = None,
        now: float | None = None,
    ) -> None:
        """Store one sample (no batch dimension); evicts the oldest beyond the bounds."""
        arr = np.ascontiguousarray(x)
        if arr.dtype.name not in _DTYPES:
            raise InferenceInputError(f"cannot store samples of dtype {arr.dtype}")
        if arr.nbytes > self.config.sample_limit:
            raise InferenceInputError(f"sample of {arr.nbytes} bytes exceeds the store limit")
        ts = time.time() if now is None else now
        shape = ",".join(str(d) for d in arr.shape)
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            cur = self._db.execute(
                "INSERT OR IGNORE INTO samples VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    sample_id,
                    ts,
                    model_version,
                    shape,
                    arr.dtype.name,
                    arr.tobytes(),
                    arr.nbytes,
                    label,
                ),
            )
            if cur.rowcount:
                self._count += 1
                self._bytes += arr.nbytes
            self._evict(ts)

    def set_label(self, sample_id: str, label: int) -> bool:
        """Attach a feedback label; False if the sample is unknown (or evicted)."""
        with self._lock, self._db:
            cur = self._db.execute("UPDATE samples SET label = ? WHERE id = ?", (label, sample_id))
            return cur.rowcount > 0

    def contains(self, sample_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT 1 FROM samples WHERE id = ?", (sample_id,)).fetchone()
            return row is not None

    def prune(self, now: float | None = None) -> None:
        """Apply the age bound now (``add`` does it too)."""
        with self._lock, self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._evict(time.time() if now is None else now)

    def _evict(self, now: float) -> None:
        cur = self._db.execute(
            "DELETE FROM samples WHERE created < ? RETURNING nbytes", (now - self.config.max_age_s,)
        )
        self._forget(cur.fetchall())
        while self._count > self.config.max_samples or self._bytes > self.config.max_bytes:
            excess = max(self._count - self.config.max_samples, 1)
            cur = self._db.execute(
                "DELETE FROM samples WHERE id IN "
                "(SELECT id FROM samples ORDER BY created, rowid LIMIT ?) RETURNING nbytes",
                (excess,),
            )
            rows = cur.fetchall()
            if not rows:
                break
            self._forget(rows)

    def _forget(self, rows: list[tuple[int]]) -> None:
        self._count -= len(rows)
        self._bytes -= sum(int(r[0]) for r in rows)

    def stats(self) -> SampleStoreStats:
        with self._lock:
            labelled = self._db.execute(
                "SELECT COUNT(*) FROM samples WHERE label IS NOT NULL"
            ).fetchone()[0]
            return SampleStoreStats(self._count, int(labelled), self._bytes)

    def load_training_arrays(
        self, *, limit: int | None = None
    ) -> tuple[NDArray[np.float32], NDArray[np.int64]]:
        """Labelled samples, newest first, as ``(x, y)`` (see :func:`labelled_arrays`)."""
        with self._lock:
            rows = self._db.execute(LABELLED_SAMPLES_QUERY).fetchall()
        return labelled_arrays(rows, limit=limit)

    def close(self) -> None:
        with self._lock:
            self._db.close()
