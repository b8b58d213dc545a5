"""Asynchronous buffered training on Flower's ``Grid``: orders, held updates, secure buffers.

:class:`AsyncBufferedRun` is the hub's side of FedBuff with SecAgg+ per buffer:

1. :meth:`~AsyncBufferedRun.order` sends eligible devices a ``train.order`` with the global
   model and its version. Each device trains and *holds* its update on disk
   (:mod:`shared.fl.async_client`); the hub learns only that it is ready.
2. :meth:`~AsyncBufferedRun.run_buffer` picks ``K`` ready, online, fresh holders
   (:func:`cloud_hub.fl.fedbuff.choose_buffer`) and runs one short SecAgg+ exchange over
   them with :class:`~cloud_hub.fl.workflow.GuardedSecAggPlusWorkflow` — Flower's stages,
   fedfleet's mask generator. Each device masks its own staleness-weighted update, so the
   hub learns only the buffer's sum; it folds it into a new global version and tells the
   folded devices to release their updates.
3. A device that drops mid-exchange is SecAgg+'s business: above the reconstruction
   threshold the buffer completes without it (its update stays held for a later buffer);
   below it nothing is aggregated. A member whose masked vector went out is spent either
   way (a device masks an update once, :mod:`shared.fl.held_update`): the hub asks the
   members left out of a buffer, drops the spent ones and orders those devices afresh;
   members that dropped before the collect stage keep their update for the next buffer.

The hub trusts its own order ledger (:mod:`cloud_hub.fl.order_ledger`, in memory or in the
registry), not a device's word, for base versions: a device can only offer an update for an
order this run issued, and never one already folded or spent.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, Parameters
from flwr.server import LegacyContext
from flwr.server.compat.grid_client_proxy import GridClientProxy
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key
from flwr.serverapp.grid import Grid
from numpy.typing import NDArray

from cloud_hub.errors import TrainingError
from cloud_hub.fl._buffer_strategy import BufferStrategy
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.fedbuff import FedBuffConfig, HeldUpdateRef, choose_buffer, fold_buffer
from cloud_hub.fl.order_ledger import LedgerEntry, MemoryOrderLedger, OrderLedger, OrderState
from cloud_hub.fl.workflow import GuardedSecAggPlusWorkflow, SecureRoundAbortedError
from shared.fl.config_keys import AsyncTrainingKey as K

__all__ = ["AsyncBufferedRun", "BufferRecord"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BufferRecord:
    """One buffer: who was in it, who was folded, their staleness, and what it produced."""

    number: int
    base_version: int  # the global version the buffer was folded into
    members: tuple[HeldUpdateRef, ...]
    folded: tuple[HeldUpdateRef, ...] = ()
    new_version: int | None = None
    secure: bool = True
    error: str | None = None

    @property
    def completed(self) -> bool:
        return self.new_version is not None

    def to_dict(self) -> dict[str, Any]:
        return {
            "buffer": self.number,
            "base_version": self.base_version,
            "new_version": self.new_version,
            "secure": self.secure,
            "error": self.error,
            "members": [m.device for m in self.members],
            "folded": [
                {
                    "device": m.device,
                    "order_id": m.order_id,
                    "base_version": m.base_version,
                    "staleness": self.base_version - m.base_version,
                }
                for m in self.folded
            ],
        }


class AsyncBufferedRun:
    """FedBuff over a Flower ``Grid``, SecAgg+ for every buffer."""

    def __init__(
        self,
        grid: Grid,
        initial_weights: Sequence[NDArray],
        *,
        fedbuff: FedBuffConfig,
        secagg: SecAggConfig,
        on_version: Callable[[int, list[NDArray], BufferRecord], None] | None = None,
        ledger: OrderLedger | None = None,
        version: int = 0,
    ) -> None:
        secagg.check_against(fedbuff.buffer_size)
        self._grid = grid
        self._fedbuff = fedbuff
        # Each member counts once (weight 1): the exchange returns the mean of w_i * delta_i.
        self._secagg = replace(secagg, max_weight=1.0)
        self._on_version = on_version
        self.version = version
        self.weights = [np.array(w, copy=True) for w in initial_weights]
        self.buffers: list[BufferRecord] = []
        self.ledger: OrderLedger = MemoryOrderLedger() if ledger is None else ledger

    def attach(self, grid: Grid) -> None:
        """Continue on another grid (the devices reconnected); call :meth:`sync_held` next."""
        self._grid = grid

    # -- orders and held updates ------------------------------------------------------------
    @property
    def holders(self) -> dict[int, HeldUpdateRef]:
        return {e.ref.device: e.ref for e in self.ledger.entries() if e.state is OrderState.HELD}

    def order(
        self,
        node_ids: Iterable[int],
        *,
        names: Mapping[int, str] | None = None,
        labelled: Mapping[int, float] | None = None,
    ) -> list[HeldUpdateRef]:
        """Order ``node_ids`` to train from the current version; returns the ready holders.

        Each order is in the ledger before it is sent (``names``/``labelled``: the devices'
        registry ids and labelled samples, kept with the order for eligibility)."""
        refs = {
            nid: HeldUpdateRef(nid, f"o-{uuid.uuid4().hex[:16]}", self.version) for nid in node_ids
        }
        for nid, ref in refs.items():
            self.ledger.issue(
                LedgerEntry(
                    ref,
                    OrderState.ORDERED,
                    device_name=(names or {}).get(nid),
                    labelled_samples=(labelled or {}).get(nid),
                )
            )
        model = ArrayRecord(self.weights)
        messages = [
            self._message(
                "train.order",
                nid,
                {K.ORDER_ID: ref.order_id, K.BASE_VERSION: ref.base_version},
                arrays={K.GLOBAL_RECORD: model},
            )
            for nid, ref in refs.items()
        ]
        previous = self.holders
        ready: list[HeldUpdateRef] = []
        for reply in self._grid.send_and_receive(messages):
            nid = reply.metadata.src_node_id
            if reply.has_error() or nid not in refs:
                log.warning(
                    "order to node %s failed: %s", nid, reply.error if reply.has_error() else "?"
                )
                continue
            answered = str(reply.content.config_records[K.ORDER_RECORD].get(K.ORDER_ID, ""))
            if answered != refs[nid].order_id:
                log.warning("node %s answered order %r, not %r", nid, answered, refs[nid].order_id)
                continue
            if nid in previous:  # a device holds one update: the new one replaced the old
                self.ledger.move(previous[nid].order_id, OrderState.SUPERSEDED)
            self.ledger.move(answered, OrderState.HELD)
            ready.append(refs[nid])
        answered_ids = {r.order_id for r in ready}
        for ref in refs.values():
            if ref.order_id not in answered_ids:
                self.ledger.move(ref.order_id, OrderState.FAILED)
        return ready

    def sync_held(self, node_ids: Iterable[int]) -> list[HeldUpdateRef]:
        """Ask devices what they hold (after a restart of hub or agent); returns live holders.

        Updates the ledger knows as folded or spent, or that the device reports spent, are
        released on the device; an unspent update of an order issued to that device is held.
        """
        entries = {e.ref.order_id: e for e in self.ledger.entries()}
        messages = [self._message("query.held", nid, {}) for nid in node_ids]
        live: list[HeldUpdateRef] = []
        drop: list[tuple[int, str]] = []
        for reply in self._grid.send_and_receive(messages):
            if reply.has_error():
                continue
            nid = reply.metadata.src_node_id
            record = reply.content.config_records[K.ORDER_RECORD]
            entry = entries.get(str(record.get(K.ORDER_ID, "")))
            if entry is None or entry.ref.device != nid:
                continue
            if entry.state in (OrderState.FOLDED, OrderState.SPENT):
                drop.append((nid, entry.ref.order_id))
            elif bool(record.get(K.SPENT, False)):
                self._spent(entry)
                drop.append((nid, entry.ref.order_id))
            elif entry.state in (OrderState.ORDERED, OrderState.HELD):
                if entry.state is OrderState.ORDERED:  # the hub stopped before the reply
                    self.ledger.move(entry.ref.order_id, OrderState.HELD)
                live.append(entry.ref)
        self._release(drop)
        return live

    def _spent(self, entry: LedgerEntry, buffer: int | None = None) -> None:
        if entry.state is OrderState.ORDERED:
            self.ledger.move(entry.ref.order_id, OrderState.HELD)
        log.info("update of node %s (order %s) is spent", entry.ref.device, entry.ref.order_id)
        self.ledger.move(entry.ref.order_id, OrderState.SPENT, buffer=buffer)

    def _forget_spent(self, members: Sequence[HeldUpdateRef], buffer: int) -> None:
        """Members left out of a buffer whose masked vector went out anyway: spent, dropped."""
        if not members:
            return
        wanted = {m.device: m for m in members}
        messages = [self._message("query.held", nid, {}) for nid in wanted]
        entries = {e.ref.order_id: e for e in self.ledger.entries()}
        spent: list[tuple[int, str]] = []
        for reply in self._grid.send_and_receive(messages):
            if reply.has_error():
                continue  # unreachable: still held; a spent one refuses the next exchange
            nid = reply.metadata.src_node_id
            record = reply.content.config_records[K.ORDER_RECORD]
            ref = wanted.get(nid)
            if ref is None or str(record.get(K.ORDER_ID, "")) != ref.order_id:
                continue
            entry = entries.get(ref.order_id)
            if bool(record.get(K.SPENT, False)) and entry is not None:
                if entry.state in (OrderState.ORDERED, OrderState.HELD):
                    self._spent(entry, buffer)
                spent.append((nid, ref.order_id))
        self._release(spent)

    # -- buffers --------------------------------------------------------------------------------
    def run_buffer(self, online: Iterable[int] | None = None) -> BufferRecord | None:
        """Fold one buffer of ``K`` ready holders among ``online`` (all when None), if any.

        Returns None when fewer than ``K`` fresh holders are online; raises nothing on a
        dropped exchange: the record says so and the updates stay held.
        """
        held = self.holders
        reachable = set(held) if online is None else set(online)
        candidates = [ref for nid, ref in held.items() if nid in reachable]
        choice = choose_buffer(candidates, self.version, self._fedbuff)
        for ref in choice.refused:
            log.info("update of node %s (order %s) is too stale; refused", ref.device, ref.order_id)
            self.ledger.move(ref.order_id, OrderState.REFUSED)
        self._release([(ref.device, ref.order_id) for ref in choice.refused])
        if not choice.ready:
            return None
        return self.fold_members(choice.members)

    def fold_members(self, members: Sequence[HeldUpdateRef]) -> BufferRecord:
        """Run the secure exchange over exactly ``members`` and fold what it returns."""
        number = len(self.buffers) + 1
        record = BufferRecord(number=number, base_version=self.version, members=tuple(members))
        try:
            weighted_sum, folded_nodes = self._secure_sum(number, members)
        except SecureRoundAbortedError as exc:
            record = replace(record, error=str(exc))
            self.buffers.append(record)
            log.warning("buffer %s: %s; unspent updates stay held", number, exc)
            self._forget_spent(members, number)
            return record
        folded = tuple(m for m in members if m.device in folded_nodes)
        self.weights = fold_buffer(self.weights, weighted_sum, len(folded), self._fedbuff.server_lr)
        self.version += 1
        record = replace(record, folded=folded, new_version=self.version)
        self.buffers.append(record)
        for ref in folded:
            self.ledger.move(ref.order_id, OrderState.FOLDED, buffer=number)
        self._release([(ref.device, ref.order_id) for ref in folded])
        self._forget_spent([m for m in members if m not in folded], number)
        if self._on_version is not None:
            self._on_version(self.version, self.weights, record)
        return record

    def _secure_sum(
        self, number: int, members: Sequence[HeldUpdateRef]
    ) -> tuple[list[NDArray], set[int]]:
        fit_config = {K.CURRENT_VERSION: self.version, K.MAX_STALENESS: self._fedbuff.max_staleness}
        run_id = self._grid.run.run_id
        proxies = {m.device: GridClientProxy(m.device, self._grid, run_id) for m in members}
        empty = Parameters(tensors=[], tensor_type="numpy.ndarray")
        strategy = BufferStrategy(
            [(proxies[m.device], FitIns(empty, dict(fit_config))) for m in members],
            expected_orders={m.device: m.order_id for m in members},
        )
        context = Context(
            run_id=run_id, node_id=0, node_config={}, state=RecordDict(), run_config={}
        )
        legacy = LegacyContext(context=context, strategy=strategy)
        legacy.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({Key.CURRENT_ROUND: number})
        legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
        s = self._secagg
        GuardedSecAggPlusWorkflow(
            num_shares=s.num_shares,
            reconstruction_threshold=s.reconstruction_threshold,
            max_weight=s.max_weight,
            clipping_range=s.clipping_range,
            quantization_range=s.quantization_range,
            modulus_range=s.modulus_range,
            timeout=s.timeout_s,
        )(self._grid, legacy)
        if strategy.result is None:
            raise TrainingError(f"buffer {number}: the secure exchange returned no sum")
        mean, folded_nodes = strategy.result
        return [np.asarray(a, dtype=np.float64) * len(folded_nodes) for a in mean], folded_nodes

    # -- messages -----------------------------------------------------------------------------
    def _message(
        self,
        message_type: str,
        node_id: int,
        config: dict[str, Any],
        *,
        arrays: dict[str, ArrayRecord] | None = None,
    ) -> Message:
        content = RecordDict({K.ORDER_RECORD: ConfigRecord(config), **(arrays or {})})
        return Message(content, node_id, message_type, group_id=f"v{self.version}")

    def _release(self, pairs: Sequence[tuple[int, str]]) -> None:
        if not pairs:
            return
        messages = [self._message("query.release", nid, {K.ORDER_ID: oid}) for nid, oid in pairs]
        for reply in self._grid.send_and_receive(messages):
            if reply.has_error():
                log.warning(
                    "release at node %s failed: %s", reply.metadata.src_node_id, reply.error
                )
