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
import sqlite3
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from cloud_hub.registry.tables import Device, DriftRow, EventRow
from edge_agent.ota import OnnxSmokeCheck, SlotStore
from edge_agent.runtime.capabilities import detect_capabilities
from simulations.fleet.device import Ledger, LedgerAgent, SimDevice
from simulations.fleet.hub import SimHub
from simulations.fleet.invariants import (
    DeviceOutcome,
    FaultCounts,
    Invariant,
    RolloutOutcome,
    check_drift,
    check_faults,
    check_models,
    check_reports,
    check_rollouts,
)
from simulations.fleet.links import FlakyLink
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


class _Run:
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
    def _classes(self, plan: RolloutPlanSpec | None) -> list[str]:
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
                for cls in self._classes(plan)
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
        for cls in self._classes(plan):
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
            _settle(self.hub.server.ingest)

    def expected_versions(self) -> dict[str, int]:
        expected = dict.fromkeys(self.sc.device_classes, 1)
        for plan in self.sc.rollouts:
            if plan.expect == "done":
                for cls in self._classes(plan):
                    expected[cls] = plan.version
        return expected

    def outcomes_of_devices(self) -> list[DeviceOutcome]:
        expected = self.expected_versions()
        with self.hub.registry.session() as s:
            events = {(d, e) for d, e in s.execute(select(EventRow.device_id, EventRow.event_id))}
            drift_rows = s.execute(
                select(DriftRow.device_id, DriftRow.report_id, DriftRow.drifted)
            ).all()
        drift_ids = {(d, r) for d, r, _ in drift_rows}
        windows: dict[str, list[int]] = {}
        for d, _r, drifted in drift_rows:
            w = windows.setdefault(d, [0, 0])
            w[0] += 1
            w[1] += int(bool(drifted))
        sharded = {m.device_id: sh for sh in self.shards for m in sh.members}
        shard_stats = {sh.root.name: sh.stats() for sh in self.shards}
        result = []
        for m in self.members:
            if m.device_id in sharded:
                sh = sharded[m.device_id]
                st = shard_stats[sh.root.name].get(m.device_id, {})
                state, entries = sh.state_dir(m.device_id), Ledger.read(sh.ledger(m.device_id))
                kills = len(st.get("kills", []))
                received, predictions = st.get("bytes_received", 0), st.get("predictions", 0)
            elif m.link == "process":
                assert self.procs is not None
                dp = next(p for p in self.procs.devices if p.member.device_id == m.device_id)
                state, entries, kills = dp.state_dir, Ledger.read(dp.ledger), dp.killed
                received = predictions = 0
            else:
                local = self.devices[m.device_id]
                state, entries = local.sim.config.state_dir, local.sim.ledger.entries()
                kills = len(local.killed_at)
                received, predictions = local.sim.bytes_received, local.sim.predictions
            missing = tuple(
                f"{e.id[:12]}({e.kind}@{_t(e)})"
                for e in entries
                if (m.device_id, e.id) not in (events if e.channel == "events" else drift_ids)
            )
            smoke_ok, detail, version = _smoke(state)
            w = windows.get(m.device_id, [0, 0])
            result.append(
                DeviceOutcome(
                    device_id=m.device_id,
                    device_class=m.device_class,
                    site=m.site,
                    link=m.link,
                    expected_version=expected[m.device_class],
                    active_version=version,
                    smoke_ok=smoke_ok,
                    smoke_detail=detail,
                    reports_emitted=len(entries),
                    reports_missing=missing,
                    outbox_left=_outbox_left(state),
                    drift_windows=w[0],
                    drifted_windows=w[1],
                    bytes_received=received,
                    kills=kills,
                    predictions=predictions,
                )
            )
        return result

    def cleanup(self, *, keep: bool = False) -> None:
        if self.link is not None:
            self.link.stop()
        with contextlib.suppress(Exception):
            self.hub.stop()
        if keep:
            log.warning("kept the work directory %s", self.work)
        else:
            shutil.rmtree(self.work, ignore_errors=True)


def _settle(ingest: Any, quiet_s: float = 2.0, timeout: float = 60.0) -> None:
    """Wait until the ingest has heard nothing new for ``quiet_s`` and wrote what it holds
    (messages the broker acknowledged to the agents may still be on their way to the hub)."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        received = ingest.stats().received
        if received != last:
            last, since = received, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.2)
    ingest.wait_idle(max(1.0, deadline - time.monotonic()))


def _t(entry: Any) -> str:
    return str(entry.deployment_id or entry.channel)


def _smoke(state_dir: Path) -> tuple[bool, str, int | None]:
    """Does the device's active slot load and answer one inference?"""
    slot = SlotStore(state_dir).active()
    if slot is None:
        return False, "no active slot", None
    try:
        OnnxSmokeCheck()(slot)
    except Exception as exc:
        return False, f"{type(exc).__name__}: {exc}", slot.meta.version
    return True, "ok", slot.meta.version


def _outbox_left(state_dir: Path) -> int:
    path = state_dir / "outbox.sqlite3"
    if not path.exists():
        return 0
    with contextlib.closing(sqlite3.connect(str(path))) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def run_scenario(scenario: FleetScenario, out_dir: Path, *, keep_work: bool = False) -> FleetResult:
    """Run ``scenario``; write results into ``out_dir``; never leaves a process behind.
    ``keep_work`` keeps the state directories, hub database and broker (debugging)."""
    run = _Run(scenario, out_dir)
    deadline = time.monotonic() + scenario.timeout_s
    error = ""
    try:
        run.hub.start()
        run.start_training()
        for cls in scenario.device_classes:
            run.hub.build_bundle(cls, 1, healthy=True, padding_kb=scenario.bundle.padding_kb)
        trained_v = run.trained_version
        for plan in scenario.rollouts:  # the trained version and later wait for the training
            if trained_v is None or plan.version < trained_v:
                run.build_bundles(plan)
        run.phases["setup"] = round(time.time() - run.t0, 2)
        run.start_fleet()
        run.wait_registered(min(120.0, scenario.timeout_s))
        run.phases["fleet_up"] = round(time.time() - run.t0, 2)
        run._background()
        run.run_rollouts(deadline)
    except Exception as exc:  # reported as a failed invariant, after a clean shutdown
        log.exception("scenario %s failed", scenario.name)
        error = f"{type(exc).__name__}: {exc}"
    try:
        run.stop_fleet()
        devices = run.outcomes_of_devices()
        summary, invariants = _judge(run, devices, error)
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


def _judge(
    run: _Run, devices: list[DeviceOutcome], error: str
) -> tuple[dict[str, Any], list[Invariant]]:
    sc = run.sc
    proc_kills = sum(p.killed for p in run.procs.devices) if run.procs else 0
    thread_kills = [
        {"device": d.member.device_id, "t": round(t - run.t0, 2), "phase": ph}
        for d in run.devices.values()
        for t, ph in d.killed_at
    ] + [
        {"device": device_id, "t": round(t - run.t0, 2), "phase": ph, "shard": sh.root.name}
        for sh in run.shards
        for device_id, st in sh.stats().items()
        for t, ph in st.get("kills", [])
    ]
    run.markers.extend((k["t"], "kill") for k in thread_kills if "shard" in k)
    run.markers.extend(
        (round(t - run.t0, 2), "sigkill")
        for p in (run.procs.devices if run.procs else [])
        for t, rc in p.exits
        if rc == -9
    )
    link_stats = run.link.stats() if run.link is not None else None
    faulted = any(p.faults for p in sc.rollouts)
    counts = FaultCounts(
        kills_wanted=sum(m.kill for m in run.members) if faulted else 0,
        kills_done=len(thread_kills) + proc_kills,
        broker_restarts_wanted=int(faulted and sc.faults.broker_restart_at is not None),
        broker_restarts_done=len(run.hub.broker_restarts),
        flaky_agents=sum(m.link == "flaky" for m in run.members) if faulted else 0,
        link_cuts=link_stats.cuts if link_stats else 0,
    )
    invariants = [
        check_models(devices),
        check_reports(devices),
        check_rollouts(
            run.outcomes,
            planned=len(sc.device_classes) + sum(len(run._classes(p)) for p in sc.rollouts),
        ),
        check_faults(counts),
    ]
    drift = check_drift(devices, sc.drift.site)
    if drift is not None:
        invariants.append(drift)
    if error:
        invariants.append(Invariant("the scenario ran to its end", False, error))
    shipped = run.hub.delivery.shipped() if run.hub.delivery else {}
    summary: dict[str, Any] = {
        "scenario": sc.name,
        "ok": all(i.ok for i in invariants),
        "agents": {
            "total": len(run.members),
            "in_process": sc.agents,
            "processes": sc.subprocess_agents,
            "shards": [len(sh.members) for sh in run.shards],
            "flaky": sum(m.link == "flaky" for m in run.members),
            "by_class": {
                c: sum(m.device_class == c for m in run.members) for c in sc.device_classes
            },
        },
        "wall_s": round(time.time() - run.t0, 2),
        "phases_s": run.phases,
        "rollouts": [o.to_dict() for o in run.outcomes],
        "bytes": {
            **shipped,
            "received_by_in_process_agents": sum(d.bytes_received for d in devices),
            "flaky_link_down_bytes": link_stats.bytes_down if link_stats else 0,
        },
        "faults": {
            "in_process_kills": thread_kills,
            "process_sigkills": proc_kills,
            "broker_restarts": [round(t - run.t0, 2) for t in run.hub.broker_restarts],
            "link_cuts": counts.link_cuts,
        },
        "reports": {
            "emitted": sum(d.reports_emitted for d in devices),
            "missing": sum(len(d.reports_missing) for d in devices),
            "drift_windows": sum(d.drift_windows for d in devices),
        },
        "invariants": [i.to_dict() for i in invariants],
    }
    if run.trained is not None:
        summary["training"] = {
            "version": run.trained_version,
            **run.trained.lineage,
            **run.trained.metrics,
        }
    if run.hub.server is not None and run.hub.server.ingest is not None:
        st = run.hub.server.ingest.stats()
        summary["ingest"] = {
            "received": st.received,
            "written": st.written,
            "duplicates": st.duplicates,
            "dropped": st.dropped,
            "rejected": st.rejected,
            "lag_p95_s": round(st.lag_p95_s, 3),
        }
    return summary, invariants
