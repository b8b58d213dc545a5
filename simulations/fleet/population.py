"""The simulated population: who is which device class, site and link, who gets killed, and
the agent configuration each one runs with (pure, seeded)."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import AgentConfig, AgentLimits, MqttSettings, OtaTimeouts
from simulations.fleet.scenario import FleetScenario

__all__ = ["Member", "agent_config", "agent_tables", "plan_population"]


@dataclass(frozen=True)
class Member:
    device_id: str
    device_class: str
    site: str
    link: str  # "direct" | "flaky" | "process"
    kill: bool  # killed mid-transfer during the faulty rollout
    drift_shift: float


def _classes(scenario: FleetScenario, n: int) -> list[str]:
    """Largest-remainder apportionment of ``n`` devices over the class weights."""
    names = sorted(scenario.device_classes)
    total = sum(scenario.device_classes.values())
    quotas = [n * scenario.device_classes[c] / total for c in names]
    counts = [math.floor(q) for q in quotas]
    order = sorted(range(len(names)), key=lambda i: quotas[i] - counts[i], reverse=True)
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    return [c for c, k in zip(names, counts, strict=True) for _ in range(k)]


def plan_population(scenario: FleetScenario) -> list[Member]:
    """In-process agents ``sim-NNNN`` first, then agent processes ``proc-NN``."""
    rng = random.Random(scenario.seed)
    faulty = next((r for r in scenario.rollouts if r.faults), None)
    fault_classes = set(faulty.classes or scenario.device_classes) if faulty else set()
    n, p = scenario.agents, scenario.subprocess_agents
    classes = _classes(scenario, n + p)
    rng.shuffle(classes)
    sites = [scenario.sites[i % len(scenario.sites)] for i in range(n + p)]
    rng.shuffle(sites)
    in_proc = list(range(n))
    rng.shuffle(in_proc)
    flaky = set(in_proc[: round(scenario.faults.flaky_fraction * n)])
    killable = [i for i in in_proc if classes[i] in fault_classes]
    kills = set(killable[: scenario.faults.kill_in_process])
    proc_killable = [n + j for j in range(p) if classes[n + j] in fault_classes]
    kills |= set(proc_killable[: scenario.faults.kill_subprocess])
    members = []
    for i in range(n + p):
        process = i >= n
        members.append(
            Member(
                device_id=f"proc-{i - n:02d}" if process else f"sim-{i:04d}",
                device_class=classes[i],
                site=sites[i],
                link="process" if process else ("flaky" if i in flaky else "direct"),
                kill=i in kills,
                drift_shift=scenario.drift.shift if sites[i] == scenario.drift.site else 0.0,
            )
        )
    return members


def agent_tables(member: Member) -> dict[str, dict[str, Any]]:
    """[timeouts]/[limits]/[labels]/[mqtt] of a simulated agent (TOML tables)."""
    return {
        "timeouts": {"chunk_retry_s": 0.5, "health_s": 30.0, "download_s": 300.0},
        "limits": {"fsync_chunks": False},
        "labels": {"site": member.site, "link": member.link},
        "mqtt": {"keepalive_s": 10, "reconnect_min_s": 0.2, "reconnect_max_s": 2.0},
    }


def agent_config(
    member: Member, *, state_dir: Path, trust_root: Path, port: int, prefix: str
) -> AgentConfig:
    """The in-process agent's configuration (same values as :func:`agent_tables`)."""
    tables = agent_tables(member)
    return AgentConfig(
        device_id=member.device_id,
        device_class=member.device_class,
        state_dir=state_dir,
        trust_root=trust_root,
        mqtt=MqttSettings(
            port=port,
            topic_prefix=prefix,
            client_id=f"{member.device_id}@{prefix}",
            **tables["mqtt"],
        ),
        labels=dict(tables["labels"]),
        timeouts=OtaTimeouts(**tables["timeouts"]),
        limits=AgentLimits(**tables["limits"]),
        status_interval_s=30.0,
    )


def ids_by(members: Sequence[Member], **match: str) -> list[str]:
    return [m.device_id for m in members if all(getattr(m, k) == v for k, v in match.items())]
