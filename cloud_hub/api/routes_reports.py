"""``/api/v1/events``, ``/api/v1/drift`` and ``/api/v1/training-runs``."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import Field, StringConstraints

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.params import ID_PATTERN, MAX_OFFSET, TEXT_PATTERN, StrictBody
from cloud_hub.loop.run_states import InvalidRunTransitionError, RunStep, next_run_state
from cloud_hub.registry import DriftRecord, EventRecord, Page, TrainingRunRecord, admin, reports
from cloud_hub.registry.errors import ConflictError

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["reports"])
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
Since = Annotated[float | None, Query(allow_inf_nan=False, ge=0, le=1e11)]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
KindName = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
RUN_STATES = r"^(pending|running|done|failed|cancelled)$"


class TrainingRunBody(StrictBody):
    run_id: str = Field(pattern=ID_PATTERN)
    model_name: str = Field(pattern=ID_PATTERN)
    trigger: str = Field(default="manual", max_length=64, pattern=TEXT_PATTERN)
    config: dict[str, Any] = Field(default_factory=dict, max_length=256)


class TrainingRunUpdate(StrictBody):
    state: str | None = Field(default=None, pattern=RUN_STATES)
    metrics: dict[str, Any] | None = Field(default=None, max_length=256)
    result_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    detail: str | None = Field(default=None, max_length=2000, pattern=TEXT_PATTERN)


@router.get("/events", response_model=Page[EventRecord])
def list_events(
    request: Request,
    _: Viewer,
    device_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    deployment_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    kind: Annotated[list[KindName] | None, Query(max_length=32)] = None,
    since: Since = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[EventRecord]:
    with request.app.state.context.registry.session() as s:
        return reports.list_events(
            s,
            device_id=device_id,
            deployment_id=deployment_id,
            kinds=kind,
            since=since,
            limit=limit,
            offset=offset,
        )


@router.get("/drift", response_model=Page[DriftRecord])
def list_drift(
    request: Request,
    _: Viewer,
    device_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    model_version: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    drifted: bool | None = None,
    since: Since = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[DriftRecord]:
    with request.app.state.context.registry.session() as s:
        return reports.list_drift(
            s,
            device_id=device_id,
            model_version=model_version,
            drifted=drifted,
            since=since,
            limit=limit,
            offset=offset,
        )


@router.get("/training-runs", response_model=Page[TrainingRunRecord])
def list_training_runs(
    request: Request,
    _: Viewer,
    model: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Limit = 100,
    offset: Offset = 0,
) -> Page[TrainingRunRecord]:
    with request.app.state.context.registry.session() as s:
        return admin.list_training_runs(s, model_name=model, limit=limit, offset=offset)


@router.get("/training-runs/{run_id}", response_model=TrainingRunRecord)
def get_training_run(
    request: Request, run_id: Annotated[str, Path(pattern=ID_PATTERN)], _: Viewer
) -> TrainingRunRecord:
    with request.app.state.context.registry.session() as s:
        return admin.get_training_run(s, run_id)


@router.post("/training-runs", response_model=TrainingRunRecord, status_code=201)
def create_training_run(request: Request, body: TrainingRunBody, _: Operator) -> TrainingRunRecord:
    """Record a training run (the federated run itself is started by ``cloud_hub.fl``)."""
    ctx = request.app.state.context
    with ctx.registry.session() as s:
        return admin.create_training_run(
            s,
            run_id=body.run_id,
            model_name=body.model_name,
            trigger=body.trigger,
            config=body.config,
            now=ctx.clock(),
        )


@router.patch("/training-runs/{run_id}", response_model=TrainingRunRecord)
def update_training_run(
    request: Request,
    run_id: Annotated[str, Path(pattern=ID_PATTERN)],
    body: TrainingRunUpdate,
    _: Operator,
) -> TrainingRunRecord:
    ctx = request.app.state.context
    changes = body.model_dump(exclude_none=True)
    if changes.get("state") in ("done", "failed", "cancelled"):
        changes["finished_at"] = ctx.clock()
    with ctx.registry.session() as s:
        if "state" in changes:
            _check_reported_state(admin.get_training_run(s, run_id).state, changes["state"])
        return admin.update_training_run(s, run_id, now=ctx.clock(), **changes)


_REPORTED_STEPS = {
    "running": RunStep.REPORT_RUNNING,
    "done": RunStep.REPORT_DONE,
    "failed": RunStep.FAIL,
    "cancelled": RunStep.REPORT_CANCELLED,
}


def _check_reported_state(current: str, reported: str) -> None:
    """An external trainer's report moves the run through the training-run table only."""
    if reported == current:
        return
    step = _REPORTED_STEPS.get(reported)
    try:
        if step is None:
            raise InvalidRunTransitionError(f"a training run cannot go back to {reported!r}")
        next_run_state(current, step)
    except InvalidRunTransitionError as exc:
        raise ConflictError(str(exc)) from exc
