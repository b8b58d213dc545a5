"""What happens to a prediction after it is answered: drift, sample store, audit log.

The request path only appends a ``PredictionBatch`` to a bounded buffer (never blocks;
overflow is counted and reported) and remembers recent inputs in memory so that
``POST /feedback`` can attach a label to any recent prediction. A worker thread wakes every
``flush_interval_s`` (or when the buffer is half full), feeds the drift detector, stores a
sampled fraction of inputs, and appends a sampled audit log (with model version).

Why not wake the worker per request: waking a thread hands it the GIL, and on a busy device
the request thread then waits for it - measured at several ms per request on 2 loaded cores.
One wake-up per interval costs the same work without the per-request hand-off.
"""

from __future__ import annotations

import json
import logging
import random
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.drift.detector import DriftDetector, DriftWindowReport
from edge_agent.errors import AgentConfigError, AgentError
from edge_agent.samples.store import SampleStore

__all__ = ["ObserverConfig", "ObserverStats", "PredictionBatch", "PredictionObservers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictionBatch:
    """One answered request."""

    ids: tuple[str, ...]
    inputs: NDArray[Any]
    labels: NDArray[np.int64]
    confidences: NDArray[np.float32]
    model_version: int
    ts: float


@dataclass(frozen=True)
class ObserverConfig:
    """Rates and bounds of the post-prediction work."""

    queue_size: int = 256  # answered batches buffered between worker runs
    flush_interval_s: float = 0.1
    sample_rate: float = 0.05  # fraction of predictions stored (unlabelled) for retraining
    audit_sample_rate: float = 0.01
    audit_path: Path | None = None
    audit_max_bytes: int = 8 * 1024 * 1024  # then rotated to <path>.1
    recent_bytes: int = 4 * 1024 * 1024  # recent inputs kept in memory for feedback
    max_predictions_remembered: int = 100_000  # predicted labels kept for feedback accuracy
    max_drift_reports: int = 1000  # undrained reports beyond this are dropped (oldest first)
    seed: int | None = None

    def __post_init__(self) -> None:
        if not 2 <= self.queue_size <= 100_000:
            raise AgentConfigError("observer queue_size must be in [2, 1e5]")
        if not 0.001 <= self.flush_interval_s <= 60.0:
            raise AgentConfigError("observer flush_interval_s must be in [1 ms, 60 s]")
        if not (0.0 <= self.sample_rate <= 1.0 and 0.0 <= self.audit_sample_rate <= 1.0):
            raise AgentConfigError("sample rates must be in [0, 1]")
        if not 4096 <= self.audit_max_bytes <= 1 << 34:
            raise AgentConfigError("audit_max_bytes must be in [4 KiB, 16 GiB]")
        if not 0 <= self.recent_bytes <= 1 << 32 or not 1 <= self.max_drift_reports <= 1 << 20:
            raise AgentConfigError("recent_bytes / max_drift_reports out of range")


@dataclass(frozen=True)
class ObserverStats:
    processed: int
    dropped: int
    failures: int
    drift_windows: int
    drift_alarms: int
    audited: int
    stored: int
    # Labelled feedback on the current model version: what the accuracy gate reads.
    feedback_count: int = 0
    feedback_correct: int = 0


_STOP = object()


class PredictionObservers:
    """Background processing of answered predictions."""

    def __init__(
        self,
        config: ObserverConfig | None = None,
        *,
        drift: DriftDetector | None = None,
        store: SampleStore | None = None,
    ) -> None:
        self.config = config or ObserverConfig()
        self._drift = drift
        self._store = store
        self._pending: deque[Any] = deque()  # append/popleft are atomic: no lock needed
        self._wake = threading.Event()
        self._rng = random.Random(self.config.seed)
        self._lock = threading.Lock()
        self._recent: OrderedDict[str, tuple[NDArray[Any], int]] = OrderedDict()
        self._recent_bytes = 0
        # prediction id -> (predicted label, model version), for feedback accuracy
        self._predicted: OrderedDict[str, tuple[int, int]] = OrderedDict()
        self._feedback: dict[int, list[int]] = {}  # model version -> [count, correct]
        self._reports: deque[DriftWindowReport] = deque(maxlen=self.config.max_drift_reports)
        self._counts = dict.fromkeys(
            (
                "processed",
                "dropped",
                "failures",
                "drift_windows",
                "drift_alarms",
                "audited",
                "stored",
            ),
            0,
        )
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._work, name="prediction-observers", daemon=True
            )
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Process what is pending, then end the worker."""
        if self._thread is not None:
            self._pending.append(_STOP)
            self._wake.set()
            self._thread.join(timeout)
            self._thread = None

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything submitted so far has been processed."""
        if self._thread is None:
            return False
        done = threading.Event()
        self._pending.append(("flush", done))
        self._wake.set()
        return done.wait(timeout)

    # -- request path ------------------------------------------------------------------------
    def submit(self, batch: PredictionBatch) -> None:
        """Hand an answered batch over (never blocks the request)."""
        self._remember(batch)
        pending = len(self._pending)
        if pending >= self.config.queue_size:
            with self._lock:
                self._counts["dropped"] += 1
            return
        self._pending.append(batch)
        if pending + 1 == self.config.queue_size // 2:
            self._wake.set()  # busy: do not wait for the interval

    def set_drift_detector(self, detector: DriftDetector | None) -> None:
        """Switch reference (after a model swap), in order with the submitted batches."""
        self._pending.append(("drift", detector))

    def _remember(self, batch: PredictionBatch) -> None:
        with self._lock:
            for i, pid in enumerate(batch.ids):
                self._predicted[pid] = (int(batch.labels[i]), batch.model_version)
            while len(self._predicted) > self.config.max_predictions_remembered:
                self._predicted.popitem(last=False)
        if self.config.recent_bytes == 0:
            return
        row_bytes = batch.inputs[0].nbytes if len(batch.ids) else 0
        with self._lock:
            for i, pid in enumerate(batch.ids):
                self._recent[pid] = (batch.inputs[i], batch.model_version)
                self._recent_bytes += row_bytes
            while self._recent and self._recent_bytes > self.config.recent_bytes:
                _, (row, _v) = self._recent.popitem(last=False)
                self._recent_bytes -= row.nbytes

    def feedback(self, prediction_id: str, label: int) -> bool:
        """Label an earlier prediction; False if it is neither stored nor recent.

        Whether the prediction was right is counted per model version (the rollout gate's
        accuracy-on-feedback metric), also when no sample store is configured."""
        with self._lock:
            known = self._predicted.pop(prediction_id, None)
            if known is not None:
                counts = self._feedback.setdefault(known[1], [0, 0])
                counts[0] += 1
                counts[1] += int(known[0] == label)
        if self._store is None:
            return False
        if self._store.set_label(prediction_id, label):
            return True
        with self._lock:
            recent = self._recent.get(prediction_id)
        if recent is None:
            return False
        row, version = recent
        self._store.add(prediction_id, row, model_version=version, label=label)
        with self._lock:
            self._counts["stored"] += 1
        return True

    # -- results -----------------------------------------------------------------------------
    def drain_drift_reports(self) -> list[DriftWindowReport]:
        """Reports completed since the last call (the agent publishes them)."""
        with self._lock:
            out = list(self._reports)
            self._reports.clear()
        return out

    def stats(self, model_version: int | None = None) -> ObserverStats:
        """Counters; feedback counts are those of ``model_version`` (0 when ``None``)."""
        with self._lock:
            count, correct = (
                self._feedback.get(model_version, (0, 0)) if model_version is not None else (0, 0)
            )
            return ObserverStats(**self._counts, feedback_count=count, feedback_correct=correct)

    # -- worker ------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            self._wake.wait(self.config.flush_interval_s)
            self._wake.clear()
            while self._pending:
                item = self._pending.popleft()
                if item is _STOP:
                    return
                try:
                    if isinstance(item, tuple) and item[0] == "flush":
                        item[1].set()
                    elif isinstance(item, tuple):
                        self._drift = item[1]
                    else:
                        self._process(item)
                except Exception:  # one bad batch must not stop drift/audit for the rest
                    log.exception("prediction observer failed")
                    with self._lock:
                        self._counts["failures"] += 1

    def _process(self, batch: PredictionBatch) -> None:
        reports: list[DriftWindowReport] = []
        drift = self._drift
        current = drift is not None and drift.model_version in (None, batch.model_version)
        if current and drift is not None:
            if drift.reference.input_shape != tuple(batch.inputs.shape[1:]):
                # a bundle whose reference does not fit its model: say so once, not per batch
                log.warning(
                    "drift detection off: reference shape %s, model input %s",
                    drift.reference.input_shape,
                    tuple(batch.inputs.shape[1:]),
                )
                self._drift = None
                with self._lock:
                    self._counts["failures"] += 1
            else:
                reports = drift.observe(batch.inputs, batch.confidences)
        stored = 0
        if self._store is not None and self.config.sample_rate > 0:
            for i, pid in enumerate(batch.ids):
                if self._rng.random() < self.config.sample_rate:
                    try:
                        self._store.add(pid, batch.inputs[i], model_version=batch.model_version)
                        stored += 1
                    except AgentError as exc:
                        log.warning("sample not stored: %s", exc)
        audited = self._audit(batch) if self.config.audit_path is not None else 0
        with self._lock:
            self._reports.extend(reports)
            self._counts["processed"] += 1
            self._counts["drift_windows"] += len(reports)
            self._counts["drift_alarms"] += sum(r.drifted for r in reports)
            self._counts["stored"] += stored
            self._counts["audited"] += audited

    def _audit(self, batch: PredictionBatch) -> int:
        path = self.config.audit_path
        assert path is not None
        lines = [
            json.dumps(
                {
                    "ts": batch.ts,
                    "id": pid,
                    "model_version": batch.model_version,
                    "label": int(batch.labels[i]),
                    "confidence": round(float(batch.confidences[i]), 6),
                },
                separators=(",", ":"),
            )
            for i, pid in enumerate(batch.ids)
            if self._rng.random() < self.config.audit_sample_rate
        ]
        if not lines:
            return 0
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and path.stat().st_size > self.config.audit_max_bytes:
            path.replace(path.with_name(path.name + ".1"))
        with path.open("a", encoding="utf-8") as fh:
            fh.write("\n".join(lines) + "\n")
        return len(lines)
