"""``cloud-hub fleet-sim SCENARIO [--out DIR] [--agents N]``: run a fleet simulation.

Hundreds of real edge agents (threads, plus a few processes) against an in-process hub and a
private Mosquitto, with flaky links, kills mid-install, a broker restart, a bad model stopped
at the canary and drift in one site (see ``simulations/fleet/``). Writes ``results.json``,
``devices.csv``, ``timeline.csv`` and ``fleet.png`` into the output folder, prints the
invariants, and exits 0 only if every one holds.

``SCENARIO`` is a TOML path or the name of a file in ``simulations/fleet/scenarios`` (shipped
with the package). The simulation drives both the hub and the agents, which never import each
other; ``cloud-hub`` finds this command through the ``cloud_hub.commands`` entry point.
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubConfigError
from simulations.commands._scenario import SIMULATIONS_ROOT, resolve_scenario

__all__ = ["register", "run_fleet_sim"]

_SCENARIOS = SIMULATIONS_ROOT / "fleet" / "scenarios"


def run_fleet_sim(args: argparse.Namespace) -> int:
    from simulations import fleet  # the simulation pulls in the hub and agents: only when run

    try:
        scenario = fleet.load_scenario(resolve_scenario(args.scenario, _SCENARIOS))
    except fleet.ScenarioError as exc:
        raise HubConfigError(str(exc)) from exc
    if args.agents is not None:
        scenario = scenario.scaled(args.agents)
    if args.processes is not None:
        scenario = dataclasses.replace(
            scenario,
            subprocess_agents=args.processes,
            faults=dataclasses.replace(
                scenario.faults,
                kill_subprocess=min(scenario.faults.kill_subprocess, args.processes),
            ),
        )
    out = args.out or Path("results") / f"{scenario.name}-{time.strftime('%Y%m%d-%H%M%S')}"
    print(
        f"fleet-sim {scenario.name}: {scenario.agents} agents in-process + "
        f"{scenario.subprocess_agents} processes, {len(scenario.rollouts)} rollouts -> {out}",
        flush=True,
    )
    result = fleet.run_scenario(scenario, out)
    s = result.summary
    print(f"\nwall {s['wall_s']} s; phases {s['phases_s']}")
    for r in s["rollouts"]:
        print(
            f"  rollout {r['device_class']:>12} v{r['version']}: {r['state']:<12} "
            f"{r['duration_s']} s  {r['reason'][:70]}"
        )
    print(f"  bytes {s['bytes']}")
    for inv in result.invariants:
        print(f"  [{'ok' if inv.ok else 'FAIL'}] {inv.name}: {inv.detail}")
    print(f"results in {out}")
    return 0 if result.ok else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "fleet-sim", help="run a fleet simulation scenario (simulations/fleet/scenarios)"
    )
    parser.add_argument("scenario", help="scenario TOML, or a name such as rollout_faults")
    parser.add_argument("--out", type=Path, default=None, help="results folder")
    parser.add_argument("--agents", type=int, default=None, help="override in-process agents")
    parser.add_argument("--processes", type=int, default=None, help="override agent processes")
    parser.set_defaults(func=run_fleet_sim)
