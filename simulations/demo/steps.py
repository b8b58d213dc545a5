"""The demo's steps, each a function of the run's state (:class:`DemoRun`).

:func:`simulations.demo.runner.run_demo` calls them in order; every step records what it
started on the :class:`DemoRun`, whose :meth:`~DemoRun.close` stops all of it.
"""

from __future__ import annotations

import json
import threading
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from cloud_hub.errors import HubError
from simulations.demo.config import CLASS, MODEL, DemoConfig, DemoResult
from simulations.demo.fleet import DRIFT, PROBLEM_SEED, DemoFleet
from simulations.demo.hub import DemoHub
from simulations.demo.phases import PhaseClock
from simulations.demo.stream import stream_until_retrained
from simulations.demo.summary import demo_summary, write_run
from simulations.harness.polling import eventually

__all__ = [
    "DemoRun",
    "Progress",
    "build_pipeline",
    "drifted_site_first",
    "retrain_on_drift",
    "roll_out_initial_model",
    "rollout_finished",
    "start_fleet",
    "start_hub",
    "train_initial_model",
    "wait_rollout",
    "write_summary",
]


class Progress:
    """Progress lines with the seconds since the demo started."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)


@dataclass
class DemoRun:
    """What the steps started and measured; :meth:`close` stops it all."""

    config: DemoConfig
    run_dir: Path
    say: Progress
    started: float = field(default_factory=time.monotonic)
    stop: threading.Event = field(default_factory=threading.Event)
    timeline: list[dict[str, Any]] = field(default_factory=list)
    broker: Any = None
    hub: DemoHub | None = None
    fleet: DemoFleet | None = None
    keys: Any = None
    mqtt_url: str = ""
    mqtt_protocol: str = "5"
    prefix: str = ""
    tokens: dict[str, str] = field(default_factory=dict)
    deployment: Any = None
    controller_thread: threading.Thread | None = None
    serving_t0: float = 0.0
    phases: PhaseClock = field(default_factory=PhaseClock)

    def close(self) -> None:
        self.say("stopping: controller, devices, hub, broker")
        self.stop.set()
        if self.deployment is not None:
            self.deployment.abort()  # a Deployment Engine run in progress ends now
        if self.controller_thread is not None:
            self.controller_thread.join(timeout=60)
        if self.fleet is not None:
            self.fleet.stop()
        if self.hub is not None:
            self.hub.stop()
        if self.broker is not None:
            self.broker.stop()
        self.say("stopped")

    @property
    def registry(self) -> Any:
        assert self.hub is not None and self.hub.server.registry is not None
        return self.hub.server.registry


def start_hub(run: DemoRun) -> None:
    """Broker (embedded unless one is given), key store, hub in-process, API tokens."""
    from cloud_hub.keys import KeyStore
    from simulations.harness.embedded_broker import start_embedded_broker

    config, say = run.config, run.say
    if config.mqtt_url is not None:
        run.mqtt_url = config.mqtt_url
    else:
        out = Path(config.out_dir).resolve()
        run.broker = start_embedded_broker(amqtt_venv=out / ".amqtt-venv", prefer=config.broker)
        run.mqtt_url = run.broker.url
        run.mqtt_protocol = run.broker.mqtt_version  # amqtt speaks 3.1.1 only
        say(f"broker: {run.broker.kind} (MQTT {run.mqtt_protocol}) on {run.mqtt_url}")
    run.keys = KeyStore.init(run.run_dir / "hub" / "keys")
    run.prefix = DemoFleet.new_prefix()
    run.hub = DemoHub(run.run_dir / "hub", run.mqtt_url, run.prefix, config.port, run.mqtt_protocol)
    run.hub.start()
    if run.hub.server.engine is None:
        raise HubError("the hub's rollout engine did not start (see the log)")
    run.tokens = _tokens(run.registry)
    say(f"hub: {run.hub.url}  dashboard: {run.hub.url}/ui")
    say(f"     viewer token:   {run.tokens['viewer']}")
    say(f"     operator token: {run.tokens['operator']}")


def start_fleet(run: DemoRun) -> None:
    """N device processes, each with its own non-IID labelled history; wait for hellos."""
    from cloud_hub.enrollment.ca import CertificateAuthority

    config, hub_dir = run.config, run.run_dir / "hub"
    CertificateAuthority.load_or_create(hub_dir / "ca")  # as enrollment does
    fleet = run.fleet = DemoFleet(
        root=run.run_dir / "fleet",
        trust_root=run.keys.trust_root().to_dict(),
        mqtt_url=run.mqtt_url,
        prefix=run.prefix,
        n=config.agents,
        drifted=config.drifted,
        drift_window=config.drift_window,
        mqtt_protocol=run.mqtt_protocol,
        training_ca=hub_dir / "ca" / "ca.crt",  # R4: devices verify the SuperLink
    )
    fleet.start()
    _import_compression()  # while the device processes start
    drifted = sum(1 for d in fleet.devices if d.drifted)
    run.say(
        f"fleet: {config.agents} devices ({drifted} at site=plant-3), "
        "each with its own non-IID labelled history"
    )
    eventually(lambda: _registered(run.registry, fleet.device_ids), 60, "devices registered")
    run.say("fleet: every device said hello")


def build_pipeline(run: DemoRun) -> Any:
    """The loop's parts: hub-held validation/calibration sets, policy, training engine."""
    from cloud_hub.loop.config import LoopConfig
    from cloud_hub.loop.pipeline import RetrainPipeline
    from cloud_hub.loop.policy import RetrainPolicy

    assert run.hub is not None
    config, hub_dir = run.config, run.run_dir / "hub"
    validation, calibration = _hub_sets()
    loop_config = LoopConfig(
        model_name=MODEL,
        work_dir=hub_dir / "loop",
        num_rounds=config.num_rounds,
        rollout_stages=config.rollout_stages or drifted_site_first(run.fleet),
        rollout_gate_window_s=config.gate_window_s,
        training_engine=config.training_engine,
        policy=RetrainPolicy(
            # PSI of a whole window: non-IID class mixes alone reach ~0.8 here,
            # the plant-3 sensor shift ~7
            drift_threshold=1.5,
            drift_fraction=0.3,
            drift_duration_s=2.0,  # two drift reports in a row (devices report every 1 s)
            accuracy_drop=None,
            # the initial run counts too; the demo's controller stops after its one
            # retraining, so a short cooldown does (20 s delayed the in-process demo)
            cooldown_s=5.0,
            max_runs_per_day=6,
            min_devices=3,
        ),
    )
    cohort_data = None
    if config.training_engine == "deployment":  # the devices train on their own samples
        run.deployment = _deployment_training(run)
    else:  # the simulation shortcut: this process reads the local devices' sample stores
        from simulations.demo.sample_stores import DeviceSampleStores

        cohort_data = DeviceSampleStores.under(run.run_dir / "fleet")
    return RetrainPipeline(
        registry=run.registry,
        keys=run.keys,
        rollouts=run.hub.server.engine,
        cohort_data=cohort_data,
        validation=validation,
        calibration=calibration,
        config=loop_config,
        deployment=run.deployment,
    )


def drifted_site_first(fleet: DemoFleet | None) -> tuple[dict[str, object], ...]:
    """The demo's rollout stages: a canary at the drifted site, the rest of that site, then
    every other device."""
    assert fleet is not None
    canary = next(d.device_id for d in fleet.devices if d.drifted)
    return ({"device_ids": [canary]}, {"labels": {"site": "plant-3"}}, {"percent": 100.0})


def train_initial_model(run: DemoRun, pipeline: Any) -> Any:
    """Flower + SecAgg+ over every device's samples, compression, signed bundle; the run's
    outcome (its rollout created and started)."""
    assert run.fleet is not None
    say = run.say
    say(
        f"train: initial model, Flower + SecAgg+ ({run.config.training_engine} engine) "
        "over every device's sample store"
    )
    first = pipeline.run(CLASS, run.fleet.device_ids, trigger="manual", reason="initial model")
    if first.state != "rolling_out" or first.rollout_id is None:
        raise HubError(f"initial training run {first.run_id}: {first.state} {first.detail}")
    say(
        f"train: v{first.version} accuracy {first.candidate_accuracy:.3f} "
        f"(hub validation) bundle {first.bundle_bytes} B; rollout {first.rollout_id}"
    )
    return first


def roll_out_initial_model(run: DemoRun, first: Any) -> Any:
    """The first model's staged rollout, until every device serves it; its final status."""
    assert run.fleet is not None
    fleet = run.fleet
    rollout = wait_rollout(run, first.rollout_id, 90)
    eventually(
        lambda: all(fleet.serving_version(d) == first.version for d in fleet.devices),
        60,
        f"every device serving v{first.version}",
    )
    run.say(f"fleet: every device serves v{first.version}")
    run.serving_t0 = time.monotonic()
    return rollout


def retrain_on_drift(run: DemoRun, pipeline: Any) -> tuple[Any, str, float]:
    """Drift the plant-3 devices and stream until the hub's retrained model serves there.

    Returns the controller, the retraining's rollout id and the seconds from the drift's
    onset until every drifted device served the retrained model; records
    the phases ``drift_detection``, ``retraining`` and ``rollout_to_drifted``.
    """
    import dataclasses

    from cloud_hub.loop.controller import RetrainController

    # the retraining starts from the champion's weights: fewer rounds than the first model
    pipeline.config = dataclasses.replace(pipeline.config, num_rounds=run.config.retrain_rounds)
    retrained_at: list[float] = []

    def on_outcome(_outcome: Any) -> None:
        # one retraining is the demo's story: the controller stops after its first run (a
        # run over the Deployment Engine outlasts the cooldown, and the drift reports go on
        # until the new model serves)
        retrained_at.append(time.monotonic())
        run.stop.set()

    controller = RetrainController(
        pipeline, [CLASS], interval_s=run.config.controller_interval_s, on_outcome=on_outcome
    )
    run.controller_thread = threading.Thread(
        target=controller.run, args=(run.stop,), name="retrain-controller", daemon=True
    )
    run.controller_thread.start()
    run.say("drift: site=plant-3 sensors shifted; streaming until the hub has retrained")
    drift_t0, drift_wall_t0 = time.monotonic(), time.time()
    # a Deployment Engine run starts SuperNodes and polls: it takes longer than in-process
    wait_s = run.config.max_wait_s * (3 if run.config.training_engine == "deployment" else 1)
    target = stream_until_retrained(run, controller, deadline=drift_t0 + wait_s)
    if target is None:
        raise HubError(f"no retrained model reached the drifted devices in {wait_s:.0f}s")
    version, rollout_id = target
    served_at = time.monotonic()
    run.say(f"fleet: plant-3 devices serve v{version}")
    detected_s = _run_created_at(run.registry, controller.outcomes[-1].run_id) - drift_wall_t0
    run.phases.record("drift_detection", detected_s)
    run.phases.record("retraining", retrained_at[0] - drift_t0 - detected_s)
    run.phases.record("rollout_to_drifted", served_at - retrained_at[0])
    return controller, rollout_id, served_at - drift_t0


def write_summary(
    run: DemoRun,
    *,
    controller: Any,
    first: Any,
    rollouts: dict[str, Any],
    acc: tuple[float, float, float],
    recovered_s: float,
) -> DemoResult:
    """The summary (what an operator reads over the API included), written to the run dir."""
    assert run.hub is not None
    controller.sync_runs()  # the runs' rollouts are done: mark them deployed
    api_runs = _api_get(run.hub.url, run.tokens["viewer"], "/api/v1/training-runs?limit=20")
    summary = demo_summary(
        config=run.config,
        registry=run.registry,
        controller=controller,
        first=first,
        rollouts=rollouts,
        timeline=run.timeline,
        acc=acc,
        wall_s=time.monotonic() - run.started,
        dashboard=f"{run.hub.url}/ui",
        drift_to_rollout_s=recovered_s,
        phases=run.phases.as_dict(),
        delivered=getattr(getattr(run.hub.server.engine, "delivery", None), "shipped", None),
    )
    summary["api_training_runs"] = [
        {k: r.get(k) for k in ("run_id", "state", "trigger", "result_version")}
        for r in api_runs.get("items", [])
    ]
    result = DemoResult(summary, run.timeline)
    write_run(run.run_dir, result, plots=run.config.plots)
    run.say(f"output: {run.run_dir}")
    return result


def _deployment_training(run: DemoRun) -> Any:
    """Training on the devices as SuperNodes (``--training-engine deployment``)."""
    from cloud_hub.config import parse_mqtt_url
    from cloud_hub.loop.device_training import DeploymentTraining
    from shared.topics import TopicScheme

    return DeploymentTraining(
        mqtt=parse_mqtt_url(run.mqtt_url),
        topics=TopicScheme(run.prefix),
        workdir=run.run_dir / "hub" / "flower",
        keys=run.keys,
        ca_dir=run.run_dir / "hub" / "ca",  # the SuperLink's TLS, from the hub CA
    )


def _import_compression() -> None:
    """Import what the first compression imports on first use (torch's ONNX exporter and
    the sympy it pulls in, the quantizer's pre-processing), ~3 s of CPU, while the device
    processes start instead of after the first training. In this thread: a second thread
    importing torch while this one does can deadlock on torch's module locks (seen)."""
    import onnxruntime.quantization.shape_inference  # noqa: F401
    import torch.fx.experimental.symbolic_shapes
    import torch.onnx.utils  # noqa: F401


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


def _api_get(base: str, token: str, path: str) -> dict[str, Any]:
    """What an operator sees: the REST API with a viewer token."""
    req = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        out: dict[str, Any] = json.loads(resp.read())
        return out


def _run_created_at(registry: Any, run_id: str) -> float:
    """When the training run was created (the hub's clock, ``time.time``)."""
    from cloud_hub.registry import admin

    with registry.session() as s:
        return float(admin.get_training_run(s, run_id).created_at)


def _registered(registry: Any, device_ids: list[str]) -> bool:
    from cloud_hub.registry import devices

    with registry.session() as s:
        page = devices.list_devices(s, devices.DeviceQuery(device_class=CLASS, limit=1000))
        return {d.device_id for d in page.items if d.online} >= set(device_ids)


def rollout_finished(run: DemoRun, rollout_id: str) -> Callable[[], bool]:
    """A check: has the rollout left its canary and wave stages (done, or ended otherwise)?"""
    assert run.hub is not None and run.hub.server.engine is not None
    engine = run.hub.server.engine
    return lambda: engine.status(rollout_id).state not in ("canary", "wave", "paused")


def wait_rollout(run: DemoRun, rollout_id: str, timeout: float) -> Any:
    """The rollout's final status once it is done (``HubError`` if it ends otherwise)."""
    assert run.hub is not None
    engine, say = run.hub.server.engine, run.say
    assert engine is not None  # start_hub refuses a hub without one
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

    return eventually(done, timeout, f"rollout {rollout_id} done")
