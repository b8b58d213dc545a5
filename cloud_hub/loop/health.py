"""What the registry says about one device class, as the policy's ``ClassHealth``.

- online devices of the class;
- per device, since when its drift reports *for the model version it runs* have stayed above
  the policy's threshold (the newest unbroken run of such reports), on the hub's clock: the
  reports are ordered and timed by when the hub received them, so a device cannot claim it
  has drifted for an hour with one report stamped an hour ago (R6);
- start times of earlier training runs of the class (cooldown / budget).
"""

from __future__ import annotations

from cloud_hub.loop.policy import ClassHealth, RetrainPolicy
from cloud_hub.registry import Session, admin, reports
from cloud_hub.registry import devices as device_repo

__all__ = ["class_health", "class_runs"]

_MAX_DEVICES = 1000
_REPORTS_PER_DEVICE = 50


def class_runs(session: Session, model_name: str, device_class: str) -> list[float]:
    """Creation times of the training runs recorded for this model and class."""
    page = admin.list_training_runs(session, model_name=model_name, limit=1000)
    return [r.created_at for r in page.items if r.config.get("device_class") == device_class]


def class_health(
    session: Session,
    *,
    device_class: str,
    model_name: str,
    policy: RetrainPolicy,
    manual: bool = False,
) -> ClassHealth:
    online = device_repo.list_devices(
        session,
        device_repo.DeviceQuery(device_class=device_class, online=True, limit=_MAX_DEVICES),
    ).items
    drifted_since: dict[str, float] = {}
    for device in online:
        if device.installed_version is None:
            continue
        page = reports.list_drift(
            session,
            device_id=device.device_id,
            model_version=device.installed_version,
            limit=_REPORTS_PER_DEVICE,
            by_receipt=True,
        )
        since: float | None = None
        for report in page.items:  # newest first
            if report.model_name != model_name or report.drift_score <= policy.drift_threshold:
                break
            since = report.received_at
        if since is not None:
            drifted_since[device.device_id] = since
    return ClassHealth(
        device_class=device_class,
        online_devices=[d.device_id for d in online],
        drifted_since=drifted_since,
        previous_runs=class_runs(session, model_name, device_class),
        manual_request=manual,
    )
