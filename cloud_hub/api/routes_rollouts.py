"""``/api/v1/rollouts``: reads from the registry; commands are registry writes
(:class:`~cloud_hub.rollout.commands.RolloutCommands`) that need no engine in this process."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError
from cloud_hub.api.params import ID_PATTERN, MAX_OFFSET, TEXT_PATTERN, StrictBody
from cloud_hub.registry import Page, RolloutRecord, TargetRecord, rollouts
from cloud_hub.registry.bundle_index import index_store_bundles
from cloud_hub.rollout.commands import RolloutCommands
from cloud_hub.rollout.history import rollout_history
from cloud_hub.rollout.status import rollout_status

__all__ = ["router"]

router = APIRouter(prefix="/api/v1", tags=["rollouts"])
RolloutId = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]
StateName = Literal[
    "draft",
    "canary",
    "wave",
    "paused",
    "done",
    "rolling_back",
    "rolled_back",
    "rollback_failed",
    "resolved",
    "aborted",
]


class RolloutCreateBody(StrictBody):
    """``config`` is a rollout configuration (see ``cloud_hub.rollout.RolloutConfig``)::

    {"bundle_id": "...", "target": {"device_class": "rpi4", "labels": {"site": "plant-3"}},
     "stages": [{"count": 1}, {"percent": 10}, {"percent": 50}, {"percent": 100}],
     "gates": {...}, "abort": {...}, "gate_window_s": 300}
    """

    config: dict[str, Any] = Field(max_length=64)
    previous_bundle_id: str | None = Field(default=None, pattern=ID_PATTERN)
    rollout_id: str | None = Field(default=None, pattern=ID_PATTERN)


class ReasonBody(StrictBody):
    reason: str = Field(default="", max_length=500, pattern=TEXT_PATTERN)


def _ctx(request: Request) -> ApiContext:
    ctx: ApiContext = request.app.state.context
    return ctx


def _commands(ctx: ApiContext) -> RolloutCommands:
    if ctx.rollouts is None:  # an app built without them (a hub process always has them)
        raise ApiError(
            409, "no rollout commands in this API (neither a rollout engine nor a replica)"
        )
    return ctx.rollouts


@router.get("/rollouts", response_model=Page[RolloutRecord])
def list_rollouts(
    request: Request,
    _: Viewer,
    state: Annotated[list[StateName] | None, Query(max_length=8)] = None,
    bundle_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[RolloutRecord]:
    with _ctx(request).registry.session() as s:
        return rollouts.list_rollouts(
            s, states=state, bundle_id=bundle_id, limit=limit, offset=offset
        )


@router.get("/rollouts/{rollout_id}", summary="Rollout status (stages, gate results, targets)")
def get_rollout(request: Request, rollout_id: RolloutId, _: Viewer) -> dict[str, Any]:
    # read from the registry: the same answer wherever the engine runs (``delivery``: the
    # bundle bytes devices were sent vs what full bundles would have cost, once offered)
    with _ctx(request).registry.session() as s:
        status: dict[str, Any] = rollout_status(s, rollouts.get_rollout(s, rollout_id)).to_dict()
        return status


@router.get("/rollouts/{rollout_id}/targets", response_model=list[TargetRecord])
def rollout_targets(
    request: Request,
    rollout_id: RolloutId,
    _: Viewer,
    stage: Annotated[int | None, Query(ge=0, le=1000)] = None,
) -> list[TargetRecord]:
    with _ctx(request).registry.session() as s:
        rollouts.get_rollout(s, rollout_id)
        return rollouts.list_targets(s, rollout_id, stage_index=stage)


class RolloutMove(BaseModel):
    """One move of a rollout (``GET /rollouts/{id}/history``)."""

    ts: float
    by: str  # the API token's name, ``rollout-engine`` (gates, rollbacks) or ``hub``
    from_phase: str = Field(serialization_alias="from")
    to_phase: str = Field(serialization_alias="to")
    reason: str  # what the move added: a typed reason, a failed gate, unrecovered devices


@router.get(
    "/rollouts/{rollout_id}/history",
    response_model=list[RolloutMove],
    response_model_by_alias=True,
)
def get_rollout_history(request: Request, rollout_id: RolloutId, _: Viewer) -> list[RolloutMove]:
    """Every move of the rollout, oldest first: who made it, from where to where, and why."""
    with _ctx(request).registry.session() as s:
        rollouts.get_rollout(s, rollout_id)
        return [
            RolloutMove(
                ts=e.ts, by=e.by, from_phase=e.from_phase, to_phase=e.to_phase, reason=e.reason
            )
            for e in rollout_history(s, rollout_id)
        ]


@router.post("/rollouts", status_code=201, summary="Create a rollout (draft)")
async def create_rollout(
    request: Request, body: RolloutCreateBody, who: Operator
) -> dict[str, Any]:
    ctx = _ctx(request)
    commands = _commands(ctx)
    from cloud_hub.rollout.config import RolloutConfig

    config = RolloutConfig.from_dict(body.config)  # HubConfigError → 422

    def create() -> dict[str, Any]:
        if ctx.bundles is not None:  # built into the store since the hub started (#15)
            wanted = [config.bundle_id, body.previous_bundle_id]
            index_store_bundles(
                ctx.registry, ctx.bundles, now=ctx.clock(), bundle_ids=[b for b in wanted if b]
            )
        status = commands.create(
            config,
            previous_bundle_id=body.previous_bundle_id,
            created_by=who.name,
            rollout_id=body.rollout_id,
        )
        result: dict[str, Any] = status.to_dict()
        return result

    return await run_in_threadpool(create)


async def _act(
    request: Request, rollout_id: str, action: str, reason: str, who: Principal
) -> dict[str, Any]:
    ctx = _ctx(request)
    commands = _commands(ctx)

    def act() -> dict[str, Any]:
        with ctx.registry.session() as s:
            rollouts.get_rollout(s, rollout_id)
        method = getattr(commands, action)
        status = (
            method(rollout_id, by=who.name)
            if action in ("start", "resume")
            else method(rollout_id, reason=reason, by=who.name)
        )
        result: dict[str, Any] = status.to_dict()
        return result

    return await run_in_threadpool(act)


@router.post("/rollouts/{rollout_id}/start")
async def start_rollout(request: Request, rollout_id: RolloutId, who: Operator) -> dict[str, Any]:
    return await _act(request, rollout_id, "start", "", who)


@router.post("/rollouts/{rollout_id}/pause")
async def pause_rollout(
    request: Request, rollout_id: RolloutId, who: Operator, body: ReasonBody | None = None
) -> dict[str, Any]:
    return await _act(request, rollout_id, "pause", body.reason if body else "", who)


@router.post("/rollouts/{rollout_id}/resume")
async def resume_rollout(request: Request, rollout_id: RolloutId, who: Operator) -> dict[str, Any]:
    return await _act(request, rollout_id, "resume", "", who)


@router.post("/rollouts/{rollout_id}/abort")
async def abort_rollout(
    request: Request, rollout_id: RolloutId, who: Operator, body: ReasonBody | None = None
) -> dict[str, Any]:
    return await _act(request, rollout_id, "abort", body.reason if body else "", who)


@router.post("/rollouts/{rollout_id}/rollback")
async def rollback_rollout(
    request: Request, rollout_id: RolloutId, who: Operator, body: ReasonBody | None = None
) -> dict[str, Any]:
    """Roll the devices back to what each ran before; after ``rollback_failed``, try the
    devices that did not go back again."""
    return await _act(request, rollout_id, "rollback", body.reason if body else "", who)


@router.post("/rollouts/{rollout_id}/resolve")
async def resolve_rollout(
    request: Request, rollout_id: RolloutId, who: Operator, body: ReasonBody | None = None
) -> dict[str, Any]:
    """Close a rollout in ``rollback_failed`` (the operator took care of the devices listed in
    its targets): it stops holding its devices. 409 in any other state."""
    return await _act(request, rollout_id, "resolve", body.reason if body else "", who)
