"""``/api/v1/models`` and ``/api/v1/bundles`` (list, register, upload)."""

from __future__ import annotations

import logging
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import Field

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError
from cloud_hub.api.params import ID_PATTERN, MAX_OFFSET, TEXT_PATTERN, StrictBody
from cloud_hub.errors import RegistryError
from cloud_hub.registry import (
    BundleRecord,
    ModelRecord,
    ModelVersionRecord,
    Page,
    catalog,
)
from cloud_hub.registry.bundle_index import register_bundle_bytes
from shared.errors import BundleError

if TYPE_CHECKING:
    from cloud_hub.bundles.store import BundleStore

__all__ = ["router"]

log = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["models and bundles"])
Name = Annotated[str, Path(pattern=ID_PATTERN, max_length=128)]
BUNDLE_ID_PATTERN = r"^[0-9a-f]{64}$"  # SHA-256 of the signed manifest
Viewer = Annotated[Principal, Depends(require("viewer"))]
Operator = Annotated[Principal, Depends(require("operator"))]


class ModelVersionBody(StrictBody):
    version: int = Field(ge=1, le=2**31 - 1)
    parent_version: int | None = Field(default=None, ge=1, le=2**31 - 1)
    training_run_id: str | None = Field(default=None, pattern=ID_PATTERN)
    lineage: dict[str, Any] = Field(default_factory=dict, max_length=256)
    metrics: dict[str, Any] = Field(default_factory=dict, max_length=256)


class BundleBody(StrictBody):
    """Register a bundle the hub's bundle store holds, by id and what it claims to be."""

    bundle_id: str = Field(pattern=BUNDLE_ID_PATTERN)
    model_name: str = Field(pattern=ID_PATTERN)
    version: int = Field(ge=1, le=2**31 - 1)
    device_class: str = Field(pattern=ID_PATTERN)
    size: int = Field(ge=0, le=2**53)
    path: str = Field(default="", max_length=1024, pattern=TEXT_PATTERN)
    kind: str = Field(default="full", pattern=r"^(full|delta)$")
    base_bundle_id: str | None = Field(default=None, pattern=ID_PATTERN)
    manifest: dict[str, Any] = Field(default_factory=dict, max_length=256)


@router.get("/models", response_model=list[ModelRecord])
def list_models(request: Request, _: Viewer) -> list[ModelRecord]:
    with request.app.state.context.registry.session() as s:
        return catalog.list_models(s)


@router.get("/models/{name}/versions", response_model=list[ModelVersionRecord])
def list_versions(request: Request, name: Name, _: Viewer) -> list[ModelVersionRecord]:
    with request.app.state.context.registry.session() as s:
        catalog.get_model(s, name)
        return catalog.list_model_versions(s, name)


@router.get("/models/{name}/versions/{version}", response_model=ModelVersionRecord)
def get_version(
    request: Request,
    name: Name,
    version: Annotated[int, Path(ge=1, le=2**31 - 1)],
    _: Viewer,
) -> ModelVersionRecord:
    with request.app.state.context.registry.session() as s:
        return catalog.get_model_version(s, name, version)


@router.post("/models/{name}/versions", response_model=ModelVersionRecord, status_code=201)
def add_version(
    request: Request, name: Name, body: ModelVersionBody, _: Operator
) -> ModelVersionRecord:
    ctx = request.app.state.context
    with ctx.registry.session() as s:
        return catalog.add_model_version(
            s,
            name,
            body.version,
            parent_version=body.parent_version,
            training_run_id=body.training_run_id,
            lineage=body.lineage,
            metrics=body.metrics,
            now=ctx.clock(),
        )


@router.get("/bundles", response_model=Page[BundleRecord])
def list_bundles(
    request: Request,
    _: Viewer,
    model: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    device_class: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> Page[BundleRecord]:
    with request.app.state.context.registry.session() as s:
        return catalog.list_bundles(
            s, model_name=model, device_class=device_class, limit=limit, offset=offset
        )


@router.get("/bundles/{bundle_id}", response_model=BundleRecord)
def get_bundle(request: Request, bundle_id: Name, _: Viewer) -> BundleRecord:
    with request.app.state.context.registry.session() as s:
        return catalog.get_bundle(s, bundle_id)


@router.post(
    "/bundles",
    response_model=BundleRecord,
    status_code=201,
    responses={404: {"description": "The bundle is not in the hub's bundle store"}},
)
def register_bundle(request: Request, body: BundleBody, _: Operator) -> BundleRecord:
    """Register a bundle the hub's bundle store holds; it must verify (R1) and the body must
    describe it (``kind``, ``path`` and ``manifest`` come from the bundle itself)."""
    ctx = request.app.state.context
    bundles = _bundle_store(ctx)
    now = ctx.clock()
    if not bundles.path_of(body.bundle_id).is_file():
        raise ApiError(404, f"bundle {body.bundle_id} is not in the hub's bundle store")
    try:
        trusted = bundles.read_verified(body.bundle_id, now=_instant(now))
    except (BundleError, RegistryError) as exc:
        log.warning("bundle registration refused (R1): %s", exc)
        raise ApiError(422, f"bundle {body.bundle_id} refused: {exc}") from exc
    m = trusted.verified.manifest
    claimed = (body.model_name, body.version, body.device_class, body.size)
    actual = (m.model_name, m.version, m.device_class, len(trusted.data))
    if claimed != actual:
        raise ApiError(422, f"the body says {claimed}, the signed bundle says {actual}")
    with ctx.registry.session() as s:
        return register_bundle_bytes(
            s,
            trusted.data,
            trust=bundles.trust(),
            path=str(bundles.path_of(trusted.bundle_id)),
            now=now,
        )


@router.post(
    "/bundles/upload",
    response_model=BundleRecord,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_bundle(request: Request, _: Operator) -> BundleRecord:
    """Upload a signed bundle file (body: the raw bytes). It must verify against the hub's own
    trust root and keyring (R1): anything else is refused with 422 and the reason."""
    ctx = request.app.state.context
    bundles = _bundle_store(ctx)
    data = bytearray()
    async for chunk in request.stream():
        data.extend(chunk)
        if len(data) > ctx.max_upload_bytes:
            raise ApiError(413, f"bundle larger than {ctx.max_upload_bytes} bytes")
    if not data:
        raise ApiError(422, "empty body: send the bundle bytes")

    def keep() -> BundleRecord:
        now = ctx.clock()
        try:
            stored = bundles.add(bytes(data), require_newer=False, now=_instant(now))
        except BundleError as exc:
            log.warning("bundle upload refused (R1): %s", exc)
            raise ApiError(422, f"bundle refused: {exc}") from exc
        with ctx.registry.session() as s:
            return register_bundle_bytes(
                s,
                bytes(data),
                trust=bundles.trust(),
                path=str(bundles.path_of(stored.bundle_id)),
                now=now,
            )

    return await run_in_threadpool(keep)


def _bundle_store(ctx: ApiContext) -> BundleStore:
    if ctx.bundles is None:
        raise ApiError(409, "this hub has no key store, so it cannot verify or keep bundles")
    return ctx.bundles


def _instant(now: float) -> datetime:
    return datetime.fromtimestamp(now, tz=timezone.utc)
