"""Stream tickets: how the dashboard opens its live stream without an API token in a URL (R14).

``EventSource`` cannot send an ``Authorization`` header, so something must travel in the
URL. An API token there would sit in proxy and server logs and browser history for as long
as it lives. A ticket is worth nothing there: it is random, good for one stream only, and
expires within seconds. It names the API token it was issued to, so the stream can keep
checking that token and close when it is revoked.

Pure and in memory (one hub process serves its own dashboard): the clock is passed in.
"""

from __future__ import annotations

import secrets
import threading
from dataclasses import dataclass

__all__ = ["StreamTicket", "StreamTickets"]


@dataclass(frozen=True)
class StreamTicket:
    """An issued ticket: the secret goes to the page once."""

    secret: str
    token_id: str
    expires_at: float


class StreamTickets:
    """Issues and redeems single-use, short-lived stream tickets (thread-safe)."""

    def __init__(self, *, ttl_s: float = 30.0, max_outstanding: int = 10_000) -> None:
        if ttl_s <= 0 or max_outstanding < 1:
            raise ValueError("ttl_s must be > 0 and max_outstanding >= 1")
        self.ttl_s = ttl_s
        self.max_outstanding = max_outstanding
        self._lock = threading.Lock()
        self._open: dict[str, StreamTicket] = {}

    def issue(self, token_id: str, *, now: float) -> StreamTicket:
        """A new ticket for the API token ``token_id``; the oldest is dropped when full."""
        ticket = StreamTicket(secrets.token_urlsafe(32), token_id, now + self.ttl_s)
        with self._lock:
            self._prune(now)
            while len(self._open) >= self.max_outstanding:
                self._open.pop(next(iter(self._open)))
            self._open[ticket.secret] = ticket
        return ticket

    def redeem(self, secret: str, *, now: float) -> str | None:
        """The API token id the ticket was issued to, once; ``None`` when unknown, used
        or expired."""
        with self._lock:
            ticket = self._open.pop(secret, None)
        if ticket is None or now >= ticket.expires_at:
            return None
        return ticket.token_id

    def _prune(self, now: float) -> None:
        for secret in [s for s, t in self._open.items() if now >= t.expires_at]:
            del self._open[secret]
