"""The hub's FastAPI application."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.concurrency import run_in_threadpool

from cloud_hub.api import (
    routes_admin,
    routes_catalog,
    routes_devices,
    routes_reports,
    routes_rollouts,
)
from cloud_hub.api.auth import install_audit
from cloud_hub.api.body_gate import BodyLimits, RequestBodyGate
from cloud_hub.api.context import ApiContext
from cloud_hub.api.docs import install_docs
from cloud_hub.api.errors import install_error_handlers
from cloud_hub.api.metrics import CONTENT_TYPE, render_metrics
from cloud_hub.api.openapi_errors import document_errors
from cloud_hub.api.routing import MethodGate, required_role

__all__ = ["create_app"]

API_VERSION = "1.0"
MAX_JSON = 1024 * 1024


def create_app(context: ApiContext) -> FastAPI:
    """Build the app. Mount more (the dashboard under ``/ui``, the enrollment router) on the
    returned object; ``app.state.context`` holds ``context``."""
    app = FastAPI(
        title="fedfleet hub",
        version=API_VERSION,
        docs_url=None,  # served by install_docs from vendored assets (works offline)
        redoc_url=None,
        description=(
            "Fleet registry, bundles, staged rollouts, reports. Authenticate with "
            "`Authorization: Bearer <token>` (`cloud-hub token create --role viewer|operator|admin`)."
        ),
    )
    app.state.context = context
    install_error_handlers(app)
    install_docs(app, title=app.title)

    # R9: bodies are counted as they arrive and authenticated before anyone parses them
    limits = BodyLimits(json_bytes=MAX_JSON, upload_bytes=context.max_upload_bytes)
    app.add_middleware(
        RequestBodyGate,
        context=context,
        limits=limits,
        required_role=lambda scope: required_role(app.router.routes, scope),
    )
    app.add_middleware(MethodGate, routes=lambda: app.router.routes)  # OPTIONS, 405 Allow
    install_audit(app)  # added last = outermost: it also sees refused calls

    for module in (routes_devices, routes_catalog, routes_rollouts, routes_reports, routes_admin):
        app.include_router(module.router)

    @app.get("/healthz", tags=["meta"], summary="Liveness and registry reachability")
    async def healthz() -> dict[str, Any]:
        db = await run_in_threadpool(context.registry.ping)
        return {"ok": db, "registry": db}

    @app.get(
        "/metrics",
        tags=["meta"],
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {"schema": {"type": "string"}}}}},
    )
    async def metrics(request: Request) -> Response:
        body = await run_in_threadpool(render_metrics, context)
        return Response(body, media_type=CONTENT_TYPE)

    document_errors(app)  # 401/403/404/409/400/413/422/503 where they can happen
    return app
