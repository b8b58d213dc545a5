"""How long a Deployment Engine poller waits before asking again.

Flower's pollers (a SuperNode asking the SuperLink for messages, a SuperExec asking for
tasks) wait a fixed interval: a short one answers fast but costs CPU on both ends for every
empty answer (measured: about 10 ms of SuperLink CPU per SuperNode pull; three idle SuperNodes
polling every 0.2 s kept 15 % of a 2-core machine busy), and on a loaded machine that CPU is
taken from the training itself. :class:`PollBackoff` asks again soon after something
happened (a SecAgg+ stage's next message follows within seconds) and ever less often while
nothing happens: ``fast_s`` after activity, growing by ``growth`` per empty poll up to
``slow_s``. A message is then noticed at most ``slow_s`` (and about half the time since the
last activity) after it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PollBackoff"]


@dataclass
class PollBackoff:
    """The waits of one poller: call :meth:`activity` when a poll found something and wait
    :meth:`next_wait_s` seconds after each poll that found nothing."""

    fast_s: float = 0.05
    slow_s: float = 0.5
    growth: float = 1.5
    _next_s: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not 0 < self.fast_s <= self.slow_s:
            raise ValueError(f"need 0 < fast_s <= slow_s, got {self.fast_s}, {self.slow_s}")
        if self.growth < 1:
            raise ValueError(f"growth must be >= 1, got {self.growth}")
        self._next_s = self.fast_s

    def activity(self) -> None:
        """Something arrived: poll soon again."""
        self._next_s = self.fast_s

    def next_wait_s(self) -> float:
        """Seconds to wait after a poll that found nothing (each call waits longer)."""
        wait = self._next_s
        self._next_s = min(self._next_s * self.growth, self.slow_s)
        return wait
