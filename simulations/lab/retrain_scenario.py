"""The lab's closed loop: devices on their own hosts train where their data is.

:func:`run_retrain_scenario` builds a :class:`~simulations.lab.fleet.FleetLab` and runs, with
the real programs in their own network namespaces:

1. enroll — every device enrolls over HTTPS with a one-time token and runs its agent; each
   device's sample store holds its own non-IID labelled history (written on the device's
   side: the data it collected);
2. first model — ``cloud-hub retrain`` on the hub host: a SuperLink there (TLS from the hub
   CA the devices pinned), signed training orders over the broker (mTLS), one SuperNode per
   device on its own sample store, SecAgg+; the candidate is compressed, bundled, signed and
   rolled out in stages (canary, waves) by the serving hub;
3. drift — the devices of one site see shifted sensors and label them (their sample stores
   gain drifted, labelled field data); the model they serve fails on it;
4. retraining — ``cloud-hub retrain`` again over the Deployment Engine; the new version
   ships as deltas against the one the devices run, in stages, while one device's link is
   cut for ``cut_s`` seconds in the middle of the rollout; another device's link is capped
   at ``cap_kbit`` kbit/s from enrollment on;
5. recovery — accuracy of the model every drifted device serves, on drifted data.

What the result checks (:meth:`RetrainScenarioResult.violations`): every device serves a
committed model of the last version, no report was lost (every outbox drained, one
terminal event per device and rollout), SecAgg+ was on in every round, no device port is
reachable from the hub's namespace (every listener on a device host is on its loopback), and
no hub training process opened a file of a device (an audit hook in each hub training
process records every ``open`` and SQLite connection under the devices' folders).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from simulations.lab.fleet import (
    DEVICE_CLASS,
    DEVICE_MQTT_PORT,
    HUB_MQTT_PORT,
    FleetLab,
    LabConfig,
)
from simulations.lab.outcome import LabDeviceOutcome, collect_outcomes
from simulations.lab.plan import LabHost

__all__ = ["RetrainScenarioConfig", "RetrainScenarioResult", "run_retrain_scenario"]

AUDIT_SITE = Path(__file__).resolve().parent / "audit_site"  # its sitecustomize.py
AUDIT_ENV = "FEDFLEET_LAB_OPEN_AUDIT"  # log file of the audit hook
AUDIT_WATCH_ENV = "FEDFLEET_LAB_OPEN_AUDIT_UNDER"  # the folder whose opens it records
MODEL = "sensor-mlp"


@dataclass(frozen=True)
class RetrainScenarioConfig:
    root: Path
    devices: int = 6
    drifted: int = 3  # the last ``drifted`` devices form the site that drifts
    rounds: int = 2
    history: int = 200  # labelled samples a device holds at enrollment
    drifted_samples: int = 300  # labelled drifted samples each drifted device collects
    cut_s: float = 20.0
    cap_kbit: int = 256
    prefix: str = "flt"
    subnet: str = "10.213.17.0/24"
    train_timeout_s: float = 600.0
    rollout_timeout_s: float = 300.0

    def __post_init__(self) -> None:
        if not 3 <= self.drifted <= self.devices or self.devices < 4:
            raise ValueError("need 4+ devices, 3+ of them drifted (SecAgg+ needs 3 clients)")


@dataclass
class RetrainScenarioResult:
    devices: int
    enroll_to_first_model_s: float = 0.0
    drift_to_recovered_s: float = 0.0
    accuracy: dict[str, float] = field(default_factory=dict)  # phase -> drifted site's
    runs: list[dict[str, Any]] = field(default_factory=list)  # cloud-hub retrain outcomes
    rounds: list[dict[str, Any]] = field(default_factory=list)  # every recorded round
    outcomes: list[LabDeviceOutcome] = field(default_factory=list)
    terminal_events: dict[str, dict[str, int]] = field(default_factory=dict)  # rollout -> dev
    device_bytes: dict[str, int] = field(default_factory=dict)  # retrain rollout, per device
    hub_opened: list[str] = field(default_factory=list)  # device files a hub process opened
    audit_armed: int = 0  # hub training processes the open audit watched
    reachable_device_ports: list[str] = field(default_factory=list)  # from the hub's netns

    @property
    def reports_lost(self) -> int:
        """Outbox entries never acknowledged plus missing terminal events, over all rollouts."""
        left = sum(o.outbox_left for o in self.outcomes)
        missing = sum(
            1
            for per_device in self.terminal_events.values()
            for o in self.outcomes
            if per_device.get(o.device_id, 0) != 1
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
        if self.audit_armed < 2:  # at least the two cloud-hub retrain processes
            out.append(f"the open audit watched {self.audit_armed} hub processes")
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
    lab_config = LabConfig(
        root=config.root / "lab", devices=config.devices, prefix=config.prefix,
        subnet=config.subnet, start_timeout_s=240.0,
    )  # fmt: skip
    sets = _HubSets.write(config.root / "hub-sets")
    started = time.monotonic()
    with FleetLab(lab_config) as lab:
        scenario = _Scenario(lab, config, sets, say)
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
        second = scenario.retrain("retraining after drift")
        scenario.wait_rollout(second, cut=scenario.cut)
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


@dataclass(frozen=True)
class _HubSets:
    """The hub's own labelled sets (validation: clean + drifted, calibration: clean)."""

    validation: Path
    calibration: Path

    @classmethod
    def write(cls, folder: Path) -> _HubSets:
        from shared.data.sensors import generate_sensor_data
        from simulations.demo.fleet import DRIFT, PROBLEM_SEED

        folder.mkdir(parents=True, exist_ok=True)
        xc, yc = generate_sensor_data(600, seed=PROBLEM_SEED, sample_seed=90_001)
        xd, yd = generate_sensor_data(300, seed=PROBLEM_SEED, sample_seed=90_002, drift=DRIFT)
        np.savez(folder / "validation.npz", x=np.concatenate([xc, xd]), y=np.concatenate([yc, yd]))
        xcal, ycal = generate_sensor_data(600, seed=PROBLEM_SEED, sample_seed=90_003)
        np.savez(folder / "calibration.npz", x=xcal, y=ycal)
        return cls(folder / "validation.npz", folder / "calibration.npz")


@dataclass
class _OpenAudit:
    """Where the hub's training processes record opens of device files."""

    log: Path

    def env(self, devices_root: Path) -> dict[str, str]:
        path = os.environ.get("PYTHONPATH", "")
        return {
            "PYTHONPATH": f"{AUDIT_SITE}{os.pathsep}{path}" if path else str(AUDIT_SITE),
            AUDIT_ENV: str(self.log),
            AUDIT_WATCH_ENV: str(devices_root.resolve()),
        }

    def opened(self) -> list[str]:
        if not self.log.exists():
            return []
        return sorted(set(self.log.read_text(errors="replace").splitlines()) - {""})

    def armed(self) -> int:
        """How many processes the hook watched (each writes a line when it starts)."""
        marks = self.log.parent / f"{self.log.name}.armed"
        return len(marks.read_text().splitlines()) if marks.exists() else 0


class _Scenario:
    def __init__(
        self, lab: FleetLab, config: RetrainScenarioConfig, sets: _HubSets, say: Any
    ) -> None:
        self.lab, self.config, self.sets, self.say = lab, config, sets, say
        self.audit = _OpenAudit(config.root / "hub-open-audit.log")
        devices = list(lab.plan.devices)
        self.site = devices[-config.drifted :]
        self.capped = devices[0]
        self.cut = devices[1]
        rng = np.random.default_rng(0)
        self.mix = {h.name: tuple(float(w) for w in rng.dirichlet([0.7] * 3) + 0.05) for h in devices}  # fmt: skip

    # -- the devices' own data -----------------------------------------------------------
    def state_dir(self, host: LabHost) -> Path:
        return self.lab.device_dir(host) / "var" / "lib" / "fedfleet-agent"

    def _draw(self, host: LabHost, n: int, *, drift: bool, salt: int) -> tuple[Any, Any]:
        from shared.data.sensors import generate_sensor_data
        from simulations.demo.fleet import DRIFT, PROBLEM_SEED

        seed = (sum(host.name.encode()) * 1009 + salt) % (2**31)
        return generate_sensor_data(
            n, seed=PROBLEM_SEED, sample_seed=seed, class_weights=self.mix[host.name],
            drift=DRIFT if drift else None,
        )  # fmt: skip

    def _add_samples(self, host: LabHost, n: int, *, drift: bool, salt: int) -> None:
        """Labelled samples into the device's own store, as its agent keeps them."""
        from edge_agent.samples.store import SampleStore, SampleStoreConfig

        x, y = self._draw(host, n, drift=drift, salt=salt)
        store = SampleStore(SampleStoreConfig(path=self.state_dir(host) / "samples.db"))
        try:
            now = time.time()
            for i in range(len(y)):
                store.add(f"{salt}-{i}", x[i], model_version=0, label=int(y[i]), now=now + i * 1e-3)
        finally:
            store.close()

    def seed_history(self) -> None:
        for host in self.lab.plan.devices:
            self._add_samples(host, self.config.history, drift=False, salt=1)

    def seed_drift(self) -> None:
        for host in self.site:
            self._add_samples(host, self.config.drifted_samples, drift=True, salt=2)
        self.say(f"drift: {', '.join(h.name for h in self.site)} collected drifted, labelled data")

    def site_accuracy(self, *, drift: bool) -> float:
        """Mean accuracy of the model each drifted-site device serves, on its own inputs."""
        from cloud_hub.compress.evaluate import accuracy, onnx_predictor, predict
        from edge_agent.ota import SlotStore

        scores = []
        for host in self.site:
            slot = SlotStore(self.state_dir(host)).active()
            path = None if slot is None else slot.model_path
            if path is None:
                raise AssertionError(f"{host.name} serves no model")
            x, y = self._draw(host, 400, drift=drift, salt=3)
            scores.append(accuracy(predict(onnx_predictor(path), x), y))
        return float(np.mean(scores))

    # -- the hub -------------------------------------------------------------------------
    def retrain(self, why: str) -> dict[str, Any]:
        """``cloud-hub retrain`` on the hub host: the devices train over the Deployment Engine."""
        lab, b = self.lab, self.lab.broker_dir
        argv = [
            str(Path(sys.executable).parent / "cloud-hub"), "retrain",
            "--data-dir", str(lab.hub_data), "--class", DEVICE_CLASS,
            "--validation", str(self.sets.validation), "--calibration", str(self.sets.calibration),
            "--rounds", str(self.config.rounds), "--cooldown", "0",
            "--superlink-host", lab.plan.hub.address, "--timeout", str(self.config.train_timeout_s),
            "--mqtt-url", f"mqtts://{lab.plan.broker.hostname}:{HUB_MQTT_PORT}",
            "--mqtt-ca-file", str(b / "ca.crt"),
            "--mqtt-cert-file", str(b / "hub.crt"), "--mqtt-key-file", str(b / "hub.key"),
        ]  # fmt: skip
        started = time.monotonic()
        proc = subprocess.run(
            ["ip", "netns", "exec", lab.plan.hub.netns, *argv],
            capture_output=True, text=True, timeout=self.config.train_timeout_s + 120,
            env={**os.environ, **self.audit.env(lab.root / "devices")}, check=False,
        )  # fmt: skip
        (lab.logs / f"retrain-{int(started)}.log").write_text(proc.stdout + proc.stderr)
        if proc.returncode != 0:
            raise AssertionError(f"cloud-hub retrain ({why}) exited {proc.returncode}: "
                                 f"{(proc.stdout + proc.stderr)[-1500:]}")  # fmt: skip
        out: dict[str, Any] = json.loads(proc.stdout)
        self.say(
            f"train: {why}: v{out['version']} over the Deployment Engine in "
            f"{time.monotonic() - started:.0f}s, validation accuracy "
            f"{out['candidate_accuracy']:.3f}; rollout {out['rollout_id']}"
        )
        return out

    def wait_rollout(self, run: dict[str, Any], *, cut: LabHost | None = None) -> None:
        """Until the run's rollout is done and every device serves its version; with ``cut``,
        that device's link goes down for ``cut_s`` once the rollout has begun."""
        rollout_id, version = str(run["rollout_id"]), int(run["version"])
        deadline = time.monotonic() + self.config.rollout_timeout_s
        if cut is not None:
            self.lab.cut(cut.name)
            if self.lab.reachable(cut.name, self.lab.plan.broker, DEVICE_MQTT_PORT):
                raise AssertionError(f"{cut.name} still reaches the broker: the cut did not hold")
            self.say(f"link: {cut.name} cut for {self.config.cut_s:.0f}s mid-rollout")
            time.sleep(self.config.cut_s)
            self.lab.restore(cut.name)
            self.lab.cap(self.capped.name, self.config.cap_kbit)  # restore undoes every fault
        while True:
            state = self.lab.rollout_state(rollout_id)
            if state in ("failed", "aborted", "rolled_back"):
                raise AssertionError(f"rollout {rollout_id} {state}: {self.lab.api_get(f'/api/v1/rollouts/{rollout_id}')}")  # fmt: skip
            served = {o.device_id: o.active_version for o in collect_outcomes(self.lab)}
            if state == "done" and all(v == version for v in served.values()):
                self.say(f"rollout {rollout_id}: done, every device serves v{version}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"rollout {rollout_id} {state}; devices serve {served}")
            time.sleep(1.0)

    def wait_outboxes(self, timeout_s: float = 60.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any(o.outbox_left for o in collect_outcomes(self.lab)):
            if time.monotonic() > deadline:
                return  # what is left is counted as lost
            time.sleep(1.0)

    # -- what the hub's registry holds -----------------------------------------------------
    def _events(self, rollout_id: str, kinds: tuple[str, ...]) -> list[Any]:
        """Events of the rollout's deployments (ids ``ROLLOUT.STAGE``) of these kinds."""
        from sqlalchemy import select

        from cloud_hub.registry import open_registry
        from cloud_hub.registry.tables import EventRow

        registry = open_registry(f"sqlite:///{self.lab.hub_data / 'hub.db'}")
        try:
            with registry.session() as s:
                query = select(EventRow.device_id, EventRow.kind, EventRow.data).where(
                    EventRow.deployment_id.startswith(f"{rollout_id}."),
                    EventRow.kind.in_(kinds),
                )
                return list(s.execute(query).all())
        finally:
            registry.close()

    def terminal_events(self, run: dict[str, Any]) -> dict[str, int]:
        """Per device: terminal install events the hub holds for the run's rollout."""
        from collections import Counter

        rows = self._events(str(run["rollout_id"]), ("committed", "rolled_back", "failed"))
        return dict(Counter(device for device, _kind, _data in rows))

    def bytes_received(self, run: dict[str, Any]) -> dict[str, int]:
        """Bytes each device says it received for the run's rollout (deltas: < full)."""
        out: dict[str, int] = {}
        for device, _kind, data in self._events(str(run["rollout_id"]), ("download_complete",)):
            if isinstance(data, dict) and "bytes_received" in data:
                out[device] = int(data["bytes_received"])
        return out

    def rounds(self, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Every trained round of the runs, with whether the run's devices were ordered to
        train under SecAgg+ (the order is signed; a device refuses a round without it)."""
        from cloud_hub.registry import admin, open_registry

        registry = open_registry(f"sqlite:///{self.lab.hub_data / 'hub.db'}")
        out = []
        try:
            with registry.session() as s:
                for run in runs:
                    record = admin.get_training_run(s, str(run["run_id"]))
                    secagg = bool(record.config.get("secagg"))
                    engine = record.config.get("engine")
                    for r in (record.metrics or {}).get("rounds", []):
                        if int(r.get("round", 0)) >= 1:
                            out.append({"run_id": run["run_id"], "round": r["round"],
                                        "engine": engine, "status": r.get("status"),
                                        "clients": r.get("clients"), "secagg": secagg})  # fmt: skip
        finally:
            registry.close()
        return out

    def device_listeners(self) -> list[str]:
        """TCP listeners on device hosts that another host could reach (not on loopback)."""
        out = []
        for host in self.lab.plan.devices:
            text = self.lab.run_in(host, ["ss", "-ltnH"])
            for line in text.splitlines():
                parts = line.split()
                if len(parts) < 4:
                    continue
                local = parts[3]
                address = local.rsplit(":", 1)[0].strip("[]")
                if address not in ("127.0.0.1", "::1") and not address.startswith("127."):
                    out.append(f"{host.name} {local}")
        return out
