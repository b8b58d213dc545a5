"""The end of a fleet run: collect what every device and the hub saw, judge the invariants,
and build the summary written to ``results.json``."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from cloud_hub.registry.tables import DriftRow, EventRow
from edge_agent.ota import OnnxSmokeCheck, SlotStore
from simulations.fleet.device import Ledger
from simulations.fleet.invariants import (
    DeviceOutcome,
    FaultCounts,
    Invariant,
    check_drift,
    check_faults,
    check_models,
    check_reports,
    check_rollouts,
)

if TYPE_CHECKING:
    from simulations.fleet.runner import FleetRun

__all__ = ["collect_devices", "expected_versions", "settle_ingest", "summarize"]


def expected_versions(run: FleetRun) -> dict[str, int]:
    expected = dict.fromkeys(run.sc.device_classes, 1)
    for plan in run.sc.rollouts:
        if plan.expect == "done":
            for cls in run.classes_of(plan):
                expected[cls] = plan.version
    return expected


def collect_devices(run: FleetRun) -> list[DeviceOutcome]:
    """Read every device's state directory, ledger and counters, and the registry."""
    expected = expected_versions(run)
    with run.hub.registry.session() as s:
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
    sharded = {m.device_id: sh for sh in run.shards for m in sh.members}
    shard_stats = {sh.root.name: sh.stats() for sh in run.shards}
    result = []
    for m in run.members:
        if m.device_id in sharded:
            sh = sharded[m.device_id]
            st = shard_stats[sh.root.name].get(m.device_id, {})
            state, entries = sh.state_dir(m.device_id), Ledger.read(sh.ledger(m.device_id))
            kills = len(st.get("kills", []))
            received, predictions = st.get("bytes_received", 0), st.get("predictions", 0)
        elif m.link == "process":
            assert run.procs is not None
            dp = next(p for p in run.procs.devices if p.member.device_id == m.device_id)
            state, entries, kills = dp.state_dir, Ledger.read(dp.ledger), dp.killed
            received = predictions = 0
        else:
            local = run.devices[m.device_id]
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


def settle_ingest(ingest: Any, quiet_s: float = 2.0, timeout: float = 60.0) -> None:
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


def summarize(
    run: FleetRun, devices: list[DeviceOutcome], error: str
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
            planned=len(sc.device_classes) + sum(len(run.classes_of(p)) for p in sc.rollouts),
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
