"""Reading what target devices reported, from the registry, into the pure gate inputs.

The gate reads these telemetry metrics of the *new* model version (``model_version`` of the
telemetry message), aggregated per device over the stage's window:

- ``p95_ms`` — mean of the reported p95 latency;
- ``error_rate`` if reported, else ``error_count / request_count`` (cumulative counters:
  the largest values seen in the window);
- ``feedback_correct`` / ``feedback_count`` — cumulative counts of labelled feedback the
  model got right / received (largest values in the window);
- the mean ``drift_score`` of the drift reports for the new version.

The previous version's :class:`~cloud_hub.rollout.gates.Baseline` comes from the same metrics
of the target's devices still reporting the previous version.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from cloud_hub.registry import Session, device_views
from cloud_hub.registry import reports as report_repo
from cloud_hub.registry.device_views import deployment_events, device_states
from cloud_hub.registry.records import DeviceState, EventRecord, TelemetrySummary
from cloud_hub.rollout.gates import Baseline, DeviceReport, InstallOutcome
from cloud_hub.rollout.targets import FAILURE_EVENTS, InstallView, TargetState
from shared.golden import GOLDEN_CHECK
from shared.messages import EventKind

__all__ = [
    "DeviceState",
    "baseline_for",
    "deployment_events",
    "device_states",
    "gate_reports",
    "install_views",
]

_BATCH = 500


def install_views(
    session: Session,
    deployment_prefix: str,
    devices: dict[str, DeviceState],
    current: dict[str, str | None] | None = None,
) -> dict[str, InstallView]:
    """One :class:`InstallView` per device in ``devices`` for the deployments whose id starts
    with ``deployment_prefix`` (every offer of one rollout).

    A commit under any offer counts; a failure only under the device's ``current`` offer
    (an older offer that the device dropped for a newer one reports ``failed: superseded``).
    """
    kinds = [EventKind.COMMITTED, *sorted(FAILURE_EVENTS)]
    events = deployment_events(session, deployment_prefix, kinds)
    views: dict[str, InstallView] = {}
    for device_id, dev in devices.items():
        latest = (current or {}).get(device_id)
        committed = None
        failure: EventRecord | None = None
        for ev in events.get(device_id, []):
            if ev.kind == EventKind.COMMITTED and committed is None:
                committed = ev.ts
            elif ev.kind in FAILURE_EVENTS and (
                latest is None
                or ev.deployment_id == latest
                # the same offer split by delivery into a delta group / full fallback
                or (ev.deployment_id or "").startswith(f"{latest}-")
            ):
                failure = ev
        views[device_id] = InstallView(
            installed_bundle_id=dev.installed_bundle_id,
            status_ts=dev.status_ts,
            committed_ts=committed,
            failure_kind=failure.kind if failure is not None else None,
            failure_ts=failure.ts if failure is not None else None,
            failure_detail=failure.detail if failure is not None else "",
        )
    return views


@dataclass(frozen=True)
class _Metrics:
    requests: dict[str, int]
    error_rate: dict[str, float]
    p95: dict[str, float]
    correct: dict[str, int]
    labelled: dict[str, int]


def _metrics(session: Session, ids: Sequence[str], version: int, since: float) -> _Metrics:
    def summary(metric: str) -> dict[str, TelemetrySummary]:
        return report_repo.telemetry_summary(
            session, ids, metric, since=since, model_version=version
        )

    rates = {d: s.mean for d, s in summary("error_rate").items()}
    requests = {d: int(s.max) for d, s in summary("request_count").items()}
    for d, s in summary("error_count").items():
        if d not in rates and requests.get(d, 0) > 0:
            rates[d] = min(1.0, s.max / requests[d])
    return _Metrics(
        requests=requests,
        error_rate=rates,
        p95={d: s.mean for d, s in summary("p95_ms").items()},
        correct={d: int(s.max) for d, s in summary("feedback_correct").items()},
        labelled={d: int(s.max) for d, s in summary("feedback_count").items()},
    )


def gate_reports(
    session: Session,
    targets: Sequence[tuple[str, TargetState, float | None]],
    devices: dict[str, DeviceState],
    *,
    version: int,
    since: float,
) -> list[DeviceReport]:
    """Gate inputs for ``(device_id, state, finished_at)`` targets of one stage."""
    ids = [t[0] for t in targets]
    m = _metrics(session, ids, version, since)
    drift: dict[str, list[float]] = {}
    for i in range(0, len(ids), _BATCH):
        page = report_repo.list_drift(
            session,
            device_ids=ids[i : i + _BATCH],
            model_version=version,
            since=since,
            limit=10_000,
        )
        for rec in page.items:
            drift.setdefault(rec.device_id, []).append(rec.drift_score)
    golden = _golden_refusals(session, ids, since)
    out = []
    for device_id, state, finished_at in targets:
        dev = devices.get(device_id)
        online = dev.online if dev is not None else False
        if state is TargetState.SUCCEEDED:
            outcome = InstallOutcome.SUCCEEDED
        elif state is TargetState.FAILED:
            outcome = InstallOutcome.FAILED
        else:
            outcome = InstallOutcome.PENDING
        out.append(
            DeviceReport(
                device_id=device_id,
                install=outcome,
                finished_at=finished_at,
                online=online,
                offline_since=(dev.last_seen if dev is not None else since) if not online else None,
                requests=m.requests.get(device_id, 0),
                error_rate=m.error_rate.get(device_id),
                p95_ms=m.p95.get(device_id),
                drift_score=statistics.fmean(drift[device_id]) if device_id in drift else None,
                feedback_correct=m.correct.get(device_id, 0),
                feedback_total=m.labelled.get(device_id, 0),
                golden_refused=device_id in golden,
            )
        )
    return out


def _golden_refusals(session: Session, ids: Sequence[str], since: float) -> set[str]:
    """Devices whose golden-batch check refused an install since ``since``."""
    events = device_views.events_since(session, ids, EventKind.HEALTH_FAILED, since=since)
    return {e.device_id for e in events if (e.data or {}).get("check") == GOLDEN_CHECK}


def baseline_for(
    session: Session, device_ids: Sequence[str], *, version: int | None, since: float
) -> Baseline:
    """The previous version's p95 and feedback accuracy over the target's devices."""
    if version is None or not device_ids:
        return Baseline()
    m = _metrics(session, device_ids, version, since)
    p95 = statistics.fmean(m.p95.values()) if m.p95 else None
    return Baseline(
        p95_ms=p95,
        feedback_correct=sum(m.correct.values()),
        feedback_total=sum(m.labelled.values()),
    )
