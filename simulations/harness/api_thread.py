"""A web app served by uvicorn in a thread of this process, on a loopback port: the demo's
hub API, and the HTTP(S) endpoints tests talk to over a real socket."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from shared.net import free_port
from simulations.harness.polling import NotReachedError

__all__ = ["ServedApp"]


class ServedApp:
    """``app`` on ``127.0.0.1:port`` (a free one when 0); HTTPS with ``certfile``/``keyfile``.

    ``with ServedApp(app) as served:`` or :meth:`start`/:meth:`stop`."""

    def __init__(
        self,
        app: Any,
        *,
        port: int = 0,
        certfile: Path | None = None,
        keyfile: Path | None = None,
        name: str = "served-app",
    ) -> None:
        import uvicorn

        self.port = port or free_port()
        tls = {"ssl_certfile": str(certfile), "ssl_keyfile": str(keyfile)} if certfile else {}
        self.scheme = "https" if certfile else "http"
        self.server = uvicorn.Server(
            uvicorn.Config(
                app,
                host="127.0.0.1",
                port=self.port,
                log_level="warning",
                access_log=False,
                lifespan="off",
                ws="none",
                timeout_graceful_shutdown=1,
                **tls,  # type: ignore[arg-type]
            )
        )
        self._thread = threading.Thread(target=self.server.run, name=name, daemon=True)

    @property
    def url(self) -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> ServedApp:
        """Start serving; :class:`NotReachedError` when uvicorn is not up within ``timeout``
        seconds."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                self.stop()
                raise NotReachedError(f"uvicorn did not start on 127.0.0.1:{self.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        """Stop serving (open connections get a second to finish, then are dropped)."""
        self.server.should_exit = True
        if self._thread.is_alive():
            self._thread.join(5)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(5)

    def __enter__(self) -> ServedApp:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
