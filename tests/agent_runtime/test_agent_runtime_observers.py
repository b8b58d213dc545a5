"""Post-prediction observers: bounded buffer, audit log rotation, feedback window."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil
import pytest

from edge_agent.errors import AgentConfigError
from edge_agent.samples import SampleStore, SampleStoreConfig
from edge_agent.serving import ObserverConfig, PredictionBatch, PredictionObservers


def _batch(i: int, n: int = 4) -> PredictionBatch:
    return PredictionBatch(
        ids=tuple(f"p{i}-{k}" for k in range(n)),
        inputs=np.full((n, 256), i, np.float32),  # 1 KiB per sample
        labels=np.zeros(n, np.int64),
        confidences=np.full(n, 0.9, np.float32),
        model_version=1,
        ts=time.time(),
    )


def test_buffer_is_bounded_and_overflow_is_counted_not_blocking() -> None:
    obs = PredictionObservers(ObserverConfig(queue_size=8))  # worker not started
    started = time.perf_counter()
    for i in range(20):
        obs.submit(_batch(i))
    assert time.perf_counter() - started < 0.5
    assert obs.stats().dropped == 12
    obs.start()
    assert obs.flush()
    assert obs.stats().processed == 8
    obs.stop()


def test_audit_log_rotates_and_records_versions(tmp_path: Path) -> None:
    audit = tmp_path / "audit.jsonl"
    obs = PredictionObservers(
        ObserverConfig(audit_path=audit, audit_sample_rate=1.0, audit_max_bytes=4096, seed=0)
    )
    obs.start()
    for i in range(100):
        obs.submit(_batch(i))
    assert obs.flush()
    obs.stop()
    assert audit.exists() and (tmp_path / "audit.jsonl.1").exists()
    assert audit.stat().st_size < 4096 + 2048  # rotated once it passed the limit
    rows = [json.loads(line) for line in audit.read_text().splitlines()]
    assert rows and all(r["model_version"] == 1 for r in rows)
    assert obs.stats().audited == 400


def test_feedback_only_for_recent_predictions(tmp_path: Path) -> None:
    store = SampleStore(SampleStoreConfig(tmp_path / "s.db"))
    obs = PredictionObservers(ObserverConfig(recent_bytes=8 * 1024, sample_rate=0.0), store=store)
    for i in range(4):  # 16 samples of 1 KiB; the newest 8 are remembered
        obs.submit(_batch(i))
    assert obs.feedback("p3-3", 1) and obs.feedback("p2-0", 2)
    assert not obs.feedback("p0-0", 1)  # evicted from the recent window, never stored
    x, y = store.load_training_arrays()
    assert sorted(y.tolist()) == [1, 2] and x.shape == (2, 256)
    with pytest.raises(AgentConfigError):
        ObserverConfig(sample_rate=2.0)


def test_feedback_accuracy_is_counted_per_model_version() -> None:
    obs = PredictionObservers(ObserverConfig(recent_bytes=0))  # no sample store: still counted
    obs.submit(_batch(0))  # v1 predicts class 0 for p0-*
    v2 = _batch(1)
    obs.submit(PredictionBatch(v2.ids, v2.inputs, np.ones(4, np.int64), v2.confidences, 2, v2.ts))
    for k, label in enumerate([0, 0, 1, 2]):
        obs.feedback(f"p0-{k}", label)
    obs.feedback("p1-0", 1)
    obs.feedback("p1-1", 0)
    obs.feedback("p1-0", 1)  # a duplicate label for the same prediction counts once
    s1, s2 = obs.stats(1), obs.stats(2)
    assert (s1.feedback_count, s1.feedback_correct) == (4, 2)
    assert (s2.feedback_count, s2.feedback_correct) == (2, 1)
    assert obs.stats().feedback_count == 0 and obs.stats(3).feedback_count == 0


@pytest.mark.integration
def test_agent_process_idle_rss_is_small_and_torch_free(sensor_model, tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edge_agent.serving",
            "--model",
            str(sensor_model.onnx),
            "--port",
            "0",
            "--providers",
            "cpu",
            "--state-dir",
            str(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert proc.stdout is not None
        json.loads(proc.stdout.readline())
        time.sleep(0.5)
        p = psutil.Process(proc.pid)
        rss_mb = p.memory_info().rss / 2**20
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
    finally:
        proc.terminate()
        proc.wait(10)
    assert rss_mb < 150, rss_mb
    assert "libtorch" not in maps


def test_a_reference_that_does_not_fit_the_model_turns_drift_off_once(sensor_model) -> None:
    from edge_agent.drift import DriftDetector
    from shared.drift_reference import ReferenceStats

    wrong = ReferenceStats.from_samples(np.zeros((50, 3)) + np.arange(50)[:, None])
    obs = PredictionObservers(
        ObserverConfig(sample_rate=0.0),
        drift=DriftDetector(wrong, model_version=1),
    )
    obs.start()
    for i in range(5):
        obs.submit(_batch(i))
    assert obs.flush()
    stats = obs.stats()
    assert stats.failures == 1 and stats.processed == 5 and stats.drift_windows == 0
    obs.stop()
