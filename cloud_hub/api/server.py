"""Serving a hub's API with uvicorn until SIGINT/SIGTERM (``cloud-hub serve``)::

    with build_hub(config) as hub:  # cloud_hub.hub: every part of the process, started
        serve_api(hub)

The hub itself is assembled by :func:`cloud_hub.hub.build_hub`; this module only runs its
API app in the foreground and turns the shutdown signal into a normal return, so that the
hub can still stop in order (the ingest writes what it holds).
"""

from __future__ import annotations

import logging
import signal
import socket
from typing import Any

from cloud_hub.hub import Hub

__all__ = ["serve_api"]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5  # then uvicorn cancels what still holds a connection open


def serve_api(hub: Hub) -> None:
    """Run ``hub.app`` with uvicorn until SIGINT/SIGTERM, then return (stop the hub next).

    uvicorn re-raises the signal it caught once it has shut down; our handler turns that
    into a normal return."""
    import uvicorn

    class _Shutdown(Exception):
        pass

    def on_signal(signum: int, frame: object) -> None:
        raise _Shutdown(signum)

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    config = hub.config
    tls: dict[str, Any] = {}
    if config.api_tls:
        from cloud_hub.enrollment.hubdir import server_tls_files

        files = server_tls_files(config.data_dir, config.api_tls_hostnames)
        tls = {"ssl_certfile": str(files.certfile), "ssl_keyfile": str(files.keyfile)}
    context = hub.context

    class _Server(uvicorn.Server):
        async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
            # uvicorn waits for open responses: the live streams end on this flag
            context.shutting_down.set()
            await super().shutdown(sockets)

    server = _Server(
        uvicorn.Config(
            hub.app,
            host=config.api_host,
            port=config.api_port,
            log_level="info",
            access_log=False,
            timeout_graceful_shutdown=SHUTDOWN_GRACE_S,
            **tls,
        )
    )
    try:
        server.run()
    except _Shutdown:
        log.info("hub shutting down")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
