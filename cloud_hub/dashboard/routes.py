"""Routes of the dashboard: the page, its assets, the fleet summary and the live stream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, RedirectResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles

from cloud_hub.api.auth import Principal, require
from cloud_hub.api.context import ApiContext
from cloud_hub.api.errors import ApiError
from cloud_hub.dashboard.summary import change_marker, fleet_summary
from cloud_hub.registry import admin

__all__ = ["mount", "mount_dashboard"]

STATIC = Path(__file__).parent / "static"
STREAM_INTERVAL_S = 1.0
STREAM_MAX_S = 3600.0  # clients reconnect on their own (EventSource)


def mount(app: FastAPI, context: ApiContext) -> None:
    """The hook ``HubServer`` calls: serve the dashboard under ``/ui``."""
    mount_dashboard(app, context)


def mount_dashboard(app: FastAPI, context: ApiContext) -> None:
    """Serve the dashboard under ``/ui`` of the hub's API app."""
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="ui-static")

    @app.get("/", include_in_schema=False)
    async def root() -> RedirectResponse:
        return RedirectResponse("/ui/")

    @app.get("/ui", include_in_schema=False)
    @app.get("/ui/", include_in_schema=False)
    async def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/v1/fleet/summary", tags=["devices"], summary="Counts by class and version")
    def summary(_: Annotated[Principal, Depends(require("viewer"))]) -> dict[str, Any]:
        with context.registry.session() as s:
            return asdict(fleet_summary(s))

    @app.get("/ui/stream", include_in_schema=False)
    async def stream(
        request: Request, access_token: Annotated[str, Query(min_length=8, max_length=256)]
    ) -> StreamingResponse:
        # EventSource cannot send headers: the token comes as a query parameter, checked once.
        def check() -> bool:
            with context.registry.session() as s:
                return admin.authenticate_token(s, access_token, now=context.clock()) is not None

        if not await run_in_threadpool(check):
            raise ApiError(401, "invalid or revoked token")

        def marker() -> str:
            with context.registry.session() as s:
                return json.dumps(change_marker(s), default=str)

        async def events() -> AsyncIterator[bytes]:
            last = ""
            loop = asyncio.get_running_loop()
            deadline = loop.time() + STREAM_MAX_S
            yield b"retry: 2000\n\n"
            while loop.time() < deadline and not await request.is_disconnected():
                current = await run_in_threadpool(marker)
                if current != last:
                    last = current
                    yield f"event: change\ndata: {current}\n\n".encode()
                else:
                    yield b": keep-alive\n\n"
                await asyncio.sleep(STREAM_INTERVAL_S)

        return StreamingResponse(
            events(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )
