"""The virtual-clock availability simulation: traces, and sync vs async on one trace."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.async_fl.clock import ClockConfig
from simulations.async_fl.compare import compare_modes, write_outputs
from simulations.async_fl.trace import AvailabilityTrace, TraceSpec


def test_trace_matches_its_online_fraction_and_answers_consistently() -> None:
    trace = AvailabilityTrace(TraceSpec(devices=300, online_fraction=0.3, seed=4))
    assert trace.measured_online_fraction() == pytest.approx(0.3, abs=0.03)
    for device in range(20):
        t = 5_000.0
        start = trace.next_online(device, t)
        assert start >= t and trace.online(device, start)
        if trace.online(device, t):
            assert start == t
        assert not trace.online_through(device, t, t + trace.spec.horizon_s)


@pytest.mark.parametrize("bad", [{"devices": 0}, {"online_fraction": 0.0}, {"mean_online_s": 0}])
def test_bad_trace_specs_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        TraceSpec(**bad)  # type: ignore[arg-type]


def test_async_reaches_the_target_sooner_on_a_30_percent_trace(tmp_path: Path) -> None:
    trace = TraceSpec(devices=30, online_fraction=0.3, seed=1)
    clock = ClockConfig(updates=36, cohort=6, buffer_size=6, concurrency=18)
    comparison = compare_modes(trace, clock, target_accuracy=0.9)
    summary = comparison.summary()
    assert summary["buffers"] == summary["buffers_secure"] >= 5
    assert summary["async_time_to_target_s"] is not None
    assert summary["sync_time_to_target_s"] is not None
    assert summary["async_speedup"] > 1.5
    assert abs(summary["sync_final_accuracy"] - summary["async_final_accuracy"]) <= 0.05
    # every async buffer's lineage names its devices, their base versions and staleness
    folded = [f for r in comparison.asynchronous.records for f in r.to_dict()["folded"]]
    assert folded and all(0 <= f["staleness"] <= clock.max_staleness for f in folded)
    report, plot = write_outputs(comparison, tmp_path)
    assert json.loads(report.read_text())["summary"] == summary
    assert plot.read_bytes().startswith(b"\x89PNG")
