"""Asynchronous buffered SecAgg+ against synchronous SecAgg+ FedAvg on one availability trace.

    .venv/bin/python benchmarks/async_fl.py            # 1,000 devices (minutes)
    .venv/bin/python benchmarks/async_fl.py --quick    # 100 devices, < 60 s

Devices are online 30 % of the time (sessions of 30 min on average), compute speeds vary
log-normally; both modes fold the same number of updates over the same data, through the
same ClientApp and SecAgg+ exchange, on a virtual clock (simulations/async_fl). Times are
virtual seconds to the target validation accuracy. The last line printed is one JSON
object: devices, online_fraction, sync_time_to_target_s, async_time_to_target_s,
async_speedup, sync_final_accuracy, async_final_accuracy, buffers, buffers_secure (and a
few more: rounds, failures, wall time). ``--out DIR`` also writes the curves and the plot.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simulations.async_fl.clock import ClockConfig  # noqa: E402
from simulations.async_fl.compare import compare_modes, write_outputs  # noqa: E402
from simulations.async_fl.trace import TraceSpec  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 devices, < 60 s")
    parser.add_argument("--out", type=Path, default=None, help="write curves and the plot here")
    args = parser.parse_args()
    devices, updates = (100, 200) if args.quick else (1_000, 1_000)
    trace = TraceSpec(devices=devices, online_fraction=0.3, mean_online_s=1_800.0, seed=1)
    clock = ClockConfig(updates=updates, cohort=10, buffer_size=10, concurrency=30)
    started = time.perf_counter()
    comparison = compare_modes(trace, clock, target_accuracy=0.95)
    summary = comparison.summary()
    summary["wall_s"] = round(time.perf_counter() - started, 1)
    if args.out is not None:
        for path in write_outputs(comparison, args.out):
            print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
