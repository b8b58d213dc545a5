"""Sync vs async on the same trace and data: run both, report time to accuracy, plot it.

:func:`compare_modes` is what ``cloud-hub simulate --availability`` and
``benchmarks/async_fl.py`` call. :func:`write_outputs` writes ``async_fl.json`` (both
curves, every buffer's lineage, the summary) and ``time_to_accuracy.png``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from simulations.async_fl.clock import ClockConfig, ModeResult, run_async, run_sync
from simulations.async_fl.fleet import FleetData, open_fleet
from simulations.async_fl.trace import AvailabilityTrace, TraceSpec

__all__ = ["Comparison", "compare_modes", "write_outputs"]


@dataclass(frozen=True)
class Comparison:
    """Both modes' results on one trace, and the accuracy target they are timed to."""

    trace: TraceSpec
    measured_online_fraction: float
    target_accuracy: float
    sync: ModeResult
    asynchronous: ModeResult

    def summary(self) -> dict[str, Any]:
        sync_t = self.sync.time_to(self.target_accuracy)
        async_t = self.asynchronous.time_to(self.target_accuracy)
        return {
            "devices": self.trace.devices,
            "online_fraction": round(self.measured_online_fraction, 4),
            "target_accuracy": self.target_accuracy,
            "sync_time_to_target_s": sync_t,
            "async_time_to_target_s": async_t,
            "async_speedup": (
                round(sync_t / async_t, 3) if sync_t is not None and async_t else None
            ),
            "sync_final_accuracy": round(self.sync.final_accuracy, 4),
            "async_final_accuracy": round(self.asynchronous.final_accuracy, 4),
            "sync_rounds": self.sync.buffers,
            "sync_failed_rounds": self.sync.failed,
            "buffers": self.asynchronous.buffers,
            "buffers_secure": self.asynchronous.buffers_secure,
            "async_failed_buffers": self.asynchronous.failed,
        }


def compare_modes(
    trace: TraceSpec,
    clock: ClockConfig,
    data: FleetData | None = None,
    *,
    target_accuracy: float = 0.95,
) -> Comparison:
    """Run sync then async over fresh fleets built from the same data and trace."""
    logging.getLogger("flwr").setLevel(logging.WARNING)
    data = data or FleetData()
    availability = AvailabilityTrace(trace)
    with open_fleet(trace.devices, data) as fleet:
        sync = run_sync(fleet, availability, clock)
    with open_fleet(trace.devices, data) as fleet:
        asynchronous = run_async(fleet, availability, clock)
    return Comparison(
        trace, availability.measured_online_fraction(), target_accuracy, sync, asynchronous
    )


def write_outputs(comparison: Comparison, out_dir: Path) -> list[Path]:
    """``async_fl.json`` and ``time_to_accuracy.png`` in ``out_dir``; returns their paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    report = out_dir / "async_fl.json"
    body = {
        "summary": comparison.summary(),
        "sync": comparison.sync.to_dict(),
        "async": comparison.asynchronous.to_dict(),
    }
    report.write_text(json.dumps(body, indent=1) + "\n")
    fig, ax = plt.subplots(figsize=(7, 4))
    for result, label in (
        (comparison.sync, "sync SecAgg+ FedAvg"),
        (comparison.asynchronous, "async buffered SecAgg+"),
    ):
        hours = [t / 3_600 for t, _ in result.curve]
        ax.step(hours, [acc for _, acc in result.curve], where="post", label=label)
    ax.axhline(comparison.target_accuracy, color="grey", linestyle=":", label="target")
    ax.set_xlabel("virtual time (h)")
    ax.set_ylabel("validation accuracy")
    ax.set_title(
        f"{comparison.trace.devices} devices, online {comparison.measured_online_fraction:.0%}"
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    plot = out_dir / "time_to_accuracy.png"
    fig.savefig(plot, dpi=100)
    plt.close(fig)
    return [report, plot]
