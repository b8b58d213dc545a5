"""The flaky link relays bytes both ways and drops connections after random lifetimes."""

from __future__ import annotations

import socket
import threading
import time

from simulations.fleet.links import FlakyLink


def _echo_server() -> tuple[socket.socket, int]:
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return

            def echo(c: socket.socket = conn) -> None:
                with c:
                    while data := c.recv(4096):
                        c.sendall(data)

            threading.Thread(target=echo, daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    return srv, int(srv.getsockname()[1])


def _roundtrip(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn.sendall(b"ping")
    assert conn.recv(4) == b"ping"
    return conn


def _roundtrip_through_a_flaky_link(port: int) -> socket.socket:
    """A connection that relayed one round trip before its random lifetime ended (on a busy
    machine a short lifetime can end before the first echo: those are retried)."""
    for _ in range(30):
        conn = socket.create_connection(("127.0.0.1", port), timeout=5)
        try:
            conn.sendall(b"ping")
            if conn.recv(4) == b"ping":
                return conn
        except OSError:
            pass
        conn.close()
    raise AssertionError("no connection through the link relayed a round trip")


def test_link_relays_then_cuts_connections() -> None:
    srv, port = _echo_server()
    with FlakyLink(port, mean_up_s=0.3, delay_s=0.01, seed=1) as link:
        conn = _roundtrip_through_a_flaky_link(link.port)
        conn.settimeout(10)
        started = time.monotonic()
        assert conn.recv(1) == b""  # closed by the link, not by us
        assert time.monotonic() - started < 8
        stats = link.stats()
        assert stats.cuts >= 1 and stats.bytes_up >= 4 and stats.bytes_down >= 4
        link.set_cutting(False)
        steady = _roundtrip(link.port)
        time.sleep(1.0)  # several mean lifetimes: no cut while cutting is off
        steady.sendall(b"pong")
        assert steady.recv(4) == b"pong"
        steady.close()
        conn.close()
    srv.close()
