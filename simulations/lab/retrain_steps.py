"""The steps of the lab's retraining scenario (:mod:`simulations.lab.retrain_scenario`) on
one :class:`~simulations.lab.fleet.FleetLab`: the devices' own data and inputs, the hub's
runs (an operator's ``cloud-hub retrain``, or the serving hub's retraining controller), the
rollouts and link faults, and what the hub's registry holds afterwards."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from simulations.lab.fleet import DEVICE_CLASS, DEVICE_MQTT_PORT, HUB_MQTT_PORT, FleetLab
from simulations.lab.outcome import collect_outcomes
from simulations.lab.plan import LabHost
from simulations.lab.probes import predict_probe

if TYPE_CHECKING:
    from simulations.lab.retrain_scenario import RetrainScenarioConfig

__all__ = ["AUDIT_ENV", "AUDIT_SITE", "AUDIT_WATCH_ENV", "HubSets", "OpenAudit", "RetrainSteps"]

AUDIT_SITE = Path(__file__).resolve().parent / "audit_site"  # its sitecustomize.py
AUDIT_ENV = "FEDFLEET_LAB_OPEN_AUDIT"  # log file of the audit hook
AUDIT_WATCH_ENV = "FEDFLEET_LAB_OPEN_AUDIT_UNDER"  # the folder whose opens it records
_TERMINAL_ROLLOUT = ("failed", "aborted", "rolled_back")
_TERMINAL_EVENTS = ("committed", "rolled_back", "failed")
_REPORTED = ("download_started", "verified", "installed", *_TERMINAL_EVENTS)


@dataclass(frozen=True)
class HubSets:
    """The hub's own labelled sets (validation: clean + drifted, calibration: clean)."""

    validation: Path
    calibration: Path

    @classmethod
    def write(cls, folder: Path) -> HubSets:
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
class OpenAudit:
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


class RetrainSteps:
    """The scenario's steps on one lab: the devices' own data, the hub's runs, what the
    registry holds."""

    def __init__(
        self, lab: FleetLab, config: RetrainScenarioConfig, sets: HubSets, audit: OpenAudit,
        say: Callable[[str], None],
    ) -> None:  # fmt: skip
        self.lab, self.config, self.sets, self.audit, self.say = lab, config, sets, audit, say
        devices = list(lab.plan.devices)
        self.site = devices[-config.drifted :]
        self.capped = devices[0]
        self.cut = devices[1]
        rng = np.random.default_rng(0)
        self.mix = {h.name: tuple(float(w) for w in rng.dirichlet([0.7] * 3) + 0.05) for h in devices}  # fmt: skip
        self.rollout_at_cut = ""  # the retraining rollout's state when the link went down

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

    def stream_drifted_inputs(self, windows: int = 2) -> None:
        """Drifted inputs to each site device's local ``/predict`` (from inside its host, as
        its applications call it): its drift detector compares them with the reference
        statistics of the bundle it runs and reports drift to the hub."""
        for host in self.site:
            x, _y = self._draw(host, 200 * windows, drift=True, salt=4)  # 200: drift window
            inputs = self.lab.root / f"inputs-{host.name}.npy"
            np.save(inputs, np.asarray(x, dtype=np.float32))
            served = self.lab.run_in(host, predict_probe(self.device_api_url(host), str(inputs)))
            self.say(f"drift: {host.name} served {served.strip()} drifted inputs")

    def device_api_url(self, host: LabHost) -> str:
        """The local API the device's agent printed once serving (its own loopback)."""
        for line in (self.lab.logs / f"agent-{host.name}.log").read_text(errors="replace").splitlines():  # fmt: skip
            if line.startswith("{") and '"api_url"' in line:
                return str(json.loads(line)["api_url"])
        raise AssertionError(f"{host.name}'s agent printed no api_url")

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
        """``cloud-hub retrain`` on the hub host (an operator's manual run): the devices train
        over the Deployment Engine."""
        lab, b = self.lab, self.lab.broker_dir
        argv = [
            str(Path(sys.executable).parent / "cloud-hub"), "retrain",
            "--data-dir", str(lab.hub_data), "--class", DEVICE_CLASS,
            "--validation", str(self.sets.validation), "--calibration", str(self.sets.calibration),
            "--rounds", str(self.config.first_rounds), "--cooldown", "0",
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

    def controller_run(self, *, trigger: str = "drift", notice_s: float = 120.0) -> dict[str, Any]:
        """The run the serving hub's retraining controller starts on its own (``trigger``)
        within ``notice_s``, once its rollout has started; read over the hub's API as an
        operator would."""
        started = time.monotonic()
        deadline = started + notice_s
        while True:
            page = self.lab.api_get("/api/v1/training-runs?limit=20")
            run = next((r for r in page["items"] if r["trigger"] == trigger), None)
            if run is not None and run["state"] in ("refused", "failed"):
                raise AssertionError(f"the controller's run {run['run_id']}: {run['state']} {run['detail']}")  # fmt: skip
            if run is not None and run["state"] == "rolling_out":
                break
            if run is None and time.monotonic() > deadline:
                raise AssertionError(f"the hub's controller started no {trigger} run in {notice_s:.0f}s: {page['items']}")  # fmt: skip
            if run is not None:  # training on the devices, then compressing and bundling
                deadline = max(deadline, started + self.config.train_timeout_s + 120)
            if time.monotonic() > deadline:
                raise AssertionError(f"the controller's {trigger} run did not roll out: {run}")
            time.sleep(1.0)
        metrics, config = run.get("metrics") or {}, run.get("config") or {}
        out = {
            "run_id": run["run_id"], "trigger": run["trigger"], "version": run["result_version"],
            "rollout_id": config.get("rollout_id"), "candidate_accuracy": metrics.get("candidate_accuracy"),
            "bundle_bytes": (metrics.get("bundle") or {}).get("bytes", 0),
        }  # fmt: skip
        self.say(
            f"train: the hub's controller retrained ({run['config'].get('reason', trigger)}): "
            f"v{out['version']} ({time.monotonic() - started:.0f}s after the drifted inputs), "
            f"validation accuracy {out['candidate_accuracy']:.3f}; rollout {out['rollout_id']}"
        )
        return out

    def wait_rollout(self, run: dict[str, Any], *, cut: LabHost | None = None) -> None:
        """Until the run's rollout is done and every device serves its version; with ``cut``,
        that device's link goes down for ``cut_s`` once the rollout has begun."""
        rollout_id, version = str(run["rollout_id"]), int(run["version"])
        deadline = time.monotonic() + self.config.rollout_timeout_s
        if cut is not None:
            self.lab.cut(cut.name)
            self.rollout_at_cut = self.lab.rollout_state(rollout_id)
            if self.lab.reachable(cut.name, self.lab.plan.broker, DEVICE_MQTT_PORT):
                raise AssertionError(f"{cut.name} still reaches the broker: the cut did not hold")
            self.say(f"link: {cut.name} cut for {self.config.cut_s:.0f}s mid-rollout")
            time.sleep(self.config.cut_s)
            self.lab.restore(cut.name)
            self.lab.cap(self.capped.name, self.config.cap_kbit)  # restore undoes every fault
        while True:
            state = self.lab.rollout_state(rollout_id)
            if state in _TERMINAL_ROLLOUT:
                raise AssertionError(f"rollout {rollout_id} {state}: {self.lab.api_get(f'/api/v1/rollouts/{rollout_id}')}")  # fmt: skip
            served = {o.device_id: o.active_version for o in collect_outcomes(self.lab)}
            if state == "done" and all(v == version for v in served.values()):
                self.say(f"rollout {rollout_id}: done, every device serves v{version}")
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"rollout {rollout_id} {state}; devices serve {served}")
            time.sleep(1.0)

    def cap_holds(self) -> bool:
        """Whether the capped device's link is still capped at ``cap_kbit`` (tc's view)."""
        shown = self.lab.run_in(self.capped, ["tc", "qdisc", "show", "dev", "eth0"])
        return f"rate {self.config.cap_kbit}Kbit" in shown

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
                columns = (EventRow.device_id, EventRow.deployment_id, EventRow.kind, EventRow.data)
                query = select(*columns).where(
                    EventRow.deployment_id.startswith(f"{rollout_id}."),
                    EventRow.kind.in_(kinds),
                )
                return list(s.execute(query).all())
        finally:
            registry.close()

    def terminal_events(self, run: dict[str, Any]) -> dict[str, dict[str, int]]:
        """Per device and deployment of the run's rollout it reported on: the terminal install
        events the hub holds (one each; a device offered twice, e.g. on reconnecting after a
        cut, ends the superseded deployment with ``failed`` and the other one too)."""
        out: dict[str, dict[str, int]] = {}
        for device, deployment, kind, _data in self._events(str(run["rollout_id"]), _REPORTED):
            per_deployment = out.setdefault(device, {}).setdefault(deployment, 0)
            out[device][deployment] = per_deployment + (kind in _TERMINAL_EVENTS)
        return out

    def bytes_received(self, run: dict[str, Any]) -> dict[str, int]:
        """Bytes each device says it received for the run's rollout (deltas: < full)."""
        out: dict[str, int] = {}
        for device, _dep, _kind, data in self._events(
            str(run["rollout_id"]), ("download_complete",)
        ):
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
