"""The lab's closed loop: devices on their own hosts train where their data is.

:func:`run_retrain_scenario` builds a :class:`~simulations.lab.fleet.FleetLab` whose hub
(``cloud-hub serve``) runs its retraining controller (the ``[retraining]`` table of its
config), and runs, with the real programs in their own network namespaces:

1. enroll — every device enrolls over HTTPS with a one-time token and runs its agent; each
   device's sample store holds its own non-IID labelled history (written on the device's
   side: the data it collected);
2. first model — an operator's ``cloud-hub retrain`` on the hub host: a SuperLink there (TLS
   from the hub CA the devices pinned), signed training orders over the broker (mTLS), one
   SuperNode per device on its own sample store, SecAgg+; the candidate is compressed,
   bundled, signed and rolled out in stages (canary, waves) by the serving hub;
3. drift — the devices of one site see shifted sensors and label them (their sample stores
   gain drifted, labelled field data); the model they serve fails on it, and their drift
   detectors, fed the shifted inputs on their local ``/predict``, report drift to the hub;
4. retraining — the serving hub's controller sees the drift last and retrains on its own
   over the Deployment Engine (the drifted devices and their class peers); the new version
   ships as deltas against the one the devices run, in stages, while one device's link is
   cut for ``cut_s`` seconds in the middle of the rollout; another device's link is capped
   at ``cap_kbit`` kbit/s from enrollment on;
5. recovery — accuracy of the model every drifted device serves, on drifted data.

What the result checks (:meth:`RetrainScenarioResult.violations`): every device serves a
committed model of the last version, no report was lost (every outbox drained, one
terminal event per device and rollout), SecAgg+ was on in every round, no device port is
reachable from the hub's namespace (every listener on a device host is on its loopback), and
no hub process opened a file of a device (an audit hook in ``cloud-hub serve``, ``cloud-hub
retrain`` and every process they start records each ``open`` and SQLite connection under
the devices' folders). The steps live in :mod:`simulations.lab.retrain_steps`.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shared import toml_text
from simulations.lab.fleet import DEVICE_CLASS, FleetLab, LabConfig
from simulations.lab.outcome import LabDeviceOutcome, collect_outcomes
from simulations.lab.plan import LabPlan
from simulations.lab.retrain_steps import HubSets, OpenAudit, RetrainSteps

__all__ = ["RetrainScenarioConfig", "RetrainScenarioResult", "run_retrain_scenario"]

MODEL = "sensor-mlp"


@dataclass(frozen=True)
class RetrainScenarioConfig:
    root: Path
    devices: int = 6
    drifted: int = 3  # the last ``drifted`` devices form the site that drifts
    rounds: int = 2  # SecAgg+ rounds of the controller's retraining
    first_rounds: int = 2  # ... and of the first model (an operator's cloud-hub retrain)
    history: int = 200  # labelled samples a device holds at enrollment
    drifted_samples: int = 300  # labelled drifted samples each drifted device collects
    cut_s: float = 20.0
    cap_kbit: int = 256
    prefix: str = "flt"
    subnet: str = "10.213.17.0/24"
    train_timeout_s: float = 600.0
    rollout_timeout_s: float = 300.0
    gate_window_s: float = 3.0  # each rollout stage's gate window (the cut falls in one)

    def __post_init__(self) -> None:
        if not 1 <= self.drifted <= self.devices or self.devices < 3:
            raise ValueError("need 3+ devices (SecAgg+ needs 3 clients), 1+ of them drifted")


@dataclass
class RetrainScenarioResult:
    devices: int
    enroll_to_first_model_s: float = 0.0
    drift_to_recovered_s: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # phase -> drifted site's
    runs: list[dict[str, Any]] = field(default_factory=list)  # cloud-hub retrain outcomes
    rounds: list[dict[str, Any]] = field(default_factory=list)  # every recorded round
    outcomes: list[LabDeviceOutcome] = field(default_factory=list)
    # rollout -> device -> deployment -> terminal events the hub holds (each must be one)
    terminal_events: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    device_bytes: dict[str, int] = field(default_factory=dict)  # retrain rollout, per device
    hub_opened: list[str] = field(default_factory=list)  # device files a hub process opened
    audit_armed: int = 0  # hub processes the open audit watched
    rollout_at_cut: str = ""  # the retraining rollout's state when the link went down
    cap_held: bool = False  # the capped link was still capped after the last rollout
    reachable_device_ports: list[str] = field(default_factory=list)  # from the hub's netns

    @property
    def reports_lost(self) -> int:
        """Outbox entries never acknowledged plus, over all rollouts, devices without a
        deployment and deployments without exactly one terminal event."""
        left = sum(o.outbox_left for o in self.outcomes)
        missing = sum(
            sum(n != 1 for n in per_device.get(o.device_id, {"-": 0}).values())
            for per_device in self.terminal_events.values()
            for o in self.outcomes
        )
        return left + missing

    @property
    def rounds_without_secagg(self) -> int:
        return sum(1 for r in self.rounds if not r.get("secagg"))

    def violations(self, last_version: int) -> list[str]:
        out = [
            f"{o.device_id} serves v{o.active_version} (committed={o.smoke_ok}): {o.smoke_detail}"
            for o in self.outcomes
            if not (o.smoke_ok and o.active_version == last_version)
        ]
        if self.reports_lost:
            out.append(f"{self.reports_lost} reports lost: {self.terminal_events}")
        if self.rounds_without_secagg or not self.rounds:
            out.append(f"rounds without SecAgg+: {self.rounds}")
        if self.audit_armed < 2:  # at least cloud-hub serve and cloud-hub retrain
            out.append(f"the open audit watched {self.audit_armed} hub processes")
        if self.rollout_at_cut in ("", "done", "failed", "aborted", "rolled_back"):
            out.append(f"the link was not cut mid-rollout (rollout {self.rollout_at_cut!r})")
        if not self.cap_held:
            out.append("the capped link was not capped to the end")
        out += [f"hub process opened {p}" for p in self.hub_opened]
        out += [f"reachable from the hub: {p}" for p in self.reachable_device_ports]
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "lab_devices": self.devices,
            "lab_enroll_to_first_model_s": round(self.enroll_to_first_model_s, 1),
            "lab_drift_to_recovered_s": round(self.drift_to_recovered_s, 1),
            "lab_reports_lost": self.reports_lost,
            "lab_rounds_without_secagg": self.rounds_without_secagg,
        }


def run_retrain_scenario(
    config: RetrainScenarioConfig, *, say: Callable[[str], None] = print
) -> RetrainScenarioResult:
    """Run the whole scenario (see the module docstring); the lab is gone when it returns."""
    result = RetrainScenarioResult(devices=config.devices)
    sets = HubSets.write(config.root / "hub-sets")
    audit = OpenAudit(config.root / "hub-open-audit.log")
    lab_root = config.root / "lab"
    lab_config = LabConfig(
        root=lab_root, devices=config.devices, prefix=config.prefix, subnet=config.subnet,
        start_timeout_s=240.0, hub_config=_hub_config(config, sets),
        hub_env=audit.env(lab_root / "devices"),
    )  # fmt: skip
    started = time.monotonic()
    with FleetLab(lab_config) as lab:
        scenario = RetrainSteps(lab, config, sets, audit, say)
        say(
            f"lab: {config.devices} devices enrolled and online ({time.monotonic() - started:.0f}s)"
        )
        lab.cap(scenario.capped.name, config.cap_kbit)
        scenario.seed_history()
        first = scenario.retrain("first model")
        scenario.wait_rollout(first)
        result.enroll_to_first_model_s = time.monotonic() - started
        result.accuracy["before_drift"] = scenario.site_accuracy(drift=False)
        drift_at = time.monotonic()
        scenario.seed_drift()
        result.accuracy["after_drift"] = scenario.site_accuracy(drift=True)
        scenario.stream_drifted_inputs()
        second = scenario.controller_run(trigger="drift")
        scenario.wait_rollout(second, cut=scenario.cut)
        result.rollout_at_cut = scenario.rollout_at_cut
        result.cap_held = scenario.cap_holds()
        result.drift_to_recovered_s = time.monotonic() - drift_at
        result.accuracy["after_retrain"] = scenario.site_accuracy(drift=True)
        result.runs = [first, second]
        scenario.wait_outboxes()
        result.outcomes = collect_outcomes(lab)
        result.terminal_events = {r["rollout_id"]: scenario.terminal_events(r) for r in (first, second)}  # fmt: skip
        result.device_bytes = scenario.bytes_received(second)
        result.rounds = scenario.rounds([first, second])
        result.reachable_device_ports = scenario.device_listeners()
        result.hub_opened = scenario.audit.opened()
        result.audit_armed = scenario.audit.armed()
    say(f"lab: figures {json.dumps(result.figures())}")
    return result


def _hub_config(config: RetrainScenarioConfig, sets: HubSets) -> str:
    """``cloud-hub serve``'s config: its retraining controller watches the lab's class, its
    SuperLink listens on the hub host's address; one drift retraining after the first model
    (the daily budget of two counts the operator's first run)."""
    hub = LabPlan.make(config.devices, prefix=config.prefix, subnet=config.subnet).hub
    retraining = {
        "device_classes": [DEVICE_CLASS],
        "model_name": MODEL,
        "validation_file": str(sets.validation),
        "calibration_file": str(sets.calibration),
        "superlink_host": hub.address,
        "train_timeout_s": config.train_timeout_s,
        "num_rounds": config.rounds,
        "tick_interval_s": 1.0,
        "rollout_gate_window_s": config.gate_window_s,
        # PSI of a whole window: non-IID class mixes alone reach ~0.8, the sensor shift ~7
        "drift_threshold": 1.5,
        "drift_fraction": min(0.3, config.drifted / config.devices),
        "drift_duration_s": 3.0,
        "cooldown_s": 20.0,
        "max_runs_per_day": 2,
    }
    return toml_text.dumps({"retraining": retraining})
