"""What a fleet simulation must hold at its end: pure checks over what was observed.

- every device runs a working model: its active slot loads and answers a smoke inference,
  and it is the version the rollouts should have left there;
- no report lost: every event and drift report an agent put in its outbox is in the hub
  registry, and no outbox still holds anything;
- each rollout ended as expected: ``done``, or halted at the canary (canary stage failed,
  later stages never started, nobody outside the canary received the bundle);
- drift in one site shows in the registry (its windows drifted, other sites' did not);
- the faults the scenario asked for really happened (a run without them proves nothing).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DeviceOutcome",
    "FaultCounts",
    "Invariant",
    "RolloutOutcome",
    "check_drift",
    "check_faults",
    "check_models",
    "check_reports",
    "check_rollouts",
]


@dataclass(frozen=True)
class Invariant:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


@dataclass(frozen=True)
class DeviceOutcome:
    """One device after the scenario (agents stopped, state read from its directory)."""

    device_id: str
    device_class: str
    site: str
    link: str  # "direct" | "flaky" | "process"
    expected_version: int
    active_version: int | None
    smoke_ok: bool
    smoke_detail: str
    reports_emitted: int
    reports_missing: tuple[str, ...]
    outbox_left: int
    drift_windows: int
    drifted_windows: int
    bytes_received: int = 0
    kills: int = 0
    predictions: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_class": self.device_class,
            "site": self.site,
            "link": self.link,
            "expected_version": self.expected_version,
            "active_version": self.active_version,
            "smoke_ok": self.smoke_ok,
            "reports_emitted": self.reports_emitted,
            "reports_missing": len(self.reports_missing),
            "outbox_left": self.outbox_left,
            "drift_windows": self.drift_windows,
            "drifted_windows": self.drifted_windows,
            "bytes_received": self.bytes_received,
            "kills": self.kills,
            "predictions": self.predictions,
        }


@dataclass(frozen=True)
class RolloutOutcome:
    device_class: str
    version: int
    rollout_id: str
    expected: str
    state: str
    reason: str
    duration_s: float | None
    stage_states: tuple[str, ...]
    stage_devices: tuple[tuple[str, ...], ...]
    received: frozenset[str] = field(default_factory=frozenset)  # devices with its events

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_class": self.device_class,
            "version": self.version,
            "rollout_id": self.rollout_id,
            "expected": self.expected,
            "state": self.state,
            "reason": self.reason,
            "duration_s": self.duration_s,
            "stages": [
                {"state": st, "devices": len(devs)}
                for st, devs in zip(self.stage_states, self.stage_devices, strict=True)
            ],
            "devices_that_received_it": len(self.received),
        }


@dataclass(frozen=True)
class FaultCounts:
    kills_wanted: int
    kills_done: int
    broker_restarts_wanted: int
    broker_restarts_done: int
    flaky_agents: int
    link_cuts: int


def _few(items: Sequence[str], n: int = 5) -> str:
    shown = ", ".join(items[:n])
    return shown + (f" (+{len(items) - n} more)" if len(items) > n else "")


def check_models(devices: Sequence[DeviceOutcome]) -> Invariant:
    broken = [f"{d.device_id}: {d.smoke_detail}" for d in devices if not d.smoke_ok]
    wrong = [
        f"{d.device_id}: v{d.active_version} (expected v{d.expected_version})"
        for d in devices
        if d.smoke_ok and d.active_version != d.expected_version
    ]
    ok = not broken and not wrong and bool(devices)
    detail = (
        f"{len(devices)} devices serve a working model of the expected version"
        if ok
        else f"{len(broken)} without a working model [{_few(broken)}]; "
        f"{len(wrong)} on an unexpected version [{_few(wrong)}]"
    )
    return Invariant("every device has a working model", ok, detail)


def check_reports(devices: Sequence[DeviceOutcome]) -> Invariant:
    emitted = sum(d.reports_emitted for d in devices)
    missing = [f"{d.device_id}:{r}" for d in devices for r in d.reports_missing]
    left = [f"{d.device_id}={d.outbox_left}" for d in devices if d.outbox_left]
    ok = not missing and not left and emitted > 0
    detail = (
        f"{emitted} events/drift reports emitted, all in the registry; outboxes drained"
        if ok
        else f"{len(missing)} of {emitted} reports missing from the registry [{_few(missing)}]; "
        f"outboxes not drained [{_few(left)}]"
    )
    return Invariant("no report lost", ok, detail)


def _rollout_problems(r: RolloutOutcome) -> list[str]:
    name = f"{r.device_class} v{r.version}"
    if r.state != r.expected:
        return [f"{name}: {r.state} ({r.reason}), expected {r.expected}"]
    if r.expected == "done":
        bad = [s for s in r.stage_states if s != "passed"]
        return [f"{name}: done with stages {list(r.stage_states)}"] if bad else []
    problems = []
    if not r.stage_states or r.stage_states[0] != "failed":
        problems.append(f"{name}: the canary stage is {r.stage_states[:1]}, not failed")
    if any(s not in ("pending", "skipped") for s in r.stage_states[1:]):
        problems.append(f"{name}: later stages {list(r.stage_states[1:])} were started")
    canary = set(r.stage_devices[0]) if r.stage_devices else set()
    outside = sorted(r.received - canary)
    if outside:
        problems.append(f"{name}: devices outside the canary received it: {_few(outside)}")
    return problems


def check_rollouts(rollouts: Sequence[RolloutOutcome], *, planned: int | None = None) -> Invariant:
    """``planned``: how many rollouts the scenario meant to run (all must have run)."""
    problems = [p for r in rollouts for p in _rollout_problems(r)]
    if planned is not None and len(rollouts) < planned:
        problems.append(f"only {len(rollouts)} of {planned} planned rollouts ran")
    ok = not problems and bool(rollouts)
    summary = ", ".join(f"{r.device_class} v{r.version}: {r.state}" for r in rollouts)
    return Invariant("rollouts ended as expected", ok, summary if ok else "; ".join(problems))


def check_drift(
    devices: Sequence[DeviceOutcome],
    site: str | None,
    *,
    min_site_rate: float = 0.8,
    max_other_rate: float = 0.1,
) -> Invariant | None:
    """Share of drifted windows (as stored in the registry) in the drifting site vs the rest."""
    if site is None:
        return None
    inside = [d for d in devices if d.site == site]
    outside = [d for d in devices if d.site != site]

    def rate(group: Sequence[DeviceOutcome]) -> tuple[float, int]:
        n = sum(d.drift_windows for d in group)
        return (sum(d.drifted_windows for d in group) / n if n else 0.0), n

    site_rate, n_in = rate(inside)
    other_rate, n_out = rate(outside)
    silent = [d.device_id for d in inside if d.drifted_windows == 0]
    ok = n_in > 0 and site_rate >= min_site_rate and other_rate <= max_other_rate and not silent
    detail = (
        f"{site}: {site_rate:.0%} of {n_in} windows drifted ({len(inside)} devices, "
        f"{len(silent)} never reported drift); other sites: {other_rate:.1%} of {n_out}"
    )
    return Invariant(f"drift in {site} shows in the registry", ok, detail)


def check_faults(c: FaultCounts) -> Invariant:
    problems = []
    if c.kills_done < c.kills_wanted:
        problems.append(f"{c.kills_done} of {c.kills_wanted} kills happened mid-transfer")
    if c.broker_restarts_done < c.broker_restarts_wanted:
        problems.append("the broker restart did not happen")
    if c.flaky_agents and c.link_cuts == 0:
        problems.append("no flaky link was ever cut")
    detail = (
        f"kills {c.kills_done}/{c.kills_wanted}, broker restarts "
        f"{c.broker_restarts_done}/{c.broker_restarts_wanted}, {c.link_cuts} link cuts over "
        f"{c.flaky_agents} flaky agents"
    )
    return Invariant(
        "the scenario's faults happened",
        not problems,
        detail if not problems else "; ".join(problems),
    )
