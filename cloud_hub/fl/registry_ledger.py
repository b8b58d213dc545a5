"""The order ledger of one asynchronous run, kept in the registry (survives a hub restart).

:class:`RegistryOrderLedger` is the :class:`~cloud_hub.fl.order_ledger.OrderLedger` an
:class:`~cloud_hub.fl.async_run.AsyncBufferedRun` uses when the hub has a registry: every
order is a row of ``async_orders`` (:mod:`cloud_hub.registry.async_orders`) written before
the order is sent, every state change a compare-and-set checked against
:data:`~cloud_hub.fl.order_ledger.TRANSITIONS`. A new hub process opening the same run id
reads the held, folded and spent orders back; :meth:`AsyncBufferedRun.sync_held` then asks
the devices what they still hold.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from cloud_hub.fl.fedbuff import HeldUpdateRef
from cloud_hub.fl.order_ledger import LedgerEntry, OrderState, check_transition
from cloud_hub.registry import Registry
from cloud_hub.registry import async_orders as repo

__all__ = ["RegistryOrderLedger"]


class RegistryOrderLedger:
    """The orders of run ``run_id`` in ``registry``."""

    def __init__(
        self, registry: Registry, run_id: str, *, clock: Callable[[], float] = time.time
    ) -> None:
        self._registry = registry
        self.run_id = run_id
        self._clock = clock

    def issue(self, entry: LedgerEntry) -> None:
        with self._registry.session() as s:
            repo.issue_order(
                s,
                order_id=entry.ref.order_id,
                run_id=self.run_id,
                node_id=entry.ref.device,
                base_version=entry.ref.base_version,
                state=entry.state.value,
                now=self._clock(),
                device_id=entry.device_name,
                labelled_samples=entry.labelled_samples,
            )

    def move(self, order_id: str, state: OrderState, *, buffer: int | None = None) -> None:
        with self._registry.session() as s:
            current = OrderState(repo.get_order(s, order_id).state)
            check_transition(order_id, current, state)
            repo.move_order(
                s, order_id, state.value, expected=current.value, now=self._clock(), buffer=buffer
            )

    def entries(self) -> list[LedgerEntry]:
        with self._registry.session() as s:
            rows = repo.list_orders(s, self.run_id)
        return [
            LedgerEntry(
                HeldUpdateRef(r.node_id, r.order_id, r.base_version),
                OrderState(r.state),
                device_name=r.device_id,
                labelled_samples=r.labelled_samples,
                buffer=r.buffer,
            )
            for r in rows
        ]
