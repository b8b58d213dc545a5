"""``free_port`` hands out ports a server can bind, never from the kernel's ephemeral range
(where an outgoing connection could take the port first) and never twice in one process."""

from __future__ import annotations

import socket

import pytest

from shared import net
from shared.net import ephemeral_port_range, free_port


def test_ports_are_bindable_distinct_and_below_the_ephemeral_range() -> None:
    low, high = ephemeral_port_range()
    assert 0 < low <= high < 65536
    ports = [free_port() for _ in range(300)]
    assert len(set(ports)) == len(ports)
    assert all(p < low for p in ports)
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_in_use_is_not_handed_out(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", free_port()))
        busy.listen()
        taken = busy.getsockname()[1]
        spare = free_port()
        draws = iter([taken, taken, spare])
        monkeypatch.setattr(net.secrets, "randbelow", lambda _n: next(draws) - net._LOWEST_PICK)
        net._handed_out.difference_update({taken, spare})
        assert free_port() == spare
