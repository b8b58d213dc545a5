"""Routes of the dashboard: the page, its assets, the fleet summary and the live stream."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
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
from cloud_hub.dashboard.overview import MAX_DEVICES, device_overview
from cloud_hub.dashboard.summary import change_marker, fleet_summary
from cloud_hub.dashboard.tickets import StreamTickets
from cloud_hub.registry import admin

__all__ = ["mount", "mount_dashboard"]

log = logging.getLogger(__name__)

STATIC = Path(__file__).parent / "static"
STREAM_INTERVAL_S = 1.0
STREAM_MAX_S = 3600.0  # the page opens a new stream (with a new ticket) when one ends
TOKEN_RECHECK_S = 10.0  # how soon a revoked token loses its open stream


def mount(app: FastAPI, context: ApiContext) -> None:
    """The hook ``cloud_hub.hub.build_hub`` calls: serve the dashboard under ``/ui``."""
    mount_dashboard(app, context)


def mount_dashboard(
    app: FastAPI,
    context: ApiContext,
    *,
    tickets: StreamTickets | None = None,
    recheck_s: float = TOKEN_RECHECK_S,
) -> None:
    """Serve the dashboard under ``/ui`` of the hub's API app. The live stream is opened
    with a ticket from ``POST /api/v1/stream-tickets`` and closes when the API token that
    asked for the ticket is revoked (checked every ``recheck_s``)."""
    tickets = tickets or StreamTickets()

    def token_is_live(token_id: str) -> bool:
        with context.registry.session() as s:
            return admin.find_live_token(s, token_id) is not None

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

    @app.get(
        "/api/v1/fleet/overview",
        tags=["devices"],
        summary="Per device: one health verdict, drift of the model it runs, its rollout",
    )
    def overview(
        _: Annotated[Principal, Depends(require("viewer"))],
        device_id: Annotated[list[str], Query(max_length=MAX_DEVICES)],
    ) -> list[dict[str, Any]]:
        with context.registry.session() as s:
            return [asdict(o) for o in device_overview(s, device_id)]

    @app.post(
        "/api/v1/stream-tickets",
        tags=["meta"],
        summary="A single-use ticket (valid seconds) that opens the live stream /ui/stream",
    )
    def stream_ticket(who: Annotated[Principal, Depends(require("viewer"))]) -> dict[str, Any]:
        # R14: EventSource cannot send headers; a ticket in the URL is worthless once used
        ticket = tickets.issue(who.token_id, now=context.clock())
        return {"ticket": ticket.secret, "expires_in": tickets.ttl_s}

    @app.get("/ui/stream", include_in_schema=False)
    async def stream(
        request: Request, ticket: Annotated[str, Query(min_length=8, max_length=128)]
    ) -> StreamingResponse:
        token_id = tickets.redeem(ticket, now=context.clock())
        if token_id is None or not await run_in_threadpool(token_is_live, token_id):
            log.warning("live stream refused: unknown, used or expired ticket")
            raise ApiError(401, "invalid, used or expired stream ticket")

        return StreamingResponse(
            _live_events(request, context, token_id, token_is_live, recheck_s),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )


async def _live_events(
    request: Request,
    context: ApiContext,
    token_id: str,
    token_is_live: Callable[[str], bool],
    recheck_s: float,
) -> AsyncIterator[bytes]:
    """The server-sent events of one stream: ``change`` when the fleet's change marker
    moves, keep-alives otherwise, and ``revoked`` (then the end) once the API token that
    opened the stream is revoked."""

    def marker() -> str:
        with context.registry.session() as s:
            return json.dumps(change_marker(s), default=str)

    last = ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STREAM_MAX_S
    next_check = loop.time() + recheck_s
    yield b"retry: 2000\n\n"
    while loop.time() < deadline and not await request.is_disconnected():
        if context.shutting_down.is_set():
            # the hub is stopping: end the stream now, the page reconnects to the next hub
            yield b"event: closing\ndata: {}\n\n"
            return
        if loop.time() >= next_check:
            next_check = loop.time() + recheck_s
            if not await run_in_threadpool(token_is_live, token_id):
                # R14: a revoked token loses the stream it opened, not just new calls
                log.warning("live stream closed: token %s was revoked", token_id)
                yield b"event: revoked\ndata: {}\n\n"
                return
        current = await run_in_threadpool(marker)
        if current != last:
            last = current
            yield f"event: change\ndata: {current}\n\n".encode()
        else:
            yield b": keep-alive\n\n"
        await asyncio.sleep(STREAM_INTERVAL_S)
