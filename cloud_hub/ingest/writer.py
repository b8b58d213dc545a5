"""The ingest's writer thread: drain the fair queue into a batch and commit it.

A batch starts ``flush_interval_s`` after the previous batch started or after the queue
stopped being empty, whichever is later (at once when ``batch_max`` are queued): under load
the writer goes from one commit straight to the next and what arrived meanwhile is the next
batch; a quiet fleet gathers what arrives within an interval and costs at most one
transaction per interval. A batch whose commit fails is kept and
written again (every write is idempotent), so a database hiccup loses nothing the queue
accepted; a must-keep message's acknowledgement is released only after its batch commits.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from cloud_hub.ingest.batch import BatchCounts, IngestBatch, write_batch
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.intake import Inbound
from cloud_hub.ingest.state import Ack, IngestState, worth_logging
from cloud_hub.registry import Registry
from cloud_hub.registry.errors import TRANSIENT_DATABASE_ERRORS, DatabaseError

__all__ = ["BatchWriter", "Listener"]

log = logging.getLogger(__name__)

Listener = Callable[[BatchCounts], None]
SLOW_COMMIT_S = 1.0  # a batch slower than this is logged


class BatchWriter:
    """Commits what :mod:`.admission` queued, one transaction per batch."""

    def __init__(
        self,
        registry: Registry,
        state: IngestState,
        config: IngestConfig,
        *,
        clock: Callable[[], float],
        listeners: list[Listener],
    ) -> None:
        self.registry = registry
        self.state = state
        self.config = config
        self._clock = clock
        self._listeners = listeners
        self._pending = self._new_batch()
        self._pending_acks: list[Ack] = []
        self._last_start = float("-inf")  # monotonic start of the previous batch

    def run(self, stop: threading.Event) -> None:
        """Write batches until ``stop`` is set (the writer thread's body)."""
        while not stop.is_set():
            self._fold(self._take(stop))
            if not len(self._pending):
                continue
            self._last_start = time.monotonic()
            if not self._commit_pending():
                stop.wait(self.config.retry_backoff_s)

    def flush(self) -> None:
        """Write the held batch and everything still queued (after the thread stopped)."""
        while True:
            if len(self._pending) and not self._commit_pending():
                return  # the database is down: the broker redelivers what was not acked
            with self.state.lock:
                items = self._drain_locked(self.config.batch_max)
            if not items:
                return
            self._fold(items)

    # -- taking and folding ------------------------------------------------------------------
    def _take(self, stop: threading.Event) -> list[tuple[str, Inbound]]:
        room = self.config.batch_max - len(self._pending)  # bounded even while the DB is down
        with self.state.lock:
            self._wait_until_due(stop)
            return self._drain_locked(room) if room > 0 else []

    def _wait_until_due(self, stop: threading.Event) -> None:
        """Sleep (lock held, released while waiting) until the next batch is due (see the
        module docstring). :func:`.admission.admit` wakes it at the first message and at a
        full batch."""
        state, interval = self.state, self.config.flush_interval_s
        while not stop.is_set() and len(state.queue) < self.config.batch_max:
            if not len(state.queue) and not len(self._pending):
                state.lock.wait(interval)
                continue
            since = max(self._last_start, state.queued_since)
            left = since + interval - time.monotonic()
            if left <= 0:
                return
            state.lock.wait(left)

    def _drain_locked(self, room: int) -> list[tuple[str, Inbound]]:
        items = self.state.queue.drain(room)
        held = self.state.held_acks
        self._pending_acks.extend(ack for _, m in items if (ack := held.pop(id(m), None)))
        return items

    def _fold(self, items: list[tuple[str, Inbound]]) -> None:
        for _, inbound in items:
            self._pending.apply(inbound)

    def _new_batch(self) -> IngestBatch:
        return IngestBatch(max_metrics=self.config.max_metrics)

    # -- committing --------------------------------------------------------------------------
    def _commit_pending(self) -> bool:
        """Commit the pending batch; on success start a new one and release its acks."""
        if not self._write(self._pending):
            return False
        self._pending = self._new_batch()
        acks, self._pending_acks = self._pending_acks, []
        for ack in acks:
            try:
                ack()
            except Exception:  # disconnected meanwhile: the broker will redeliver (idempotent)
                log.debug("ack after commit failed", exc_info=True)
        return True

    def _write(self, batch: IngestBatch) -> bool:
        """Commit ``batch``; ``False`` (keep it, retry later) when the database is away.

        A batch the database refuses for its content (a value intake did not foresee) is
        written message by message instead, so only the offending message is dropped."""
        started = time.monotonic()
        try:
            with self.registry.session() as session:
                counts = write_batch(session, batch, now=self._clock())
                written = time.monotonic()
        except TRANSIENT_DATABASE_ERRORS as exc:
            with self.state.lock:
                self.state.counts["write_errors"] += 1
            log.warning("ingest batch of %d not written (will retry): %s", len(batch), exc)
            return False
        except DatabaseError as exc:
            log.warning("ingest batch of %d refused (%s); writing one by one", len(batch), exc)
            return self._write_singly(batch)
        done = time.monotonic()
        if done - started > SLOW_COMMIT_S:  # the queue, and every held ack, waited this long
            log.warning(
                "ingest batch of %d (%d devices) took %.1f s: %.1f s writing, %.1f s committing",
                len(batch),
                len(batch.last_seen),
                done - started,
                written - started,
                done - written,
            )
        return self._account(batch, counts)

    def _write_singly(self, batch: IngestBatch) -> bool:
        total = Counter[str]()
        removed: set[str] = set()
        for item in batch.items:
            single = self._new_batch()
            single.apply(item)
            try:
                with self.registry.session() as session:
                    counts = write_batch(session, single, now=self._clock())
                total.update(dataclasses.asdict(counts) | {"removed_devices": 0})
                removed.update(counts.removed_devices)
            except TRANSIENT_DATABASE_ERRORS:
                return False  # the database went away meanwhile: retry the whole batch
            except DatabaseError as exc:
                with self.state.lock:
                    self.state.rejected["unstorable"] += 1
                log.warning(
                    "dropped an unstorable %s from %s: %s", item.channel, item.device_id, exc
                )
        sums = {f.name: total[f.name] for f in dataclasses.fields(BatchCounts)}
        del sums["removed_devices"]
        merged = BatchCounts(**sums, removed_devices=tuple(sorted(removed)))
        return self._account(batch, merged)

    def _account(self, batch: IngestBatch, counts: BatchCounts) -> bool:
        done = self._clock()
        seen = 0
        state = self.state
        with state.lock:
            state.counts["written"] += batch.messages - counts.removed_refused
            state.counts["batches"] += 1
            state.counts["events_new"] += counts.events_new
            state.counts["drift_new"] += counts.drift_new
            state.lags.extend(done - r for r in batch.received_at)
            if counts.removed_refused:
                state.rejected["removed_device"] += counts.removed_refused
                seen = state.rejected["removed_device"]
        if counts.removed_refused and worth_logging(seen):
            log.warning(
                "refused %d message(s) of removed device(s) %s (%d so far): re-enroll an id "
                "(`cloud-hub enroll-token --device-id ID`) to readmit it",
                counts.removed_refused,
                ", ".join(counts.removed_devices[:5]),
                seen,
            )
        for listener in self._listeners:
            try:
                listener(counts)
            except Exception:
                log.exception("ingest listener failed")
        return True
