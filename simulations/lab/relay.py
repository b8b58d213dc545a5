"""Latency and loss for one device's link, in user space (this kernel has no ``netem``).

The relay runs inside the device's namespace on ``127.0.0.1``, where the namespace's own
``/etc/hosts`` sends the hub's and the broker's names; it forwards each TCP connection to
the real host over the lab bridge, holding every chunk for ``delay_ms`` in each direction.
TCP never loses data, so a lost segment is modelled as what the stream sees of it: with
probability ``loss`` a chunk is held one retransmission timeout (``rto_ms``) longer. Order
is kept: a chunk is never released before the one ahead of it.

``python -m simulations.lab.relay --listen 127.0.0.1:8883 --to 10.213.7.3:8883
--delay-ms 100 --loss 0.02`` (one ``--listen``/``--to`` pair per port).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import signal
import sys
import time
from dataclasses import dataclass

__all__ = ["LinkShape", "main", "parse_endpoint"]

_CHUNK = 16 * 1024


@dataclass(frozen=True)
class LinkShape:
    """One way's latency and loss (applied in both directions)."""

    delay_ms: float = 0.0
    loss: float = 0.0  # chance that a chunk is held one extra ``rto_ms``
    rto_ms: float = 200.0  # Linux's minimum retransmission timeout

    def __post_init__(self) -> None:
        if not 0 <= self.delay_ms <= 10_000:
            raise ValueError(f"delay_ms {self.delay_ms}: 0..10000")
        if not 0 <= self.loss < 1:
            raise ValueError(f"loss {self.loss}: 0 <= loss < 1")
        if not 0 < self.rto_ms <= 60_000:
            raise ValueError(f"rto_ms {self.rto_ms}: 0 < rto_ms <= 60000")

    def hold_s(self, rng: random.Random) -> float:
        """How long the next chunk is held."""
        extra = self.rto_ms if self.loss and rng.random() < self.loss else 0.0
        return (self.delay_ms + extra) / 1000.0

    def argv(self) -> list[str]:
        return [
            "--delay-ms",
            str(self.delay_ms),
            "--loss",
            str(self.loss),
            "--rto-ms",
            str(self.rto_ms),
        ]


def parse_endpoint(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} is not HOST:PORT")
    return host, int(port)


async def _pump(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    shape: LinkShape,
    rng: random.Random,
) -> None:
    """Forward one direction: a reader task stamps each chunk with its release time, the
    writer releases them in order (reading goes on while earlier chunks wait)."""
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

    async def read() -> None:
        # the queue is first in, first out: a chunk held longer holds the ones behind it
        while data := await reader.read(_CHUNK):
            await queue.put((time.monotonic() + shape.hold_s(rng), data))
        await queue.put((0.0, b""))

    reading = asyncio.create_task(read())
    try:
        while True:
            release, data = await queue.get()
            await asyncio.sleep(max(0.0, release - time.monotonic()))
            if not data:
                break
            writer.write(data)
            await writer.drain()
    finally:
        reading.cancel()
        with contextlib.suppress(Exception):
            writer.close()


async def _serve(pairs: list[tuple[tuple[str, int], tuple[str, int]]], shape: LinkShape) -> None:
    rng = random.Random()

    def handler(target: tuple[str, int]):  # type: ignore[no-untyped-def]
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError:
                writer.close()
                return
            await asyncio.gather(
                _pump(reader, up_writer, shape, rng),
                _pump(up_reader, writer, shape, rng),
                return_exceptions=True,
            )

        return handle

    servers = [await asyncio.start_server(handler(dst), *src) for src, dst in pairs]
    print("relay listening", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m simulations.lab.relay")
    parser.add_argument("--listen", action="append", required=True, metavar="HOST:PORT")
    parser.add_argument("--to", action="append", required=True, metavar="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--loss", type=float, default=0.0)
    parser.add_argument("--rto-ms", type=float, default=200.0)
    args = parser.parse_args(argv)
    try:
        if len(args.listen) != len(args.to):
            raise ValueError("one --to per --listen")
        pairs = [
            (parse_endpoint(a), parse_endpoint(b))
            for a, b in zip(args.listen, args.to, strict=True)
        ]
        shape = LinkShape(delay_ms=args.delay_ms, loss=args.loss, rto_ms=args.rto_ms)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_serve(pairs, shape))
    return 0


if __name__ == "__main__":
    sys.exit(main())
