"""Loopback networking helpers shared by the hub, the agent and the local harness."""

from __future__ import annotations

import secrets
import socket
import time
from pathlib import Path

__all__ = ["ephemeral_port_range", "free_port", "wait_port"]


_EPHEMERAL_DEFAULT = (32768, 60999)
_LOWEST_PICK = 10000
_handed_out: set[int] = set()


def ephemeral_port_range() -> tuple[int, int]:
    """The kernel's range for the local ports of outgoing connections (Linux; the IANA-like
    default elsewhere)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now, for a server started next.

    The port is drawn below the kernel's ephemeral range: a port the OS picks (``bind`` to
    port 0) comes from the range that outgoing connections also use, so a busy process's next
    ``connect`` can take it before the server binds ("address already in use"). Ports are not
    handed out twice by one process. Falls back to the OS's pick when the range below is
    too small to draw from.
    """
    low, _high = ephemeral_port_range()
    if low - _LOWEST_PICK >= 1000:
        for _ in range(200):
            port = secrets.randbelow(low - _LOWEST_PICK) + _LOWEST_PICK
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 15.0) -> None:
    """Return once something accepts connections on 127.0.0.1:``port``; ``TimeoutError``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")
