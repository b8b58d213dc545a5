"""Run one fleet scenario end to end and judge it.

Phases: start the broker and the hub; start the fleet (in-process agents, some behind a
flaky link, plus agent processes); provision v1 everywhere with a one-stage rollout; run the
scenario's rollouts in order — during the one marked ``faults`` the links flap, chosen agents
are killed mid-transfer (in-process: stopped abruptly and replaced by a fresh ``EdgeAgent``
on the same state directory; processes: SIGKILL) and the broker restarts once a share of
the fleet runs the new version; all along, every agent serves synthetic sensor inputs
(one site's drifted). Then stop everything, read each device's state directory and the
registry, check the invariants and write the results.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud_hub.registry.tables import Device, EventRow
from edge_agent.runtime.capabilities import detect_capabilities
from simulations.fleet.device import LedgerAgent, SimDevice
from simulations.fleet.hub import SimHub
from simulations.fleet.invariants import (
    Invariant,
    RolloutOutcome,
)
from simulations.fleet.links import FlakyLink
from simulations.fleet.outcome import collect_devices, settle_ingest, summarize
from simulations.fleet.population import Member, agent_config, plan_population
from simulations.fleet.processes import ProcessSupervisor
from simulations.fleet.report import TimelinePoint, write_results
from simulations.fleet.scenario import FleetScenario, RolloutPlanSpec
from simulations.fleet.shard import ShardProcess
from simulations.fleet.training import TrainedModel, TrainingJob

__all__ = ["FleetResult", "run_scenario"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FleetResult:
    ok: bool
    summary: dict[str, Any]
    invariants: tuple[Invariant, ...]
    out_dir: Path
    files: dict[str, Path] = field(default_factory=dict)


@dataclass
class _InProc:
    member: Member
    sim: SimDevice
    killed_at: list[tuple[float, str]] = field(default_factory=list)


class FleetRun:
    """The state of one run: the hub, the fleet, the faults' bookkeeping, the timeline."""

    def __init__(self, scenario: FleetScenario, out: Path) -> None:
        self.sc = scenario
        self.out = out
        base = Path("/dev/shm") if scenario.state_on_tmpfs and Path("/dev/shm").is_dir() else None
        self.work = Path(tempfile.mkdtemp(prefix=f"fleetsim-{scenario.name}-", dir=base))
        self.t0 = time.time()
        self.members = plan_population(scenario)
        self.hub = SimHub(
            self.work / "hub",
            chunk_kb=scenario.bundle.chunk_kb,
            broker_persistence=scenario.faults.broker_persistence,
        )
        self.link: FlakyLink | None = None
        self.devices: dict[str, _InProc] = {}
        self.procs: ProcessSupervisor | None = None
        self.shards: list[ShardProcess] = []
        self.training: TrainingJob | None = None
        self.trained: TrainedModel | None = None
        self.arm_file = self.work / "faults.armed"
        self.armed = False
        self.fault_version: int | None = None
        self.markers: list[tuple[float, str]] = []
        self.timeline: list[TimelinePoint] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.phases: dict[str, float] = {}
        self.outcomes: list[RolloutOutcome] = []

    # ------------------------------------------------------------------ fleet
    def _on_chunk(self, device_id: str) -> Any:
        def hook(agent: LedgerAgent, n: int) -> None:
            d = self.devices.get(device_id)
            if d is None or not (self.armed and d.member.kill and not d.killed_at):
                return
            if n < self.sc.faults.kill_at_chunk:
                return
            dep = agent.updater.deployment
            d.killed_at.append((time.time(), dep.phase.value if dep else "idle"))
            threading.Thread(target=self._crash_restart, args=(d,), daemon=True).start()

        return hook

    def _crash_restart(self, d: _InProc) -> None:
        self.markers.append((time.time() - self.t0, "kill"))
        d.sim.crash()
        time.sleep(self.sc.faults.restart_after_kill_s)
        d.sim.restart()

    def start_fleet(self) -> None:
        trust = self.work / "trust_root.json"
        trust.write_text(json.dumps(self.hub.keys.trust_root().to_dict()), encoding="utf-8")
        port = self.hub.broker.port
        if any(m.link == "flaky" for m in self.members):
            self.link = FlakyLink(
                port,
                mean_up_s=self.sc.faults.flaky_mean_up_s,
                delay_s=self.sc.faults.link_delay_ms / 1000.0,
                seed=self.sc.seed,
            )
            self.link.start()
            self.link.set_cutting(False)
        threaded = [m for m in self.members if m.link != "process"]
        per = self.sc.agents_per_process
        local, rest = threaded[:per], threaded[per:]
        for i in range(0, len(rest), per):  # started first: they load slower
            shard = ShardProcess(self.work / f"shard-{len(self.shards)}", rest[i : i + per])
            shard.start(
                urls={
                    m.device_id: f"mqtt://127.0.0.1:{self.link.port}"
                    if m.link == "flaky" and self.link
                    else self.hub.broker.url
                    for m in shard.members
                },
                prefix=self.hub.prefix,
                trust_root=trust,
                settings={
                    "arm_file": str(self.arm_file),
                    "kill_at_chunk": self.sc.faults.kill_at_chunk,
                    "restart_after_s": self.sc.faults.restart_after_kill_s,
                    "drift_window": self.sc.drift.window,
                    "telemetry_interval_s": self.sc.telemetry_interval_s,
                    "batch": self.sc.drift.batch,
                    "interval_s": self.sc.drift.interval_s,
                    "seed": self.sc.seed + 1 + len(self.shards),
                },
            )
            self.shards.append(shard)
        caps = detect_capabilities()
        for m in local:
            config = agent_config(
                m,
                state_dir=self.work / "devices" / m.device_id,
                trust_root=trust,
                port=self.link.port if m.link == "flaky" and self.link else port,
                prefix=self.hub.prefix,
            )
            sim = SimDevice(
                config,
                drift_shift=m.drift_shift,
                drift_window=self.sc.drift.window,
                telemetry_interval_s=self.sc.telemetry_interval_s,
                capabilities=caps,
                on_chunk=self._on_chunk(m.device_id),
                seed=self.sc.seed * 100_003 + len(self.devices),
            )
            self.devices[m.device_id] = _InProc(m, sim)
            sim.start()
            time.sleep(0.005)  # no connection storm at t=0
        proc_members = [m for m in self.members if m.link == "process"]
        if proc_members:
            self.procs = ProcessSupervisor(
                proc_members,
                self.work / "processes",
                trust_root=trust,
                mqtt_url=self.hub.broker.url,
                prefix=self.hub.prefix,
                arm_file=self.arm_file,
                kill_at_chunk=self.sc.faults.kill_at_chunk,
                restart_after_s=self.sc.faults.restart_after_kill_s,
                drift_window=self.sc.drift.window,
                batch=self.sc.drift.batch,
                interval_s=self.sc.drift.interval_s,
                telemetry_interval_s=self.sc.telemetry_interval_s,
            )
            self.procs.start()

    def wait_registered(self, timeout: float) -> None:
        ids = {m.device_id for m in self.members}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.hub.registry.session() as s:
                known = set(
                    s.scalars(select(Device.device_id).where(Device.device_class.is_not(None)))
                )
            if ids <= known:
                return
            time.sleep(0.5)
        raise TimeoutError(
            f"{len(ids - known)} devices never registered: {sorted(ids - known)[:5]}"
        )

    # ------------------------------------------------------------------ background work
    def _traffic(self) -> None:
        interval, batch = self.sc.drift.interval_s, self.sc.drift.batch
        while not self._stop.wait(interval):
            for d in list(self.devices.values()):
                d.sim.infer(batch)

    def _sample(self) -> None:
        restart_at = self.sc.faults.broker_restart_at
        restarted = False
        while not self._stop.wait(0.5):
            try:
                with self.hub.registry.session() as s:
                    rows = s.execute(
                        select(Device.installed_version, func.count()).group_by(
                            Device.installed_version
                        )
                    ).all()
                    online = s.scalar(select(func.count()).where(Device.online.is_(True))) or 0
            except Exception:  # the registry is busy; sample again
                continue
            point: TimelinePoint = {"t": round(time.time() - self.t0, 2), "online": int(online)}
            for version, n in rows:
                if version is not None:
                    point[f"v{version}"] = int(n)
            self.timeline.append(point)
            if (
                self.armed
                and restart_at is not None
                and not restarted
                and self.fault_version is not None
                and point.get(f"v{self.fault_version}", 0) >= restart_at * len(self.members)
            ):
                restarted = True
                self.markers.append((time.time() - self.t0, "broker"))
                threading.Thread(
                    target=self.hub.restart_broker,
                    args=(self.sc.faults.broker_down_s,),
                    daemon=True,
                ).start()

    def _background(self) -> None:
        for target in (self._traffic, self._sample):
            t = threading.Thread(target=target, name=f"sim{target.__name__}", daemon=True)
            t.start()
            self._threads.append(t)

    # ------------------------------------------------------------------ rollouts
    def classes_of(self, plan: RolloutPlanSpec | None) -> list[str]:
        return sorted(plan.classes if plan and plan.classes else self.sc.device_classes)

    def run_rollouts(self, deadline: float) -> None:
        provision = (1, ({"percent": 100.0},), 0.5, False, "done", None)  # v1 everywhere
        steps: list[tuple[int, Any, float, bool, str, RolloutPlanSpec | None]] = [provision]
        steps += [
            (p.version, p.stages, p.gate_window_s, p.faults, p.expect, p) for p in self.sc.rollouts
        ]
        for version, stages, window, faults, expect, plan in steps:
            if plan is not None and version == self.trained_version:
                self.build_bundles(plan, trained=self.finish_training(deadline))
                for later in self.sc.rollouts:  # versions are built in increasing order
                    if later.version > version:
                        self.build_bundles(later)
            started = time.time()
            if faults:
                self._arm(version)
            ids = {
                cls: self.hub.start_rollout(
                    cls, version, stages=stages, gate_window_s=window, seed=self.sc.seed + version
                )
                for cls in self.classes_of(plan)
            }
            statuses = self.hub.wait_rollouts(
                list(ids.values()), max(5.0, deadline - time.monotonic())
            )
            if faults:
                self._disarm()
            self.phases[f"v{version}"] = round(time.time() - started, 2)
            for cls, rid in ids.items():
                st = statuses[rid]
                with self.hub.registry.session() as s:
                    received = frozenset(
                        s.scalars(
                            select(EventRow.device_id).where(
                                EventRow.deployment_id.startswith(f"{rid}.d", autoescape=True)
                            )
                        )
                    )
                dur = None
                if st.started_at is not None and st.finished_at is not None:
                    dur = round(st.finished_at - st.started_at, 2)
                self.outcomes.append(
                    RolloutOutcome(
                        device_class=cls,
                        version=version,
                        rollout_id=rid,
                        expected=expect,
                        state=st.state,
                        reason=st.reason,
                        duration_s=dur,
                        stage_states=tuple(x.state for x in st.stages),
                        stage_devices=tuple(tuple(x.devices) for x in st.stages),
                        received=received,
                    )
                )

    # ------------------------------------------------------------------ training plane
    @property
    def trained_version(self) -> int | None:
        if not self.sc.training.enabled:
            return None
        return next(r.version for r in self.sc.rollouts if r.healthy)

    def start_training(self) -> None:
        """A federated run over devices outside the drifting site, in the background."""
        t = self.sc.training
        if not t.enabled:
            return
        import random

        pool = [m.device_id for m in self.members if m.site != self.sc.drift.site]
        cohort = sorted(random.Random(self.sc.seed).sample(pool, min(t.clients, len(pool))))
        self.training = TrainingJob(
            cohort, rounds=t.rounds, samples=t.samples, secagg=t.secagg, seed=self.sc.seed
        )
        self.training.start()

    def finish_training(self, deadline: float) -> TrainedModel:
        assert self.training is not None
        started = time.time()
        model = self.training.result(max(5.0, deadline - time.monotonic()))
        self.phases["training_wait"] = round(time.time() - started, 2)
        self.trained = model
        return model

    def build_bundles(self, plan: RolloutPlanSpec, trained: TrainedModel | None = None) -> None:
        for cls in self.classes_of(plan):
            self.hub.build_bundle(
                cls,
                plan.version,
                healthy=plan.healthy,
                padding_kb=self.sc.bundle.padding_kb,
                trained=trained,
            )

    def _arm(self, version: int) -> None:
        self.fault_version = version
        self.armed = True
        self.arm_file.write_text("armed\n", encoding="utf-8")
        if self.link is not None:
            self.link.set_cutting(True)

    def _disarm(self) -> None:
        self.armed = False
        self.arm_file.unlink(missing_ok=True)
        if self.link is not None:
            self.link.set_cutting(False)

    # ------------------------------------------------------------------ end
    def stop_fleet(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=10)
        for shard in self.shards:  # they stop their agents while we stop ours
            shard.terminate()
        for d in self.devices.values():
            d.sim.agent.stop(drain_s=10.0)
            d.sim.stack.stop()
        if self.procs is not None:
            self.procs.stop()
        for shard in self.shards:
            shard.wait(timeout=180.0)
        if self.hub.server is not None and self.hub.server.ingest is not None:
            settle_ingest(self.hub.server.ingest)

    def cleanup(self, *, keep: bool = False) -> None:
        if self.link is not None:
            self.link.stop()
        with contextlib.suppress(Exception):
            self.hub.stop()
        if keep:
            log.warning("kept the work directory %s", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def run_scenario(scenario: FleetScenario, out_dir: Path, *, keep_work: bool = False) -> FleetResult:
    """Run ``scenario``; write results into ``out_dir``; never leaves a process behind.
    ``keep_work`` keeps the state directories, hub database and broker (debugging)."""
    run = FleetRun(scenario, out_dir)
    deadline = time.monotonic() + scenario.timeout_s
    error = ""
    try:
        run.hub.start()
        run.phases["hub_up"] = round(time.time() - run.t0, 2)
        run.start_fleet()  # agents come up (processes import) while the hub signs bundles
        run.start_training()
        for cls in scenario.device_classes:
            run.hub.build_bundle(cls, 1, healthy=True, padding_kb=scenario.bundle.padding_kb)
        trained_v = run.trained_version
        for plan in scenario.rollouts:  # the trained version and later wait for the training
            if trained_v is None or plan.version < trained_v:
                run.build_bundles(plan)
        run.phases["bundles"] = round(time.time() - run.t0, 2)
        run.wait_registered(min(120.0, scenario.timeout_s))
        run.phases["fleet_up"] = round(time.time() - run.t0, 2)
        run._background()
        run.run_rollouts(deadline)
    except Exception as exc:  # reported as a failed invariant, after a clean shutdown
        log.exception("scenario %s failed", scenario.name)
        error = f"{type(exc).__name__}: {exc}"
    try:
        run.stop_fleet()
        devices = collect_devices(run)
        summary, invariants = summarize(run, devices, error)
        files = write_results(out_dir, summary, devices, run.timeline, run.markers)
    finally:
        run.cleanup(keep=keep_work)
    return FleetResult(
        ok=all(i.ok for i in invariants),
        summary=summary,
        invariants=tuple(invariants),
        out_dir=out_dir,
        files=files,
    )
