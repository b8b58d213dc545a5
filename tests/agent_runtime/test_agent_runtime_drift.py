"""Drift statistics: shift flagged within one window, <= 1% false alarms over >= 500 windows."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.drift import (
    DriftConfig,
    DriftDetector,
    PageHinkley,
    PageHinkleyConfig,
    ks_statistic,
    psi,
)
from edge_agent.errors import AgentConfigError, InferenceInputError
from edge_agent.runtime import RuntimeProfile, select_backend
from shared.data import SensorDriftSpec, generate_sensor_data
from shared.drift_reference import ReferenceStats, feature_matrix, feature_names
from shared.errors import MalformedMessageError, UnsupportedVersionError

WINDOW = 500


def _confidences(backend, x: np.ndarray) -> np.ndarray:
    logits = backend.run(x)
    z = np.exp(logits - logits.max(1, keepdims=True))
    return (z / z.sum(1, keepdims=True)).max(1)


@pytest.fixture(scope="module")
def sensor_setup(sensor_model):
    backend = select_backend(
        sensor_model.artifacts(), RuntimeProfile(preferred=("onnxruntime:cpu",))
    ).backend
    x_ref, _ = generate_sensor_data(5000, seed=0, sample_seed=1)
    ref = ReferenceStats.from_samples(x_ref, confidences=_confidences(backend, x_ref))
    return backend, ref


def test_stationary_stream_false_alarm_rate_at_most_one_percent(sensor_setup) -> None:
    backend, ref = sensor_setup
    detector = DriftDetector(ref, DriftConfig(window_size=WINDOW))
    n_windows = 600
    x, _ = generate_sensor_data(n_windows * WINDOW, seed=0, sample_seed=2)
    conf = _confidences(backend, x)
    reports = []
    for start in range(0, x.shape[0], 1000):  # the way requests arrive: many small batches
        reports += detector.observe(x[start : start + 1000], conf[start : start + 1000])
    assert len(reports) == n_windows
    alarms = sum(r.drifted for r in reports)
    assert alarms / n_windows <= 0.01, [r.drifted_features for r in reports if r.drifted]
    assert max(r.max_psi for r in reports) < DriftConfig().psi_threshold


def test_injected_shift_is_flagged_within_one_window(sensor_setup) -> None:
    backend, ref = sensor_setup
    detector = DriftDetector(ref, DriftConfig(window_size=WINDOW), model_version=4)
    clean, _ = generate_sensor_data(3 * WINDOW + 137, seed=0, sample_seed=3)  # not aligned
    shifted, _ = generate_sensor_data(
        2 * WINDOW, seed=0, sample_seed=4, drift=SensorDriftSpec(shift=0.5, features=(0, 1, 2, 3))
    )
    reports = detector.observe(clean, _confidences(backend, clean))
    assert len(reports) == 3 and not any(r.drifted for r in reports)
    after = detector.observe(shifted, _confidences(backend, shifted))
    # the window that straddles the change may or may not fire; the first whole one must
    assert after[1].drifted
    flagged = set(after[0].drifted_features) | set(after[1].drifted_features)
    assert flagged and flagged <= {"f0", "f1", "f2", "f3"}
    msg = after[1].to_message(device_id="dev-1", model_name="sensor-mlp")
    assert msg.drifted and msg.model_version == 4 and msg.window_size == WINDOW
    assert set(msg.features) == set(ref.names)


def test_confidence_drop_alarms_page_hinkley_but_stationary_does_not() -> None:
    rng = np.random.default_rng(0)
    ph = PageHinkley(PageHinkleyConfig())
    stationary = rng.beta(8, 2, size=300_000)
    alarms = sum(ph.update(stationary[i : i + 500]) for i in range(0, stationary.size, 500))
    assert alarms <= 6  # <= 1% of 600 windows
    dropped = rng.beta(5, 3, size=WINDOW)  # mean 0.8 -> 0.625
    assert ph.update(dropped)


def test_image_inputs_use_per_channel_summary_features(digits_model) -> None:
    x = digits_model.batch(400, seed=1)
    ref = ReferenceStats.from_samples(x)
    assert ref.names == feature_names((1, 8, 8)) == ("c0_mean", "c0_std")
    assert feature_matrix(x).shape == (400, 2)
    detector = DriftDetector(ref, DriftConfig(window_size=100))
    assert not any(r.drifted for r in detector.observe(digits_model.batch(200, seed=2)))
    brighter = detector.observe(digits_model.batch(100, seed=3) + 0.5)
    assert brighter[0].drifted and "c0_mean" in brighter[0].drifted_features
    with pytest.raises(InferenceInputError):
        detector.observe(np.zeros((3, 12), np.float32))


def test_psi_and_ks_are_zero_like_for_same_distribution_and_large_for_shift() -> None:
    rng = np.random.default_rng(5)
    ref = ReferenceStats.from_samples(rng.normal(size=(20_000, 1))).features[0]
    same = rng.normal(size=5000)
    moved = rng.normal(loc=1.0, size=5000)
    assert psi(ref, same) < 0.01 and ks_statistic(ref, same) < 0.03
    assert psi(ref, moved) > 0.5 and ks_statistic(ref, moved) > 0.3


def test_reference_stats_json_round_trip_and_refusals() -> None:
    x, _ = generate_sensor_data(300, seed=0)
    ref = ReferenceStats.from_samples(x, confidences=np.full(300, 0.9))
    assert ReferenceStats.from_json(ref.to_json()) == ref
    doc = ref.to_dict()
    with pytest.raises(UnsupportedVersionError):
        ReferenceStats.from_dict({**doc, "schema_version": 99})
    with pytest.raises(MalformedMessageError):
        ReferenceStats.from_dict({**doc, "features": doc["features"][:-1]})
    with pytest.raises(MalformedMessageError):
        ReferenceStats.from_json(b"{not json")
    bad_feature = {**doc["features"][0], "quantiles": [3.0, 1.0]}
    with pytest.raises(MalformedMessageError):
        ReferenceStats.from_dict({**doc, "features": [bad_feature, *doc["features"][1:]]})


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(min_value=20, max_value=300),
    d=st.integers(min_value=1, max_value=6),
    scale=st.floats(min_value=1e-3, max_value=1e3),
    discrete=st.booleans(),
)
def test_reference_stats_from_any_data_round_trip(
    n: int, d: int, scale: float, discrete: bool
) -> None:
    x = np.random.default_rng(n * d).normal(scale=scale, size=(n, d))
    if discrete:
        x = np.round(x / scale)  # ties in the quantiles must not break the bins
    ref = ReferenceStats.from_samples(x)
    assert ReferenceStats.from_json(ref.to_json()) == ref
    rows = x[:50]
    reports = DriftDetector(ref, DriftConfig(window_size=50)).observe(rows)
    assert len(reports) == (1 if rows.shape[0] == 50 else 0)
    assert all(np.isfinite([f.psi for f in r.features]).all() for r in reports)


def test_config_limits() -> None:
    with pytest.raises(AgentConfigError):
        DriftConfig(window_size=10)
    with pytest.raises(AgentConfigError):
        DriftConfig(ks_alpha=0.0)


def test_small_windows_raise_the_psi_threshold_to_stay_under_one_percent() -> None:
    x_ref, _ = generate_sensor_data(5000, seed=0, sample_seed=1)
    detector = DriftDetector(ReferenceStats.from_samples(x_ref), DriftConfig(window_size=100))
    x, _ = generate_sensor_data(500 * 100, seed=0, sample_seed=7)
    reports = detector.observe(x)
    assert len(reports) == 500
    assert sum(r.drifted for r in reports) <= 5
    assert reports[0].features[0].psi_critical > DriftConfig().psi_threshold
    shifted, _ = generate_sensor_data(100, seed=0, sample_seed=8, drift=SensorDriftSpec(shift=1.0))
    assert detector.observe(shifted)[0].drifted
