"""What the registry knows of devices' condition now: online flag and recent telemetry readings.

The raw facts a training-eligibility policy judges (:mod:`cloud_hub.fl.eligibility`): per
device its online flag and, per metric asked for, the last reading of every minute since
``since`` (``(ts, value)``, oldest first). Deriving rates or maxima is the caller's job.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from cloud_hub.registry.tables import Device, TelemetryMinute

__all__ = ["DeviceConditionFacts", "device_condition_facts"]


@dataclass(frozen=True)
class DeviceConditionFacts:
    device_id: str
    online: bool
    readings: dict[str, tuple[tuple[float, float], ...]] = field(default_factory=dict)

    def newest(self, metric: str) -> float | None:
        points = self.readings.get(metric, ())
        return points[-1][1] if points else None

    @property
    def newest_ts(self) -> float | None:
        stamps = [p[-1][0] for p in self.readings.values() if p]
        return max(stamps) if stamps else None


def device_condition_facts(
    session: Session, device_ids: Sequence[str], metrics: Sequence[str], *, since: float
) -> dict[str, DeviceConditionFacts]:
    """Facts of the known devices among ``device_ids`` (unknown ids are left out)."""
    ids = list(dict.fromkeys(device_ids))
    online: dict[str, bool] = {}
    readings: dict[str, dict[str, list[tuple[float, float]]]] = {}
    tm = TelemetryMinute
    for i in range(0, len(ids), 500):
        chunk = ids[i : i + 500]
        for device_id, is_online in session.execute(
            select(Device.device_id, Device.online).where(Device.device_id.in_(chunk))
        ):
            online[device_id] = bool(is_online)
        rows = session.execute(
            select(tm.device_id, tm.metric, tm.last_ts, tm.last)
            .where(
                tm.device_id.in_(chunk), tm.metric.in_(list(metrics)), tm.minute >= int(since // 60)
            )
            .order_by(tm.last_ts)
        )
        for device_id, metric, ts, value in rows:
            if ts >= since:
                readings.setdefault(device_id, {}).setdefault(metric, []).append((ts, value))
    return {
        device_id: DeviceConditionFacts(
            device_id,
            is_online,
            {m: tuple(p) for m, p in readings.get(device_id, {}).items()},
        )
        for device_id, is_online in online.items()
    }
