"""The agent's telemetry reports its labelled samples (the hub's training eligibility)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge_agent.samples import SampleStoreConfig
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
from shared.messages import TelemetryMetric


def test_telemetry_counts_labelled_samples_only(tmp_path: Path) -> None:
    config = InferenceStackConfig(api=None, samples=SampleStoreConfig(path=tmp_path / "samples.db"))
    stack = InferenceStack(config)
    try:
        assert stack.store is not None
        for i in range(5):
            stack.store.add(f"s{i}", np.zeros(4, np.float32), model_version=1)
        for i in range(3):
            assert stack.store.set_label(f"s{i}", 1)
        message = stack.telemetry().to_message(device_id="d1", seq=1)
        assert message.metrics[TelemetryMetric.LABELLED_SAMPLES] == 3.0
    finally:
        stack.stop()
    without = InferenceStack(InferenceStackConfig(api=None))
    try:
        assert TelemetryMetric.LABELLED_SAMPLES not in without.telemetry().metrics
    finally:
        without.stop()
