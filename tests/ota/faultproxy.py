"""A fault-injecting TCP proxy for tests: sits between MQTT clients and the broker.

It runs an asyncio loop in a background thread so synchronous tests can drive it::

    with FaultProxy("127.0.0.1", broker_port) as proxy:
        agent connects to 127.0.0.1:proxy.port
        proxy.cut()                       # drop every live connection (both directions)
        proxy.flap(times=5, down_s=0.5, up_s=1.0)   # cut + refuse, then allow, 5 times
        proxy.set_delay(0.05)             # add latency to every forwarded read

While ``blocked`` new connections are accepted and closed at once (a dead link, not a
refused port, so clients take their normal reconnect path).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from concurrent.futures import Future
from typing import Any

__all__ = ["FaultProxy"]


class FaultProxy:
    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.0) -> None:
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.port = 0
        self.blocked = False
        self.accepted = 0
        self.cuts = 0
        self.bytes_forwarded = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="faultproxy", daemon=True
        )
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()
        self._flapper: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------
    def _call(self, coro: Any) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return fut.result(timeout=10)

    def start(self) -> int:
        self._thread.start()

        async def serve() -> int:
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            return int(self._server.sockets[0].getsockname()[1])

        self.port = self._call(serve())
        return self.port

    def stop(self) -> None:
        if self._flapper is not None:
            self._flapper.join(timeout=30)

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._close_all()

        with contextlib.suppress(Exception):
            self._call(shutdown())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults ------------------------------------------------------------------------------
    def cut(self) -> None:
        """Drop every live connection now."""
        self.cuts += 1
        self._call(self._close_all())

    def set_blocked(self, blocked: bool) -> None:
        self.blocked = blocked
        if blocked:
            self.cut()

    def set_delay(self, seconds: float) -> None:
        self.delay_s = seconds

    def flap(
        self, *, times: int = 5, down_s: float = 0.5, up_s: float = 1.0, wait: bool = False
    ) -> None:
        """Cut and block for ``down_s``, then allow for ``up_s``; ``times`` times (in the
        background unless ``wait``)."""

        def run() -> None:
            for _ in range(times):
                self.set_blocked(True)
                time.sleep(down_s)
                self.set_blocked(False)
                time.sleep(up_s)

        if wait:
            run()
        else:
            self._flapper = threading.Thread(target=run, daemon=True)
            self._flapper.start()

    def wait_flapping(self, timeout: float = 60) -> None:
        if self._flapper is not None:
            self._flapper.join(timeout)

    # -- plumbing ----------------------------------------------------------------------------
    async def _close_all(self) -> None:
        for w in list(self._conns):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.blocked:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.transport.abort()
            return
        self.accepted += 1
        self._conns.update((writer, up_writer))
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._conns.discard(w)
            w.transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                if self.delay_s:
                    await asyncio.sleep(self.delay_s)
                if writer.transport.is_closing():
                    break
                writer.write(data)
                self.bytes_forwarded += len(data)
                await writer.drain()
        finally:
            writer.transport.abort()
