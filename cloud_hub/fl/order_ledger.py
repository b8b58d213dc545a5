"""The hub's ledger of asynchronous training orders: who got which order, and what became of it.

Every order :class:`~cloud_hub.fl.async_run.AsyncBufferedRun` issues is an entry that moves
through :data:`TRANSITIONS` (a table; nothing else moves an entry)::

    ordered ──► held ──► folded        the update went into a completed buffer
       │          ├────► spent         its masked vector went into an exchange that broke
       │          ├────► refused       too stale for any buffer
       │          └────► superseded    the device took a newer order (it holds one update)
       └────────► failed               the device never answered the order

The ledger is what the hub trusts, not a device's word: a device can only offer an update
for an order this run issued, never one already folded or spent. :class:`MemoryOrderLedger`
keeps it in memory; :class:`cloud_hub.fl.registry_ledger.RegistryOrderLedger` keeps it in
the registry so that a hub restart continues where it stopped.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.fedbuff import HeldUpdateRef

__all__ = [
    "TRANSITIONS",
    "LedgerEntry",
    "MemoryOrderLedger",
    "OrderLedger",
    "OrderState",
    "check_transition",
]


class OrderState(StrEnum):
    ORDERED = "ordered"
    HELD = "held"
    FOLDED = "folded"
    SPENT = "spent"
    REFUSED = "refused"
    SUPERSEDED = "superseded"
    FAILED = "failed"


S = OrderState
TRANSITIONS: dict[OrderState, frozenset[OrderState]] = {
    S.ORDERED: frozenset({S.HELD, S.FAILED}),
    S.HELD: frozenset({S.FOLDED, S.SPENT, S.REFUSED, S.SUPERSEDED}),
    S.FOLDED: frozenset(),
    S.SPENT: frozenset(),
    S.REFUSED: frozenset(),
    S.SUPERSEDED: frozenset(),
    S.FAILED: frozenset(),
}


def check_transition(order_id: str, old: OrderState, new: OrderState) -> None:
    if new not in TRANSITIONS[old]:
        raise HubConfigError(f"order {order_id}: no transition from {old.value} to {new.value}")


@dataclass(frozen=True)
class LedgerEntry:
    """One order: the reference the hub trusts, its state, and facts for eligibility."""

    ref: HeldUpdateRef
    state: OrderState
    device_name: str | None = None  # the registry's device id, when the run knows it
    labelled_samples: float | None = None  # the device's labelled samples when ordered
    buffer: int | None = None  # the buffer that folded or spent it


class OrderLedger(Protocol):
    """Where a run keeps its orders (memory or the registry)."""

    def issue(self, entry: LedgerEntry) -> None: ...

    def move(self, order_id: str, state: OrderState, *, buffer: int | None = None) -> None: ...

    def entries(self) -> list[LedgerEntry]: ...


class MemoryOrderLedger:
    """The ledger of one hub process (lost with it)."""

    def __init__(self) -> None:
        self._entries: dict[str, LedgerEntry] = {}

    def issue(self, entry: LedgerEntry) -> None:
        if entry.ref.order_id in self._entries:
            raise HubConfigError(f"order {entry.ref.order_id} was already issued")
        self._entries[entry.ref.order_id] = entry

    def move(self, order_id: str, state: OrderState, *, buffer: int | None = None) -> None:
        entry = self._entries[order_id]
        check_transition(order_id, entry.state, state)
        self._entries[order_id] = replace(entry, state=state, buffer=buffer or entry.buffer)

    def entries(self) -> list[LedgerEntry]:
        return list(self._entries.values())
