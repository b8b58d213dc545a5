"""Fleet-simulation scenarios: one frozen, validated dataclass per concern, read from TOML.

Example (``simulations/fleet/scenarios/rollout_faults.toml``)::

    [scenario]
    name = "rollout-faults"
    agents = 200                      # in-process EdgeAgents (threads)
    subprocess_agents = 3             # plus real agent processes (SIGKILLed mid-install)
    device_classes = { x86-cpu = 0.5, rpi4 = 0.3, jetson-orin = 0.2 }
    sites = ["site-a", "site-b", "site-c"]
    seed = 7
    timeout_s = 600

    [bundle]
    padding_kb = 256                  # extra payload so transfers take many chunks
    chunk_kb = 16

    [faults]
    flaky_fraction = 0.2              # agents behind a link that drops and delays
    flaky_mean_up_s = 4.0            # mean connection lifetime before the link drops it
    link_delay_ms = 20
    kill_in_process = 6               # agents stopped abruptly mid-transfer, then restarted
    kill_subprocess = 2               # agent processes SIGKILLed mid-transfer, then restarted
    broker_restart_at = 0.3           # restart Mosquitto once this share runs the new version
    broker_persistence = true         # sessions survive the restart (see FaultSettings)

    [drift]
    site = "site-c"
    shift = 2.0

    [[rollouts]]                      # after v1 is provisioned everywhere
    version = 2
    healthy = true
    faults = true                     # the [faults] happen during this rollout
    expect = "done"

    [[rollouts]]
    version = 3
    classes = ["rpi4"]
    healthy = false                   # the model fails the device health check
    expect = "rolled_back"

Bad values raise :class:`ScenarioError` naming the field.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from shared.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

__all__ = [
    "BundleSettings",
    "DriftSettings",
    "FaultSettings",
    "FleetScenario",
    "RolloutPlanSpec",
    "ScenarioError",
    "TrainingSettings",
    "load_scenario",
    "parse_scenario",
]

MAX_AGENTS = 2000
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_EXPECT = ("done", "rolled_back")


class ScenarioError(ConfigError):
    """A fleet scenario file is missing, malformed or out of range."""


def _need(ok: bool, message: str) -> None:
    if not ok:
        raise ScenarioError(message)


def _number(value: Any, name: str, lo: float, hi: float) -> None:
    _need(
        not isinstance(value, bool)
        and isinstance(value, int | float)
        and math.isfinite(value)
        and lo <= value <= hi,
        f"{name} must be a number in [{lo}, {hi}] (got {value!r})",
    )


@dataclass(frozen=True)
class BundleSettings:
    """What the simulated bundles carry. ``padding_kb`` adds an opaque artifact so a transfer
    spans many chunks (the sensor model itself is a few KiB)."""

    model: str = "sensor-mlp"
    padding_kb: int = 128
    chunk_kb: int = 16

    def __post_init__(self) -> None:
        _need(self.model == "sensor-mlp", "bundle.model: only 'sensor-mlp' is simulated")
        _number(self.padding_kb, "bundle.padding_kb", 0, 64 * 1024)
        _number(self.chunk_kb, "bundle.chunk_kb", 1, 1024)


@dataclass(frozen=True)
class FaultSettings:
    """Faults injected during the rollout marked ``faults = true``."""

    flaky_fraction: float = 0.0
    flaky_mean_up_s: float = 4.0
    link_delay_ms: float = 0.0
    kill_in_process: int = 0
    kill_subprocess: int = 0
    kill_at_chunk: int = 2
    restart_after_kill_s: float = 1.0
    broker_restart_at: float | None = None
    broker_down_s: float = 1.0
    # Mosquitto keeps sessions across the restart. Off, the hub's ingest loses whatever
    # devices publish between their reconnect and its resubscription (the broker has acked it)
    broker_persistence: bool = True

    def __post_init__(self) -> None:
        _number(self.flaky_fraction, "faults.flaky_fraction", 0.0, 1.0)
        _number(self.flaky_mean_up_s, "faults.flaky_mean_up_s", 0.2, 3600.0)
        _number(self.link_delay_ms, "faults.link_delay_ms", 0.0, 5000.0)
        _number(self.kill_in_process, "faults.kill_in_process", 0, MAX_AGENTS)
        _number(self.kill_subprocess, "faults.kill_subprocess", 0, 100)
        _number(self.kill_at_chunk, "faults.kill_at_chunk", 1, 100_000)
        _number(self.restart_after_kill_s, "faults.restart_after_kill_s", 0.0, 60.0)
        _number(self.broker_down_s, "faults.broker_down_s", 0.0, 60.0)
        if self.broker_restart_at is not None:
            _number(self.broker_restart_at, "faults.broker_restart_at", 0.0, 1.0)


@dataclass(frozen=True)
class DriftSettings:
    """Agents of ``site`` see inputs shifted by ``shift`` standard deviations."""

    site: str | None = None
    shift: float = 2.0
    window: int = 100
    batch: int = 25
    interval_s: float = 0.5

    def __post_init__(self) -> None:
        _number(self.shift, "drift.shift", 0.0, 100.0)
        _number(self.window, "drift.window", 50, 100_000)
        _number(self.batch, "drift.batch", 1, 10_000)
        _number(self.interval_s, "drift.interval_s", 0.05, 60.0)


@dataclass(frozen=True)
class TrainingSettings:
    """The training plane: a federated run (SecAgg+) over ``clients`` devices outside the
    drifting site, alongside v1's provisioning; its model ships as the first healthy
    rollout's version."""

    enabled: bool = False
    clients: int = 8
    rounds: int = 3
    samples: int = 300
    secagg: bool = True

    def __post_init__(self) -> None:
        _number(self.clients, "training.clients", 2, 100)
        _number(self.rounds, "training.rounds", 1, 100)
        _number(self.samples, "training.samples", 20, 100_000)


@dataclass(frozen=True)
class RolloutPlanSpec:
    """One staged rollout of a new version to ``classes`` (empty: every class)."""

    version: int
    healthy: bool = True
    classes: tuple[str, ...] = ()
    stages: tuple[Mapping[str, Any], ...] = (
        {"count": 1},
        {"percent": 10.0},
        {"percent": 50.0},
        {"percent": 100.0},
    )
    faults: bool = False
    expect: str = "done"
    gate_window_s: float = 1.0

    def __post_init__(self) -> None:
        _need(
            isinstance(self.version, int) and 2 <= self.version <= 10_000,
            "rollouts.version must be an integer >= 2 (v1 is provisioned first)",
        )
        _need(self.expect in _EXPECT, f"rollouts.expect must be one of {_EXPECT}")
        _need(1 <= len(self.stages) <= 20, "rollouts.stages: 1..20 stages")
        for s in self.stages:
            _need(isinstance(s, Mapping), "rollouts.stages: each stage is a table")
        _number(self.gate_window_s, "rollouts.gate_window_s", 0.0, 3600.0)


@dataclass(frozen=True)
class FleetScenario:
    name: str
    agents: int = 20
    subprocess_agents: int = 0
    device_classes: Mapping[str, float] = field(default_factory=lambda: {"x86-cpu": 1.0})
    sites: tuple[str, ...] = ("site-a",)
    seed: int = 0
    timeout_s: float = 300.0
    telemetry_interval_s: float = 2.0
    state_on_tmpfs: bool = True
    agents_per_process: int = 100  # threads per process; more go to shard processes
    bundle: BundleSettings = field(default_factory=BundleSettings)
    faults: FaultSettings = field(default_factory=FaultSettings)
    drift: DriftSettings = field(default_factory=DriftSettings)
    training: TrainingSettings = field(default_factory=TrainingSettings)
    rollouts: tuple[RolloutPlanSpec, ...] = ()

    def __post_init__(self) -> None:
        _need(bool(_NAME_RE.fullmatch(self.name)), f"scenario.name {self.name!r} is not a name")
        _number(self.agents, "scenario.agents", 1, MAX_AGENTS)
        _number(self.subprocess_agents, "scenario.subprocess_agents", 0, 100)
        # paho's select() cannot watch descriptors >= 1024: ~150 agents per process at most
        _number(self.agents_per_process, "scenario.agents_per_process", 1, 120)
        _need(bool(self.device_classes), "scenario.device_classes must not be empty")
        for cls, weight in self.device_classes.items():
            _need(bool(_NAME_RE.fullmatch(cls)), f"device class {cls!r} is not a name")
            _number(weight, f"device_classes.{cls}", 0.0, 1e6)
        _need(sum(self.device_classes.values()) > 0, "device class weights sum to 0")
        _need(bool(self.sites), "scenario.sites must not be empty")
        for site in self.sites:
            _need(bool(_NAME_RE.fullmatch(site)), f"site {site!r} is not a name")
        _number(self.timeout_s, "scenario.timeout_s", 5.0, 24 * 3600.0)
        _number(self.telemetry_interval_s, "scenario.telemetry_interval_s", 1.0, 3600.0)
        if self.drift.site is not None:
            _need(self.drift.site in self.sites, f"drift.site {self.drift.site!r} is not a site")
        _need(
            self.faults.kill_in_process <= self.agents,
            "faults.kill_in_process exceeds the number of agents",
        )
        _need(
            self.faults.kill_subprocess <= self.subprocess_agents,
            "faults.kill_subprocess exceeds scenario.subprocess_agents",
        )
        versions = [r.version for r in self.rollouts]
        _need(versions == sorted(set(versions)), "rollout versions must increase")
        for r in self.rollouts:
            unknown = set(r.classes) - set(self.device_classes)
            _need(not unknown, f"rollout v{r.version} names unknown classes {sorted(unknown)}")
        _need(sum(r.faults for r in self.rollouts) <= 1, "at most one rollout has faults = true")
        if self.training.enabled:
            _need(
                any(r.healthy for r in self.rollouts),
                "training needs a healthy rollout to ship its model",
            )

    @property
    def total_agents(self) -> int:
        return self.agents + self.subprocess_agents

    def scaled(self, agents: int) -> FleetScenario:
        """The same scenario with ``agents`` in-process agents (kills capped to fit)."""
        return replace(
            self,
            agents=agents,
            faults=replace(self.faults, kill_in_process=min(self.faults.kill_in_process, agents)),
        )


def _table(raw: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = raw.get(key, {})
    _need(isinstance(value, dict), f"[{key}] must be a table")
    return dict(value)


def _build(cls: type, table: Mapping[str, Any], where: str) -> Any:
    known = {f.name for f in fields(cls)}
    unknown = set(table) - known
    _need(not unknown, f"[{where}] unknown keys: {sorted(unknown)}")
    try:
        return cls(**table)
    except TypeError as exc:
        raise ScenarioError(f"[{where}]: {exc}") from exc


def parse_scenario(raw: Mapping[str, Any]) -> FleetScenario:
    """Validate a parsed TOML document."""
    unknown = set(raw) - {"scenario", "bundle", "faults", "drift", "training", "rollouts"}
    _need(not unknown, f"unknown tables: {sorted(unknown)}")
    top = _table(raw, "scenario")
    _need("name" in top, "[scenario] needs a name")
    if "sites" in top:
        _need(isinstance(top["sites"], list), "scenario.sites must be a list")
        top["sites"] = tuple(top["sites"])
    if "device_classes" in top:
        _need(isinstance(top["device_classes"], dict), "scenario.device_classes is a table")
    rollouts_raw = raw.get("rollouts", [])
    _need(isinstance(rollouts_raw, list), "[[rollouts]] must be an array of tables")
    plans = []
    for r in rollouts_raw:
        _need(isinstance(r, dict), "each [[rollouts]] entry is a table")
        r = dict(r)
        for key in ("classes", "stages"):
            if key in r:
                _need(isinstance(r[key], list), f"rollouts.{key} must be a list")
                r[key] = tuple(r[key])
        plans.append(_build(RolloutPlanSpec, r, "rollouts"))
    return _build(
        FleetScenario,
        {
            **top,
            "bundle": _build(BundleSettings, _table(raw, "bundle"), "bundle"),
            "faults": _build(FaultSettings, _table(raw, "faults"), "faults"),
            "drift": _build(DriftSettings, _table(raw, "drift"), "drift"),
            "training": _build(TrainingSettings, _table(raw, "training"), "training"),
            "rollouts": tuple(plans),
        },
        "scenario",
    )


def load_scenario(path: Path | str) -> FleetScenario:
    """Read and validate a scenario TOML file (raises :class:`ScenarioError`)."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ScenarioError(f"cannot read scenario {path}: {exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"scenario {path} is not valid TOML: {exc}") from exc
    return parse_scenario(raw)
