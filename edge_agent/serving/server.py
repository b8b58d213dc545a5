"""The model server: holds the active model, answers predictions, hot-swaps new versions.

Hot swap is read-copy-update: a request takes a reference to the active model (and bumps its
in-flight count) under a short lock, runs without any lock, then releases it. ``swap`` just
replaces the reference; the old model is closed by whichever side sees it retired with no
request left in flight. No request is dropped or blocked by a swap.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import AgentConfigError, InferenceInputError, RuntimeBackendError
from edge_agent.runtime.base import RuntimeReport
from edge_agent.runtime.selection import LoadedModel
from edge_agent.serving.observers import PredictionBatch, PredictionObservers
from edge_agent.serving.validation import (
    InputSpec,
    parse_binary_inputs,
    parse_request_inputs,
    validate_batch,
)

__all__ = ["ModelServer", "Prediction", "PredictionResult", "ServerStats", "ServingConfig"]


@dataclass(frozen=True)
class ServingConfig:
    """Request limits and output interpretation."""

    max_batch: int = 64
    outputs: str = "logits"  # "logits" (softmax applied) | "probabilities"
    latency_window: int = 2048  # recent requests the p50/p95 are computed over

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch <= 65_536:
            raise AgentConfigError("max_batch must be in [1, 65536]")
        if self.outputs not in ("logits", "probabilities"):
            raise AgentConfigError("outputs must be 'logits' or 'probabilities'")
        if not 16 <= self.latency_window <= 1_000_000:
            raise AgentConfigError("latency_window must be in [16, 1e6]")


@dataclass(frozen=True)
class Prediction:
    id: str
    label: int
    confidence: float
    scores: tuple[float, ...]


@dataclass(frozen=True)
class PredictionResult:
    model_version: int
    predictions: tuple[Prediction, ...]
    latency_ms: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_version": self.model_version,
            "latency_ms": self.latency_ms,
            "predictions": [
                {"id": p.id, "label": p.label, "confidence": p.confidence, "scores": list(p.scores)}
                for p in self.predictions
            ],
        }


@dataclass(frozen=True)
class ServerStats:
    """Counters for telemetry; latencies over the last ``latency_window`` requests."""

    model_version: int | None
    inference_count: int  # samples answered
    request_count: int
    error_count: int  # backend failures
    input_error_count: int  # rejected requests
    p50_ms: float | None
    p95_ms: float | None
    swaps: int


class _Active:
    """One loaded model and the requests currently using it."""

    __slots__ = ("in_flight", "loaded", "retired", "spec")

    def __init__(self, loaded: LoadedModel, spec: InputSpec) -> None:
        self.loaded = loaded
        self.spec = spec
        self.in_flight = 0
        self.retired = False


def _softmax(logits: NDArray[np.float32]) -> NDArray[np.float32]:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return np.asarray(e / e.sum(axis=1, keepdims=True), dtype=np.float32)


class ModelServer:
    """Thread-safe prediction service over the active model."""

    def __init__(
        self,
        config: ServingConfig | None = None,
        *,
        observers: PredictionObservers | None = None,
    ) -> None:
        self.config = config or ServingConfig()
        self.observers = observers
        self._lock = threading.Lock()
        self._active: _Active | None = None
        self._latencies = np.zeros(self.config.latency_window, dtype=np.float64)
        self._lat_n = 0
        self._counts = {"samples": 0, "requests": 0, "errors": 0, "input_errors": 0, "swaps": 0}

    # -- model lifecycle ---------------------------------------------------------------------
    def swap(self, loaded: LoadedModel) -> None:
        """Make ``loaded`` the active model; the previous one closes once it is idle."""
        b = loaded.backend
        spec = InputSpec(
            shape=tuple(b.input_shape), dtype=b.input_dtype, max_batch=self.config.max_batch
        )
        new = _Active(loaded, spec)
        with self._lock:
            old, self._active = self._active, new
            self._counts["swaps"] += 1
            close_now = old is not None and old.in_flight == 0
            if old is not None:
                old.retired = True
        if close_now and old is not None:
            old.loaded.backend.close()

    @property
    def report(self) -> RuntimeReport | None:
        active = self._active
        return None if active is None else active.loaded.report

    @property
    def input_spec(self) -> InputSpec | None:
        active = self._active
        return None if active is None else active.spec

    def close(self) -> None:
        """Retire the active model (closed once idle)."""
        with self._lock:
            old, self._active = self._active, None
            close_now = old is not None and old.in_flight == 0
            if old is not None:
                old.retired = True
        if close_now and old is not None:
            old.loaded.backend.close()

    # -- requests ----------------------------------------------------------------------------
    def _acquire(self) -> _Active:
        with self._lock:
            active = self._active
            if active is None:
                raise RuntimeBackendError("no model is loaded")
            active.in_flight += 1
            return active

    def _release(self, active: _Active) -> None:
        with self._lock:
            active.in_flight -= 1
            close_now = active.retired and active.in_flight == 0
        if close_now:
            active.loaded.backend.close()

    def predict(self, x: Any) -> PredictionResult:
        """Validate and infer a batch (or one sample); raises ``InferenceInputError``."""
        active = self._acquire()
        try:
            try:
                batch = validate_batch(x, active.spec)
            except InferenceInputError:
                self._count("input_errors")
                raise
            return self._infer(active, batch)
        finally:
            self._release(active)

    def predict_request(self, body: dict[str, Any]) -> PredictionResult:
        """Decode a JSON request body (see ``parse_request_inputs``) and infer it."""
        active = self._acquire()
        try:
            try:
                batch = parse_request_inputs(body, active.spec)
            except InferenceInputError:
                self._count("input_errors")
                raise
            return self._infer(active, batch)
        finally:
            self._release(active)

    def predict_binary(
        self, raw: bytes, shape_header: str | None, dtype_header: str | None
    ) -> PredictionResult:
        """Infer a raw little-endian tensor body (see ``parse_binary_inputs``)."""
        active = self._acquire()
        try:
            try:
                batch = parse_binary_inputs(raw, shape_header, dtype_header, active.spec)
            except InferenceInputError:
                self._count("input_errors")
                raise
            return self._infer(active, batch)
        finally:
            self._release(active)

    def _infer(self, active: _Active, batch: NDArray[Any]) -> PredictionResult:
        started = time.perf_counter()
        try:
            out = active.loaded.backend.run(batch)
        except Exception as exc:  # a native runtime error: counted, reported, not fatal
            self._count("errors")
            raise RuntimeBackendError(f"inference failed: {exc}") from exc
        probs = out if self.config.outputs == "probabilities" else _softmax(out)
        labels = probs.argmax(axis=1)
        conf = probs[np.arange(probs.shape[0]), labels]
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        ids = tuple(uuid.uuid4().hex for _ in range(batch.shape[0]))
        version = active.loaded.report.model_version
        with self._lock:
            self._latencies[self._lat_n % self._latencies.size] = elapsed_ms
            self._lat_n += 1
            self._counts["samples"] += batch.shape[0]
            self._counts["requests"] += 1
        if self.observers is not None:
            self.observers.submit(PredictionBatch(ids, batch, labels, conf, version, time.time()))
        preds = tuple(
            Prediction(pid, int(labels[i]), float(conf[i]), tuple(float(v) for v in probs[i]))
            for i, pid in enumerate(ids)
        )
        return PredictionResult(model_version=version, predictions=preds, latency_ms=elapsed_ms)

    def _count(self, key: str) -> None:
        with self._lock:
            self._counts[key] += 1

    def stats(self) -> ServerStats:
        with self._lock:
            n = min(self._lat_n, self._latencies.size)
            window = self._latencies[:n].copy()
            counts = dict(self._counts)
            active = self._active
        p50 = p95 = None
        if n:
            p50, p95 = (float(v) for v in np.percentile(window, [50, 95]))
        return ServerStats(
            model_version=None if active is None else active.loaded.report.model_version,
            inference_count=counts["samples"],
            request_count=counts["requests"],
            error_count=counts["errors"],
            input_error_count=counts["input_errors"],
            p50_ms=p50,
            p95_ms=p95,
            swaps=counts["swaps"],
        )
