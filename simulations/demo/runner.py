"""The one-command closed-loop demo (``cloud-hub demo``) and its smaller benchmark variant.

Phases, each printed as it happens:

1. infrastructure — embedded broker (Mosquitto, else amqtt), key store, the hub in-process
   (SQLite registry, MQTT ingest, rollout engine, REST API + dashboard on uvicorn);
2. fleet — N device processes, each with its own non-IID labelled history;
3. initial model — federated training with SecAgg+ over the whole fleet's sample stores,
   compression for the class profile, signed bundle, staged rollout (canary → waves);
4. serving — the driver streams inputs to every device's ``/predict`` and labels to
   ``/feedback`` (accuracy measured on the answers);
5. drift — the ``site=plant-3`` devices see shifted sensors; their drift detectors report
   against the bundle's reference statistics; the controller's policy triggers retraining
   with those devices, the candidate beats the champion, it is bundled (+ deltas) and rolled
   out in stages; accuracy on the drifted devices recovers.

Everything started is stopped in ``finally`` (device process groups, hub threads, broker),
and on SIGTERM/SIGINT.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import signal
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.errors import HubError
from simulations.demo.fleet import DRIFT, PROBLEM_SEED, DemoFleet

__all__ = ["DemoConfig", "DemoResult", "run_demo"]

log = logging.getLogger(__name__)
CLASS = "x86-cpu"
MODEL = "sensor-mlp"


@dataclass(frozen=True)
class DemoConfig:
    out_dir: Path = Path("demo-out")
    agents: int = 6
    drifted: int = 3  # devices at site=plant-3 (>= 3: SecAgg+ needs three clients)
    mqtt_url: str | None = None  # None: start an embedded broker
    broker: str = "auto"  # embedded broker: auto (Mosquitto if installed) | amqtt
    port: int = 0  # hub API port; 0 = a free one
    batch: int = 50  # inputs per request
    steps_before_drift: int = 20  # request rounds (one batch per device) before the drift
    steps_after_retrain: int = 40  # long enough to see the recovery in the plot
    drift_window: int = 200
    num_rounds: int = 3
    rollout_stages: tuple[dict[str, object], ...] = (
        {"count": 1},
        {"percent": 50.0},
        {"percent": 100.0},
    )
    gate_window_s: float = 2.0
    # "inprocess" (default: run_federated fed by the devices' sample stores) or
    # "deployment" (SuperLink + TrainCommands, the devices train as SuperNodes; slower)
    training_engine: str = "inprocess"
    max_wait_s: float = 200.0  # for the retraining to be rolled out to the drifted devices
    plots: bool = True
    quiet: bool = False

    def __post_init__(self) -> None:
        if not 3 <= self.drifted <= self.agents <= 64:
            raise HubError("need 3 <= drifted <= agents <= 64 (SecAgg+ needs 3 clients)")


@dataclass
class DemoResult:
    summary: dict[str, Any]
    timeline: list[dict[str, Any]] = field(default_factory=list)


class _Progress:
    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


def _eventually(check: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise HubError(f"demo: {what} not reached within {timeout:.0f}s")
        time.sleep(0.3)


@contextlib.contextmanager
def _signals_raise() -> Iterator[None]:
    """SIGTERM ends the demo like Ctrl-C does, so every ``finally`` runs."""

    def on_term(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


class _Hub:
    """The hub in this process: HubServer (registry, ingest, engine) + uvicorn thread."""

    def __init__(
        self, data_dir: Path, mqtt_url: str, prefix: str, port: int, protocol: str = "5"
    ) -> None:
        from cloud_hub.api.server import HubServer
        from cloud_hub.config import HubConfig
        from shared.net import free_port

        self.port = port or free_port()
        self.config = HubConfig(
            data_dir=data_dir,
            topic_prefix=prefix,
            api_port=self.port,
            instance_id=prefix,
            offline_after_s=0,
        ).with_overrides(mqtt_url=mqtt_url)
        self.config = dataclasses.replace(
            self.config, mqtt=dataclasses.replace(self.config.mqtt, protocol=protocol)
        )
        self.server = HubServer(self.config)
        self._uvicorn: Any = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        import uvicorn

        self.server.start()
        self._uvicorn = uvicorn.Server(
            uvicorn.Config(
                self.server.app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
            )
        )
        self._thread = threading.Thread(target=self._uvicorn.run, name="hub-api", daemon=True)
        self._thread.start()
        _eventually(lambda: self._uvicorn.started, 30, "hub API up")

    def stop(self) -> None:
        if self._uvicorn is not None:
            self._uvicorn.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.server.stop()


def _tokens(registry: Any) -> dict[str, str]:
    from cloud_hub.registry import admin

    out = {}
    with registry.session() as s:
        for role in ("viewer", "operator"):
            _rec, token = admin.create_token(s, name=f"demo-{role}", role=role, now=time.time())
            out[role] = token
    return out


def _hub_sets(n: int = 600) -> tuple[Any, Any]:
    """The hub's own labelled sets: validation (clean + labelled drifted field samples, so a
    candidate that handles the new site scores higher) and calibration (clean: the drift
    reference describes the distribution the first model was trained for)."""
    from shared.data.sensors import generate_sensor_data

    xc, yc = generate_sensor_data(n, seed=PROBLEM_SEED, sample_seed=90_001)
    xd, yd = generate_sensor_data(n // 2, seed=PROBLEM_SEED, sample_seed=90_002, drift=DRIFT)
    validation = (np.concatenate([xc, xd]), np.concatenate([yc, yd]))
    xcal, ycal = generate_sensor_data(n, seed=PROBLEM_SEED, sample_seed=90_003)
    return validation, (xcal, ycal)


def _hub_ca(hub_dir: Path) -> Path:
    """The hub CA certificate (created with the hub's data directory, as enrollment does)."""
    from cloud_hub.enrollment.ca import CertificateAuthority

    CertificateAuthority.load_or_create(hub_dir / "ca")
    return hub_dir / "ca" / "ca.crt"


def run_demo(config: DemoConfig) -> DemoResult:
    """Run the whole loop; returns the summary (also written to ``out_dir``)."""
    from cloud_hub.keys import KeyStore
    from cloud_hub.loop.cohort import DeviceSampleStores
    from cloud_hub.loop.config import LoopConfig
    from cloud_hub.loop.controller import RetrainController
    from cloud_hub.loop.pipeline import RetrainPipeline
    from cloud_hub.loop.policy import RetrainPolicy
    from simulations.harness.embedded_broker import start_embedded_broker

    say = _Progress(config.quiet)
    started = time.monotonic()
    out = Path(config.out_dir).resolve()
    out.mkdir(parents=True, exist_ok=True)
    run_dir = out / f"run-{time.strftime('%Y%m%dT%H%M%S')}"
    broker: Any = None
    hub: _Hub | None = None
    fleet: DemoFleet | None = None
    stop = threading.Event()
    controller_thread: threading.Thread | None = None
    deployment: Any = None
    timeline: list[dict[str, Any]] = []
    with _signals_raise():
        try:
            # -- 1. infrastructure
            mqtt_url = config.mqtt_url
            protocol = "5"
            if mqtt_url is None:
                broker = start_embedded_broker(amqtt_venv=out / ".amqtt-venv", prefer=config.broker)
                mqtt_url = broker.url
                protocol = broker.mqtt_version  # amqtt speaks 3.1.1 only
                say(f"broker: {broker.kind} (MQTT {protocol}) on {mqtt_url}")
            keys = KeyStore.init(run_dir / "hub" / "keys")
            prefix = DemoFleet.new_prefix()
            hub = _Hub(run_dir / "hub", mqtt_url, prefix, config.port, protocol)
            hub.start()
            registry = hub.server.registry
            assert registry is not None
            if hub.server.engine is None:
                raise HubError("the hub's rollout engine did not start (see the log)")
            tokens = _tokens(registry)
            url = f"http://127.0.0.1:{hub.port}"
            say(f"hub: {url}  dashboard: {url}/ui")
            say(f"     viewer token:   {tokens['viewer']}")
            say(f"     operator token: {tokens['operator']}")

            # -- 2. fleet
            fleet = DemoFleet(
                root=run_dir / "fleet",
                trust_root=keys.trust_root().to_dict(),
                mqtt_url=mqtt_url,
                prefix=prefix,
                n=config.agents,
                drifted=config.drifted,
                drift_window=config.drift_window,
                mqtt_protocol=protocol,
                training_ca=_hub_ca(run_dir / "hub"),  # R4: devices verify the SuperLink
            )
            fleet.start()
            drifted = [d for d in fleet.devices if d.drifted]
            say(
                f"fleet: {config.agents} devices ({len(drifted)} at site=plant-3), "
                "each with its own non-IID labelled history"
            )
            _eventually(lambda: _registered(registry, fleet.device_ids), 60, "devices registered")
            say("fleet: every device said hello")

            # -- the loop's parts
            validation, calibration = _hub_sets()
            loop_config = LoopConfig(
                model_name=MODEL,
                work_dir=run_dir / "hub" / "loop",
                num_rounds=config.num_rounds,
                rollout_stages=config.rollout_stages,
                rollout_gate_window_s=config.gate_window_s,
                training_engine=config.training_engine,
                policy=RetrainPolicy(
                    # PSI of a whole window: non-IID class mixes alone reach ~0.8 here,
                    # the plant-3 sensor shift ~7
                    drift_threshold=1.5,
                    drift_fraction=0.3,
                    drift_duration_s=3.0,
                    accuracy_drop=None,
                    cooldown_s=20.0,  # the initial run counts too
                    max_runs_per_day=6,
                    min_devices=3,
                ),
            )
            deployment = None
            if config.training_engine == "deployment":
                from cloud_hub.config import parse_mqtt_url
                from cloud_hub.loop.deployment import DeploymentTraining
                from shared.topics import TopicScheme

                deployment = DeploymentTraining(
                    mqtt=parse_mqtt_url(mqtt_url),
                    topics=TopicScheme(prefix),
                    workdir=run_dir / "hub" / "flower",
                    keys=keys,
                    ca_dir=run_dir / "hub" / "ca",  # the SuperLink's TLS, from the hub CA
                )
            pipeline = RetrainPipeline(
                registry=registry,
                keys=keys,
                rollouts=hub.server.engine,
                cohort_data=DeviceSampleStores.under(run_dir / "fleet"),
                validation=validation,
                calibration=calibration,
                config=loop_config,
                deployment=deployment,
            )

            # -- 3. initial model
            say(
                f"train: initial model, Flower + SecAgg+ ({config.training_engine} engine) "
                "over every device's sample store"
            )
            first = pipeline.run(CLASS, fleet.device_ids, trigger="manual", reason="initial model")
            if first.state != "rolling_out" or first.rollout_id is None:
                raise HubError(f"initial training run {first.run_id}: {first.state} {first.detail}")
            say(
                f"train: v{first.version} accuracy {first.candidate_accuracy:.3f} "
                f"(hub validation) bundle {first.bundle_bytes} B; rollout {first.rollout_id}"
            )
            v1_rollout = _wait_rollout(hub.server.engine, first.rollout_id, say, 90)
            _eventually(
                lambda: all(fleet.serving_version(d) == first.version for d in fleet.devices),
                60,
                f"every device serving v{first.version}",
            )
            say(f"fleet: every device serves v{first.version}")

            t_start = time.monotonic()

            def stream(phase: str, steps: int, drift_on: bool) -> None:
                for _ in range(steps):
                    _stream_step(fleet, phase, drift_on, config.batch, timeline, t_start)

            # -- 4. serving before drift
            stream("before_drift", config.steps_before_drift, False)
            acc_before = _phase_acc(timeline, "before_drift", drifted=True)
            say(f"serve: accuracy before drift {acc_before:.3f} (plant-3 devices)")

            # -- 5. drift, detection, retraining, rollout
            controller = RetrainController(pipeline, [CLASS], interval_s=1.0)
            controller_thread = threading.Thread(
                target=controller.run, args=(stop,), name="retrain-controller", daemon=True
            )
            controller_thread.start()
            say("drift: site=plant-3 sensors shifted; streaming until the hub has retrained")
            drift_t0 = time.monotonic()
            # a Deployment Engine run alone takes minutes on 2 cores (it polls)
            wait_s = config.max_wait_s * (3 if config.training_engine == "deployment" else 1)
            deadline = drift_t0 + wait_s
            target_version: int | None = None
            detected_at: float | None = None
            retrain_rollout: str | None = None
            while time.monotonic() < deadline:
                phase = "after_drift" if target_version is None else "rolling_out"
                _stream_step(fleet, phase, True, config.batch, timeline, t_start)
                if detected_at is None and controller.outcomes:
                    detected_at = time.monotonic()
                if target_version is None and controller.outcomes:
                    o = controller.outcomes[-1]
                    say(
                        f"retrain: drift triggered run {o.run_id} ({o.state}): "
                        f"v{o.version} validation accuracy {o.candidate_accuracy or 0:.3f} vs "
                        f"champion {o.champion_accuracy or 0:.3f}; bundle {o.bundle_bytes} B, "
                        f"delta {min(o.delta_bundles.values(), default=0)} B"
                    )
                    if o.state != "rolling_out":
                        raise HubError(f"retraining run {o.run_id} ended {o.state}: {o.detail}")
                    target_version, retrain_rollout = o.version, o.rollout_id
                if target_version is not None and all(
                    fleet.serving_version(d) == target_version for d in drifted
                ):
                    stop.set()  # one retraining is the demo's story; no second run
                    break
            else:
                raise HubError(f"no retrained model reached the drifted devices in {wait_s:.0f}s")
            say(f"fleet: plant-3 devices serve v{target_version}")
            acc_after_drift = _phase_acc(timeline, "after_drift", drifted=True)
            stream("after_retrain", config.steps_after_retrain, True)
            acc_after = _phase_acc(timeline, "after_retrain", drifted=True)
            assert retrain_rollout is not None
            v2_rollout = _wait_rollout(hub.server.engine, retrain_rollout, say, 60)
            controller_thread.join(timeout=30)

            controller.sync_runs()  # the runs' rollouts are done: mark them deployed
            api_runs = _api_get(url, tokens["viewer"], "/api/v1/training-runs?limit=20")
            summary = _summary(
                config=config,
                registry=registry,
                controller=controller,
                first=first,
                rollouts={"initial": v1_rollout, "retrain": v2_rollout},
                timeline=timeline,
                acc=(acc_before, acc_after_drift, acc_after),
                wall_s=time.monotonic() - started,
                dashboard=f"{url}/ui",
                drift_to_rollout_s=time.monotonic() - drift_t0,
                delivered=getattr(getattr(hub.server.engine, "delivery", None), "shipped", None),
            )
            summary["api_training_runs"] = [
                {k: r.get(k) for k in ("run_id", "state", "trigger", "result_version")}
                for r in api_runs.get("items", [])
            ]
            result = DemoResult(summary, timeline)
            _write(run_dir, result, plots=config.plots)
            say(f"output: {run_dir}")
            return result
        finally:
            say("stopping: controller, devices, hub, broker")
            stop.set()
            if deployment is not None:
                deployment.abort()  # a Deployment Engine run in progress ends now
            if controller_thread is not None:
                controller_thread.join(timeout=60)
            if fleet is not None:
                fleet.stop()
            if hub is not None:
                hub.stop()
            if broker is not None:
                broker.stop()
            say("stopped")


def _api_get(base: str, token: str, path: str) -> dict[str, Any]:
    """What an operator sees: the REST API with a viewer token."""
    import json
    import urllib.request

    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def _registered(registry: Any, device_ids: list[str]) -> bool:
    from cloud_hub.registry import devices

    with registry.session() as s:
        page = devices.list_devices(s, devices.DeviceQuery(device_class=CLASS, limit=1000))
        return {d.device_id for d in page.items if d.online} >= set(device_ids)


def _wait_rollout(engine: Any, rollout_id: str, say: Callable[[str], None], timeout: float) -> Any:
    last = ""

    def done() -> Any:
        nonlocal last
        st = engine.status(rollout_id)
        now = f"{st.state}/stage {st.stage}"
        if now != last:
            say(f"rollout {rollout_id}: {now}")
            last = now
        if st.state in ("failed", "aborted", "rolled_back"):
            raise HubError(f"rollout {rollout_id} ended {st.state}: {st.reason}")
        return st if st.state == "done" else None

    return _eventually(done, timeout, f"rollout {rollout_id} done")


def _stream_step(
    fleet: DemoFleet,
    phase: str,
    drift_on: bool,
    batch: int,
    timeline: list[dict[str, Any]],
    t0: float,
) -> None:
    for d in fleet.devices:
        acc, version = fleet.predict_and_label(d, batch, drift=drift_on and d.drifted)
        timeline.append(
            {
                "t": round(time.monotonic() - t0, 3),
                "device": d.device_id,
                "drifted": d.drifted,
                "phase": phase,
                "accuracy": acc,
                "version": version,
            }
        )


def _phase_acc(timeline: list[dict[str, Any]], phase: str, *, drifted: bool) -> float:
    values = [r["accuracy"] for r in timeline if r["phase"] == phase and r["drifted"] == drifted]
    return statistics.fmean(values) if values else float("nan")


def _summary(
    *,
    config: DemoConfig,
    registry: Any,
    controller: Any,
    first: Any,
    rollouts: dict[str, Any],
    timeline: list[dict[str, Any]],
    acc: tuple[float, float, float],
    wall_s: float,
    dashboard: str,
    drift_to_rollout_s: float,
    delivered: Any = None,
) -> dict[str, Any]:
    from simulations.demo.report import bytes_shipped

    retrain = controller.outcomes[-1]
    shipped = bytes_shipped(registry, [r.rollout_id for r in rollouts.values()], delivered)
    return {
        "agents": config.agents,
        "drifted_devices": config.drifted,
        "accuracy_before_drift": acc[0],
        "accuracy_after_drift": acc[1],
        "accuracy_after_retrain": acc[2],
        "accuracy_recovered_pts": 100.0 * (acc[2] - acc[1]),
        "healthy_accuracy_before_drift": _phase_acc(timeline, "before_drift", drifted=False),
        "healthy_accuracy_after_retrain": _phase_acc(timeline, "after_retrain", drifted=False),
        "initial_run": {"run_id": first.run_id, "version": first.version, **first.timings_s},
        "retrain_run": {
            "run_id": retrain.run_id,
            "trigger": controller.decisions.get(CLASS).trigger if controller.decisions else "",
            "version": retrain.version,
            "candidate_accuracy": retrain.candidate_accuracy,
            "champion_accuracy": retrain.champion_accuracy,
            **retrain.timings_s,
        },
        "bytes_shipped": shipped["full_bytes_shipped"],
        "bytes": shipped,
        "rollouts": {
            name: {
                "rollout_id": st.rollout_id,
                "duration_s": (st.finished_at or 0) - (st.started_at or 0),
                "state": st.state,
            }
            for name, st in rollouts.items()
        },
        "drift_to_recovered_s": drift_to_rollout_s,
        "dashboard": dashboard,
        "wall_s": wall_s,
    }


def _write(run_dir: Path, result: DemoResult, *, plots: bool) -> None:
    import json

    from simulations.demo.report import write_plots

    (run_dir / "summary.json").write_text(json.dumps(result.summary, indent=2, default=str))
    (run_dir / "timeline.json").write_text(json.dumps(result.timeline))
    if plots:
        write_plots(run_dir, result.summary, result.timeline)
