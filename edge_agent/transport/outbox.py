"""The on-disk outbox: every report is stored before it is sent and removed only on PUBACK.

SQLite in WAL mode (one file, crash-safe, no server). Reports made while the broker is
unreachable, or not yet acknowledged when the process dies, are sent after reconnection.
A report may therefore arrive twice; receivers deduplicate by the ids messages carry.
Retained status messages are coalesced: only the newest per topic waits in the outbox.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_agent.errors import TransportError

__all__ = ["Outbox", "OutboxEntry", "Pending"]

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    qos INTEGER NOT NULL,
    retain INTEGER NOT NULL
)
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool


@dataclass(frozen=True)
class Pending:
    """A publish to store: topic, payload, QoS, retain."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


class Outbox:
    """Thread-safe FIFO of pending publishes, bounded by ``max_entries`` (oldest dropped)."""

    def __init__(self, path: Path, *, max_entries: int = 100_000, durable: bool = True) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise TransportError(f"cannot open outbox {path}: {exc}") from exc

    def put(self, topic: str, payload: bytes, *, qos: int = 1, retain: bool = False) -> int:
        """Store one publish; a retained one replaces older pending ones on the same topic."""
        return self.put_many([Pending(topic, payload, qos, retain)])

    def put_many(self, items: Sequence[Pending]) -> int:
        """Store several publishes in order in one transaction (one disk sync for all: a
        reporter's batch must not cost the worker one sync per message); the last id."""
        if not items:
            return 0
        last = 0
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                for item in items:
                    if item.retain:
                        self._db.execute(
                            "DELETE FROM outbox WHERE topic = ? AND retain = 1", (item.topic,)
                        )
                    cur = self._db.execute(
                        "INSERT INTO outbox (topic, payload, qos, retain) VALUES (?, ?, ?, ?)",
                        (item.topic, item.payload, item.qos, int(item.retain)),
                    )
                    last = int(cur.lastrowid or 0)
                self._drop_excess()
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise TransportError(f"outbox write failed: {exc}") from exc
        return last

    def _drop_excess(self) -> None:
        count = self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
        if count > self.max_entries:
            excess = count - self.max_entries
            self._db.execute(
                "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox ORDER BY id LIMIT ?)",
                (excess,),
            )
            log.warning("outbox full: dropped %d oldest reports", excess)

    def after(self, last_id: int, limit: int) -> list[OutboxEntry]:
        """Pending entries with ``id > last_id`` in order."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
                (last_id, limit),
            ).fetchall()
        return [OutboxEntry(r[0], r[1], bytes(r[2]), r[3], bool(r[4])) for r in rows]

    def remove(self, ids: list[int]) -> None:
        if not ids:
            return
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                self._db.executemany("DELETE FROM outbox WHERE id = ?", [(i,) for i in ids])
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                self._rollback()
                raise TransportError(f"outbox delete failed: {exc}") from exc

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")
