"""Asynchronous training orders: the hub's order ledger in the registry (table ``async_orders``).

Each order a run issues is a row: the run, the Flower node and registry device it went to,
the base version it trains from, its state (``ordered``, ``held``, ``folded``, ``spent``,
``refused``, ``superseded``, ``failed``; the transition table is
:data:`cloud_hub.fl.order_ledger.TRANSITIONS`), the buffer that folded or spent it, and the
device's labelled samples when it was ordered (what eligibility counts new samples from).

A state change is a compare-and-set (:func:`move_order` names the state it expects), so two
hub processes never both fold or spend one order.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from cloud_hub.registry._rows import to_record
from cloud_hub.registry.errors import ConflictError, NotFoundError, RegistryInputError
from cloud_hub.registry.tables import AsyncOrder

__all__ = [
    "AsyncOrderRecord",
    "get_order",
    "issue_order",
    "last_trained_orders",
    "list_orders",
    "move_order",
]

_MAX_NODE_ID = 2**64 - 1
#: states of an order whose device trained on its samples (it counts as a contribution)
TRAINED_STATES = ("held", "folded", "spent", "refused", "superseded")


@dataclass(frozen=True)
class AsyncOrderRecord:
    order_id: str
    run_id: str
    node_id: int
    device_id: str | None
    base_version: int
    state: str
    buffer: int | None
    labelled_samples: float | None
    created_at: float
    updated_at: float


def _record(row: AsyncOrder) -> AsyncOrderRecord:
    return to_record(AsyncOrderRecord, row, node_id=int(row.node_id))


def issue_order(
    session: Session,
    *,
    order_id: str,
    run_id: str,
    node_id: int,
    base_version: int,
    state: str,
    now: float,
    device_id: str | None = None,
    labelled_samples: float | None = None,
) -> AsyncOrderRecord:
    """Record a new order; :class:`ConflictError` when the id exists."""
    if not 0 <= node_id <= _MAX_NODE_ID:
        raise RegistryInputError(f"node id {node_id} is not an unsigned 64-bit integer")
    if base_version < 0:
        raise RegistryInputError(f"base version {base_version} is negative")
    if session.get(AsyncOrder, order_id) is not None:
        raise ConflictError(f"order {order_id} was already issued")
    row = AsyncOrder(
        order_id=order_id,
        run_id=run_id,
        node_id=str(node_id),
        device_id=device_id,
        base_version=base_version,
        state=state,
        buffer=None,
        labelled_samples=labelled_samples,
        created_at=now,
        updated_at=now,
    )
    session.add(row)
    session.flush()
    return _record(row)


def get_order(session: Session, order_id: str) -> AsyncOrderRecord:
    row = session.get(AsyncOrder, order_id)
    if row is None:
        raise NotFoundError(f"no order {order_id}")
    return _record(row)


def move_order(
    session: Session,
    order_id: str,
    state: str,
    *,
    expected: str,
    now: float,
    buffer: int | None = None,
) -> None:
    """Set ``state`` if the order is in ``expected`` (compare-and-set), else raise.

    :class:`NotFoundError` for an unknown order, :class:`ConflictError` when another state
    won (a concurrent hub process moved it first).
    """
    values: dict[str, object] = {"state": state, "updated_at": now}
    if buffer is not None:
        values["buffer"] = buffer
    result = session.execute(
        update(AsyncOrder)
        .where(AsyncOrder.order_id == order_id, AsyncOrder.state == expected)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    if result.rowcount == 1:  # type: ignore[attr-defined]
        return
    current = session.get(AsyncOrder, order_id)
    if current is None:
        raise NotFoundError(f"no order {order_id}")
    raise ConflictError(
        f"order {order_id} is {current.state}, not {expected}; not moved to {state}"
    )


def list_orders(
    session: Session, run_id: str, *, states: Collection[str] | None = None
) -> list[AsyncOrderRecord]:
    """The orders of one run, oldest first (optionally only those in ``states``)."""
    query = select(AsyncOrder).where(AsyncOrder.run_id == run_id)
    if states is not None:
        query = query.where(AsyncOrder.state.in_(list(states)))
    rows = session.scalars(query.order_by(AsyncOrder.created_at, AsyncOrder.order_id))
    return [_record(r) for r in rows]


def last_trained_orders(
    session: Session, device_ids: Sequence[str], *, exclude_run: str | None = None
) -> dict[str, AsyncOrderRecord]:
    """Per device, the newest order it trained for: its last contribution (of any run but
    ``exclude_run``)."""
    newest: dict[str, AsyncOrderRecord] = {}
    ids = list(dict.fromkeys(device_ids))
    for i in range(0, len(ids), 500):
        query = select(AsyncOrder).where(
            AsyncOrder.device_id.in_(ids[i : i + 500]), AsyncOrder.state.in_(TRAINED_STATES)
        )
        if exclude_run is not None:
            query = query.where(AsyncOrder.run_id != exclude_run)
        rows = session.scalars(query.order_by(AsyncOrder.created_at, AsyncOrder.order_id))
        for row in rows:  # ascending: the newest one wins
            newest[str(row.device_id)] = _record(row)
    return newest
