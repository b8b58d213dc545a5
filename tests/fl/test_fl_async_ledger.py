"""The hub's order ledger in the registry: a restarted hub continues an asynchronous run."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud_hub.fl.async_run import AsyncBufferedRun
from cloud_hub.fl.config import SecAggConfig
from cloud_hub.fl.fedbuff import FedBuffConfig
from cloud_hub.fl.order_ledger import OrderState
from cloud_hub.fl.registry_ledger import RegistryOrderLedger
from cloud_hub.registry import Registry
from cloud_hub.registry import async_orders as repo
from shared.fl.training import get_weights
from shared.models import build_model
from tests.fl.test_fl_async_buffers import MODEL, _grid, _held_deltas, _spec


def test_a_restarted_hub_keeps_its_order_ledger(tmp_path: Path, registry: Registry) -> None:
    initial = get_weights(build_model(MODEL, seed=0))
    grid = _grid(_spec(tmp_path, 4), 4)
    try:
        fedbuff = FedBuffConfig(buffer_size=3)
        run = AsyncBufferedRun(
            grid,
            initial,
            fedbuff=fedbuff,
            secagg=SecAggConfig(),
            ledger=RegistryOrderLedger(registry, "run-a"),
        )
        nodes = list(grid.get_node_ids())
        names = {n: f"dev-{i}" for i, n in enumerate(nodes)}
        run.order(nodes, names=names, labelled={n: 40.0 for n in nodes})
        first = run.run_buffer()
        assert first is not None and first.completed
        folded = {m.device for m in first.folded}
        (waiting,) = set(nodes) - folded

        # the hub process restarts: only the registry (and the devices' files) remain
        hub = AsyncBufferedRun(
            grid,
            run.weights,
            fedbuff=fedbuff,
            secagg=SecAggConfig(),
            ledger=RegistryOrderLedger(registry, "run-a"),
            version=run.version,
        )
        assert set(hub.holders) == {waiting}
        assert {r.device for r in hub.sync_held(nodes)} == {waiting}
        with registry.session() as s:
            orders = repo.list_orders(s, "run-a")
            last = repo.last_trained_orders(s, list(names.values()))
        assert sorted(o.state for o in orders) == ["folded", "folded", "folded", "held"]
        assert {o.buffer for o in orders if o.state == "folded"} == {1}
        assert set(last) == set(names.values())

        hub.order(sorted(folded)[:2], names=names)
        second = hub.run_buffer()
        assert second is not None and second.completed and hub.version == 2
        assert waiting in {m.device for m in second.folded}  # the order issued before the restart
        states = [e.state for e in hub.ledger.entries()]
        assert states.count(OrderState.FOLDED) == 6 and _held_deltas(tmp_path, grid) == {}
        assert all(np.isfinite(w).all() for w in hub.weights)
    finally:
        grid.close()
