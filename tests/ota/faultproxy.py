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

import threading
import time

from simulations.fleet.links import TcpRelay

__all__ = ["FaultProxy"]


class FaultProxy(TcpRelay):
    def __init__(self, target_host: str, target_port: int, *, delay_s: float = 0.0) -> None:
        super().__init__(target_host, target_port, delay_s=delay_s)
        self.blocked = False
        self._flapper: threading.Thread | None = None

    @property
    def bytes_forwarded(self) -> int:
        return self.bytes_up + self.bytes_down

    def stop(self) -> None:
        if self._flapper is not None:
            self._flapper.join(timeout=30)
        super().stop()

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def _admit(self) -> bool:
        return not self.blocked

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
