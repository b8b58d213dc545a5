"""Small versions of the fleet scenarios, end to end: real agents (threads, a shard process
and SIGKILLed agent processes), the real hub (registry, ingest, rollout engine, publisher)
and a private Mosquitto. Each run asserts its own invariants; the tests also check that the
faults really hit the transfers and that the outputs were written.

The full-size runs (hundreds of agents) are marked slow.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import pytest

from simulations.fleet import FleetResult, load_scenario, run_scenario

pytestmark = pytest.mark.integration

SCENARIOS = Path(__file__).parents[2] / "simulations" / "fleet" / "scenarios"


def _explain(result: FleetResult) -> str:
    return "\n".join(
        f"[{'ok' if i.ok else 'FAIL'}] {i.name}: {i.detail}" for i in result.invariants
    )


def test_staged_rollout_survives_flaky_links_kills_and_a_broker_restart(tmp_path: Path) -> None:
    base = load_scenario(SCENARIOS / "rollout_faults.toml")
    scenario = dataclasses.replace(
        base.scaled(20),
        subprocess_agents=1,
        agents_per_process=12,  # the other 8 agents run in a shard process
        bundle=dataclasses.replace(base.bundle, padding_kb=128),
        timeout_s=150.0,
        faults=dataclasses.replace(base.faults, kill_in_process=2, kill_subprocess=1),
        drift=dataclasses.replace(base.drift, interval_s=0.5),
        training=dataclasses.replace(base.training, enabled=False),  # the canary test trains
    )
    result = run_scenario(scenario, tmp_path / "out")
    assert result.ok, _explain(result)
    s = result.summary
    assert s["agents"]["total"] == 21 and s["agents"]["shards"] == [8]
    # the faults hit transfers in progress, and the fleet recovered from each of them
    kills = s["faults"]["in_process_kills"]
    assert len(kills) == 2 and all(k["phase"] == "downloading" for k in kills)
    assert s["faults"]["process_sigkills"] == 1
    assert len(s["faults"]["broker_restarts"]) == 1
    assert s["faults"]["link_cuts"] > 0
    by_name = {(r["device_class"], r["version"]): r for r in s["rollouts"]}
    for cls in base.device_classes:
        assert by_name[(cls, 2)]["state"] == "done"
    bad = by_name[("rpi4", 3)]
    assert bad["state"] == "rolled_back" and bad["stages"][0]["state"] == "failed"
    assert s["bytes"]["fanout_bytes"] > 0 and s["reports"]["missing"] == 0
    # results on disk
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["ok"] is True
    with open(tmp_path / "out" / "devices.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 21 and all(r["smoke_ok"] == "True" for r in rows)
    assert {r["link"] for r in rows} == {"direct", "flaky", "process"}
    assert (tmp_path / "out" / "fleet.png").stat().st_size > 10_000
    assert (tmp_path / "out" / "timeline.csv").read_text().count("\n") > 5


def test_bad_model_halts_at_canary_while_another_class_finishes(tmp_path: Path) -> None:
    base = load_scenario(SCENARIOS / "canary_halt.toml")
    scenario = dataclasses.replace(
        base.scaled(12),
        timeout_s=90.0,
        training=dataclasses.replace(base.training, clients=4, rounds=2),
    )
    result = run_scenario(scenario, tmp_path / "out")
    assert result.ok, _explain(result)
    rollouts = {(r["device_class"], r["version"]): r for r in result.summary["rollouts"]}
    bad = rollouts[("x86-cpu", 3)]
    assert bad["state"] == "rolled_back"
    assert [st["state"] for st in bad["stages"]] == ["failed", "pending"]
    assert bad["devices_that_received_it"] == bad["stages"][0]["devices"] == 3
    assert rollouts[("rpi4", 2)]["state"] == "done"
    # the good version is the federated model trained (SecAgg+) alongside v1's provisioning
    training = result.summary["training"]
    assert training["version"] == 2 and training["clients"] == 4 and training["secagg"]
    assert training["accuracy"] > 0.8, training


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("name", ["rollout_faults", "canary_halt"])
def test_full_size_scenario(name: str, tmp_path: Path) -> None:
    result = run_scenario(load_scenario(SCENARIOS / f"{name}.toml"), tmp_path / "out")
    assert result.ok, _explain(result)
