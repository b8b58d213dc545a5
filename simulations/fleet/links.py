"""Flaky links: a TCP relay in front of the broker that drops each connection after a random
lifetime and delays what it forwards.

Agents configured with the relay's port reach the broker only through it. Every accepted
connection lives for an exponentially distributed time (mean ``mean_up_s``), then both sides
are aborted (no MQTT DISCONNECT: the broker publishes the agent's last will and the agent
takes its normal reconnect path). ``delay_s`` is added before each forwarded read, in both
directions. Connections are cut independently, so at any moment part of the flaky group is
reconnecting while the rest transfers — unlike a broker restart, which hits everyone at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

__all__ = ["FlakyLink", "LinkStats", "TcpRelay"]


@dataclass(frozen=True)
class LinkStats:
    accepted: int
    cuts: int
    bytes_down: int  # broker -> clients
    bytes_up: int  # clients -> broker


class TcpRelay:
    """A TCP relay on a free loopback port in front of ``target``, with its asyncio loop in a
    background thread so synchronous code can drive it. ``delay_s`` is added before each
    forwarded read, in both directions. Subclasses decide whether to let a connection in
    (:meth:`_admit`) and what to do once it is relayed (:meth:`_opened`)."""

    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.0) -> None:
        if delay_s < 0:
            raise ValueError("delay_s must be >= 0")
        self.target = (target_host, target_port)
        self.delay_s = delay_s
        self.port = 0
        self.accepted = 0
        self.cuts = 0
        self.bytes_up = 0
        self.bytes_down = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=type(self).__name__, daemon=True
        )
        self._server: asyncio.base_events.Server | None = None
        self._conns: set[asyncio.StreamWriter] = set()

    # -- lifecycle ---------------------------------------------------------------------------
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
        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            await self._close_all()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                self._call(shutdown())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)

    def __enter__(self) -> TcpRelay:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stats(self) -> LinkStats:
        return LinkStats(self.accepted, self.cuts, self.bytes_down, self.bytes_up)

    # -- hooks -------------------------------------------------------------------------------
    def _admit(self) -> bool:
        """Whether a new client connection is relayed (else it is aborted at once)."""
        return True

    def _opened(
        self, writer: asyncio.StreamWriter, up_writer: asyncio.StreamWriter
    ) -> asyncio.TimerHandle | None:
        """Called once a connection is relayed; a returned timer is cancelled when it ends."""
        return None

    # -- plumbing (event loop thread) --------------------------------------------------------
    async def _close_all(self) -> None:
        for w in list(self._conns):
            with contextlib.suppress(Exception):
                w.transport.abort()
        self._conns.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._admit():
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:  # broker down (restarting): the client retries
            writer.transport.abort()
            return
        self.accepted += 1
        self._conns.update((writer, up_writer))
        timer = self._opened(writer, up_writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, up=True),
            self._pipe(up_reader, writer, up=False),
            return_exceptions=True,
        )
        if timer is not None:
            timer.cancel()
        for w in (writer, up_writer):
            self._conns.discard(w)
            w.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, up: bool
    ) -> None:
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
                if up:
                    self.bytes_up += len(data)
                else:
                    self.bytes_down += len(data)
                await writer.drain()
        finally:
            writer.transport.abort()


class FlakyLink(TcpRelay):
    """``with FlakyLink(broker_port, mean_up_s=4, delay_s=0.02, seed=1) as link: link.port``."""

    def __init__(
        self,
        target_port: int,
        *,
        target_host: str = "127.0.0.1",
        mean_up_s: float = 4.0,
        delay_s: float = 0.0,
        seed: int = 0,
    ) -> None:
        if mean_up_s <= 0 or delay_s < 0:
            raise ValueError("mean_up_s must be > 0 and delay_s >= 0")
        super().__init__(target_host, target_port, delay_s=delay_s)
        self.mean_up_s = mean_up_s
        self._rng = random.Random(seed)
        self._cutting = True

    def set_cutting(self, on: bool) -> None:
        """Stop (or resume) dropping connections, e.g. once the faulty phase is over."""
        self._cutting = on

    def __enter__(self) -> FlakyLink:
        self.start()
        return self

    def _opened(
        self, writer: asyncio.StreamWriter, up_writer: asyncio.StreamWriter
    ) -> asyncio.TimerHandle:
        lifetime = self._rng.expovariate(1.0 / self.mean_up_s)
        return asyncio.get_running_loop().call_later(lifetime, self._cut, writer, up_writer)

    def _cut(self, *writers: asyncio.StreamWriter) -> None:
        if not self._cutting:
            return
        self.cuts += 1
        for w in writers:
            w.transport.abort()
