"""The userspace relay that gives a lab device latency and loss (no netem here): a real relay
process on loopback in front of a real echo server; round trips are measured."""

from __future__ import annotations

import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from shared.net import free_port
from simulations.lab.relay import LinkShape


@contextmanager
def echo_server() -> Iterator[int]:
    srv = socket.create_server(("127.0.0.1", 0))
    port = int(srv.getsockname()[1])

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield port
    finally:
        srv.close()


@contextmanager
def relay(target: int, *args: str) -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.lab.relay", "--listen", f"127.0.0.1:{port}",
         "--to", f"127.0.0.1:{target}", *args],
        stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stdout.readline().startswith("relay listening")
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def _round_trips(port: int, n: int, size: int = 100) -> tuple[float, bytes]:
    """Median round-trip time of ``n`` request/echo exchanges, and everything echoed."""
    got = bytearray()
    times = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        for i in range(n):
            payload = bytes([i % 256]) * size
            t = time.monotonic()
            s.sendall(payload)
            part = b""
            while len(part) < size:
                part += s.recv(size - len(part))
            times.append(time.monotonic() - t)
            got += part
    return sorted(times)[n // 2], bytes(got)


def test_latency_is_added_each_way_and_nothing_is_lost_or_reordered() -> None:
    with echo_server() as echo, relay(echo, "--delay-ms", "100") as port:
        rtt, got = _round_trips(port, 5)
    assert 0.19 <= rtt < 1.5, rtt  # 100 ms each way
    assert got == b"".join(bytes([i]) * 100 for i in range(5))


def test_loss_shows_as_retransmission_stalls() -> None:
    with echo_server() as echo:
        with relay(echo) as port:
            clean, _ = _round_trips(port, 5)
        with relay(echo, "--loss", "0.9", "--rto-ms", "300") as port:
            lossy, got = _round_trips(port, 5)
    assert clean < 0.1, clean
    assert lossy >= 0.3, lossy  # most chunks held one retransmission timeout
    assert got == b"".join(bytes([i]) * 100 for i in range(5))


def test_a_bulk_transfer_arrives_whole_and_in_order() -> None:
    blob = random.Random(1).randbytes(2_000_000)
    with (
        echo_server() as echo,
        relay(echo, "--delay-ms", "20", "--loss", "0.05") as port,
        socket.create_connection(("127.0.0.1", port), timeout=30) as s,
    ):
        sender = threading.Thread(target=s.sendall, args=(blob,))
        sender.start()
        got = bytearray()
        while len(got) < len(blob):
            got += s.recv(65536)
        sender.join()
    assert bytes(got) == blob


@pytest.mark.parametrize("kwargs", [{"delay_ms": -1}, {"loss": 1.0}, {"loss": -0.1}, {"rto_ms": 0}])
def test_impossible_shapes_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LinkShape(**kwargs)
    bad = subprocess.run(
        [sys.executable, "-m", "simulations.lab.relay", "--listen", "127.0.0.1:1",
         "--to", "nohost"],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "HOST:PORT" in bad.stderr
