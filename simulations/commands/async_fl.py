"""``cloud-hub simulate-async SCENARIO``: sync vs async buffered SecAgg+ on an availability trace.

``SCENARIO`` is a TOML path or a name in ``simulations/async_fl/scenarios`` (``online30_quick``,
``online30_1000``); flags override the trace and clock. Writes ``async_fl.json`` (curves,
every buffer's lineage, the summary) and ``time_to_accuracy.png`` into ``--out`` and prints
the summary. ``cloud-hub`` finds this command through the ``cloud_hub.commands`` entry point.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from simulations.commands._scenario import SIMULATIONS_ROOT, resolve_scenario

__all__ = ["register", "run_simulate_async"]

_SCENARIOS = SIMULATIONS_ROOT / "async_fl" / "scenarios"
_TRACE_FLAGS = ("devices", "online_fraction", "mean_online_s", "speed_sigma", "seed")
_CLOCK_FLAGS = ("updates", "cohort", "buffer_size", "concurrency", "max_staleness", "work_s")


def _given(args: argparse.Namespace, names: tuple[str, ...]) -> dict[str, Any]:
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def run_simulate_async(args: argparse.Namespace) -> int:
    from simulations.async_fl.compare import compare_modes, write_outputs
    from simulations.async_fl.scenario import load_availability_scenario

    scenario = load_availability_scenario(resolve_scenario(args.scenario, _SCENARIOS))
    scenario = scenario.with_changes(_given(args, _TRACE_FLAGS), _given(args, _CLOCK_FLAGS))
    target = args.target if args.target is not None else scenario.target_accuracy
    out = args.out or Path("results") / f"async-fl-{time.strftime('%Y%m%d-%H%M%S')}"
    print(
        f"{scenario.trace.devices} devices online {scenario.trace.online_fraction:.0%}; "
        f"sync cohort {scenario.clock.cohort}, async buffers of {scenario.clock.buffer_size}",
        file=sys.stderr,
    )
    comparison = compare_modes(scenario.trace, scenario.clock, target_accuracy=target)
    for path in write_outputs(comparison, out):
        print(f"wrote {path}", file=sys.stderr)
    print(json.dumps(comparison.summary(), indent=1))
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "simulate-async",
        help="sync vs async buffered SecAgg+ on a virtual-clock availability trace",
    )
    parser.add_argument("scenario", help="scenario TOML, or a name such as online30_quick")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--devices", type=int, default=None)
    parser.add_argument("--online-fraction", type=float, default=None)
    parser.add_argument("--mean-online-s", type=float, default=None, help="mean session length")
    parser.add_argument("--speed-sigma", type=float, default=None, help="compute speed spread")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--updates", type=int, default=None, help="folded updates per mode")
    parser.add_argument("--cohort", type=int, default=None, help="sync devices per round")
    parser.add_argument("--buffer-size", type=int, default=None, help="async K")
    parser.add_argument("--concurrency", type=int, default=None, help="async devices training")
    parser.add_argument("--max-staleness", type=int, default=None)
    parser.add_argument("--work-s", type=float, default=None, help="training time at speed 1")
    parser.add_argument("--target", type=float, default=None, help="target accuracy")
    parser.set_defaults(func=run_simulate_async)
