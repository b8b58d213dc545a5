"""``/api/v1/devices`` and ``/api/v1/device-classes``."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import Field, StringConstraints

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.params import (
    ID_PATTERN,
    LABEL_FILTER_PATTERN,
    MAX_OFFSET,
    TEXT_PATTERN,
    StrictBody,
    parse_label_filters,
)
from cloud_hub.registry import (
    DeviceClassRecord,
    DeviceRecord,
    DriftRecord,
    EventRecord,
    Page,
    TargetRecord,
    TelemetryAggregate,
    catalog,
    devices,
    reports,
    rollouts,
)
from shared.golden import GOLDEN_CHECK
from shared.messages import EventKind

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["devices"])
DeviceId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
LabelFilter = Annotated[str, StringConstraints(pattern=LABEL_FILTER_PATTERN)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Admin = Annotated[Principal, Depends(require("admin"))]


@dataclass(frozen=True)
class DeviceDetail:
    device: DeviceRecord
    rollouts: list[TargetRecord]
    recent_events: list[EventRecord]
    recent_drift: list[DriftRecord]
    # installs this device's golden-batch check refused (measured figures in ``data``)
    golden_refusals: list[EventRecord] = field(default_factory=list)


class DeviceClassBody(StrictBody):
    description: str = Field(default="", max_length=500, pattern=TEXT_PATTERN)
    profile: dict[str, Any] = Field(default_factory=dict, max_length=256)


class LabelsBody(StrictBody):
    labels: dict[
        Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")],
        Annotated[str, Field(max_length=128, pattern=TEXT_PATTERN)],
    ] = Field(max_length=64)
    replace: bool = False


def _ctx(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.context


@router.get("/devices", response_model=Page[DeviceRecord], summary="List devices")
async def list_devices(
    request: Request,
    _: Viewer,
    device_class: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    label: Annotated[list[LabelFilter], Query(max_length=32)] = [],  # noqa: B006
    online: bool | None = None,
    model: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    q: Annotated[str | None, Query(max_length=128, pattern=TEXT_PATTERN)] = None,
    sort: Literal[
        "device_id", "last_seen", "device_class", "installed_version", "first_seen"
    ] = "device_id",
    order: Literal["asc", "desc"] = "asc",
    limit: Annotated[int, Query(ge=1, le=devices.MAX_PAGE)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[DeviceRecord]:
    """Server-side filtered, sorted and paginated; ``label=site=plant-3`` may repeat (AND)."""
    query = devices.DeviceQuery(
        device_class=device_class,
        labels=parse_label_filters(label),
        online=online,
        installed_model=model,
        installed_version=version,
        search=q,
        sort=sort,
        descending=order == "desc",
        limit=limit,
        offset=offset,
    )
    ctx = _ctx(request)

    def run() -> Page[DeviceRecord]:
        with ctx.registry.session() as s:
            return devices.list_devices(s, query)

    return await run_in_threadpool(run)


@router.get("/devices/{device_id}", response_model=DeviceDetail, summary="One device")
def get_device(request: Request, device_id: DeviceId, _: Viewer) -> DeviceDetail:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        return DeviceDetail(
            device=devices.get_device(s, device_id),
            rollouts=rollouts.targets_of_device(s, device_id)[:20],
            recent_events=reports.list_events(s, device_id=device_id, limit=20).items,
            recent_drift=reports.list_drift(s, device_id=device_id, limit=20).items,
            golden_refusals=[
                e
                for e in reports.list_events(
                    s, device_id=device_id, kinds=[EventKind.HEALTH_FAILED], limit=200
                ).items
                if e.data.get("check") == GOLDEN_CHECK
            ][:20],
        )


@router.get(
    "/devices/{device_id}/telemetry",
    response_model=list[TelemetryAggregate],
    summary="Per-minute telemetry aggregates of a device",
)
def device_telemetry(
    request: Request,
    device_id: DeviceId,
    _: Viewer,
    metric: Annotated[str | None, Query(max_length=64, pattern=TEXT_PATTERN)] = None,
    since: Annotated[float | None, Query(allow_inf_nan=False, ge=0, le=1e11)] = None,
    until: Annotated[float | None, Query(allow_inf_nan=False, ge=0, le=1e11)] = None,
    limit: Annotated[int, Query(ge=1, le=20_000)] = 5000,
) -> list[TelemetryAggregate]:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        devices.get_device(s, device_id)
        return reports.telemetry_series(
            s, device_id, metric=metric, since=since, until=until, limit=limit
        )


@router.get("/devices/{device_id}/events", response_model=Page[EventRecord])
def device_events(
    request: Request,
    device_id: DeviceId,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[EventRecord]:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        devices.get_device(s, device_id)
        return reports.list_events(s, device_id=device_id, limit=limit, offset=offset)


@router.get("/devices/{device_id}/drift", response_model=Page[DriftRecord])
def device_drift(
    request: Request,
    device_id: DeviceId,
    _: Viewer,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[DriftRecord]:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        devices.get_device(s, device_id)
        return reports.list_drift(s, device_id=device_id, limit=limit, offset=offset)


@router.patch("/devices/{device_id}", response_model=DeviceRecord, summary="Set labels")
def patch_device(
    request: Request, device_id: DeviceId, body: LabelsBody, _: Operator
) -> DeviceRecord:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        return devices.set_labels(s, device_id, body.labels, replace=body.replace)


@router.delete("/devices/{device_id}", status_code=204, summary="Decommission a device")
def delete_device(request: Request, device_id: DeviceId, who: Admin) -> Response:
    """Forget the device and refuse its messages from now on (a device still online does
    not come back); an enrolled device's certificate is revoked too, and the broker set up
    by ``cloud-hub broker-config`` drops the device and leaves it no rights within seconds
    (the call waits up to 5 s for that). Enrolling the id again readmits it."""
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        devices.delete_device(s, device_id, now=ctx.clock(), by=who.name)
    enrollment = ctx.enrollment
    if enrollment is not None and enrollment.repository.get_device(device_id) is not None:
        revoked = enrollment.revoke(device_id)
        log.warning(
            "device %s removed by %s; certificate serial %d revoked",
            device_id,
            who.name,
            revoked.cert_serial,
        )
    return Response(status_code=204)


@router.get("/device-classes", response_model=list[DeviceClassRecord])
def list_device_classes(request: Request, _: Viewer) -> list[DeviceClassRecord]:
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        return catalog.list_device_classes(s)


@router.put("/device-classes/{name}", response_model=DeviceClassRecord)
def put_device_class(
    request: Request, name: DeviceId, body: DeviceClassBody, _: Operator
) -> DeviceClassRecord:
    """Create or describe a device class (its build profile, e.g. from ``firmware_bundles``)."""
    ctx = _ctx(request)
    with ctx.registry.session() as s:
        return catalog.upsert_device_class(
            s, name, description=body.description, profile=body.profile, now=ctx.clock()
        )
