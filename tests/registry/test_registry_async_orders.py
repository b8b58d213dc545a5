"""The order ledger in the registry (``async_orders``), on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.fedbuff import HeldUpdateRef
from cloud_hub.fl.order_ledger import LedgerEntry, MemoryOrderLedger, OrderState
from cloud_hub.fl.registry_ledger import RegistryOrderLedger
from cloud_hub.registry import ConflictError, NotFoundError, Registry, RegistryInputError
from cloud_hub.registry import async_orders as repo

T0 = 1_800_000_000.0
BIG_NODE = 2**64 - 5  # Flower node ids are unsigned 64-bit


def test_orders_round_trip_and_move_only_from_the_expected_state(registry: Registry) -> None:
    with registry.session() as s:
        repo.issue_order(
            s,
            order_id="o-1",
            run_id="r",
            node_id=BIG_NODE,
            base_version=3,
            state="ordered",
            now=T0,
            device_id="d1",
            labelled_samples=120.0,
        )
        with pytest.raises(ConflictError):
            repo.issue_order(
                s, order_id="o-1", run_id="r", node_id=1, base_version=0, state="ordered", now=T0
            )
    with registry.session() as s:
        repo.move_order(s, "o-1", "held", expected="ordered", now=T0 + 1)
        with pytest.raises(ConflictError, match="is held, not ordered"):
            repo.move_order(s, "o-1", "failed", expected="ordered", now=T0 + 2)
        with pytest.raises(NotFoundError):
            repo.move_order(s, "nope", "held", expected="ordered", now=T0)
        repo.move_order(s, "o-1", "folded", expected="held", now=T0 + 3, buffer=2)
    with registry.session() as s:
        (order,) = repo.list_orders(s, "r")
        assert order.node_id == BIG_NODE and order.device_id == "d1"
        assert (order.state, order.buffer, order.base_version) == ("folded", 2, 3)
        assert order.labelled_samples == 120.0 and order.updated_at == T0 + 3
        assert repo.list_orders(s, "r", states=["held"]) == []
        assert repo.list_orders(s, "other") == []
        with pytest.raises(RegistryInputError):
            repo.issue_order(
                s, order_id="o-2", run_id="r", node_id=-1, base_version=0, state="ordered", now=T0
            )


def test_last_trained_order_per_device_skips_orders_never_trained(registry: Registry) -> None:
    with registry.session() as s:
        for i, (device, state) in enumerate(
            [("d1", "folded"), ("d1", "held"), ("d1", "failed"), ("d2", "ordered")]
        ):
            repo.issue_order(
                s,
                order_id=f"o-{i}",
                run_id="r",
                node_id=i,
                base_version=0,
                state=state,
                now=T0 + i,
                device_id=device,
                labelled_samples=float(10 * i),
            )
    with registry.session() as s:
        last = repo.last_trained_orders(s, ["d1", "d2", "d3"])
    assert set(last) == {"d1"} and last["d1"].order_id == "o-1"


def _entry(order_id: str, node: int, state: OrderState = OrderState.ORDERED) -> LedgerEntry:
    return LedgerEntry(HeldUpdateRef(node, order_id, 1), state, device_name=f"dev-{node}")


@pytest.mark.parametrize("kind", ["memory", "registry"])
def test_ledgers_follow_the_transition_table(registry: Registry, kind: str) -> None:
    ledger = MemoryOrderLedger() if kind == "memory" else RegistryOrderLedger(registry, "r1")
    ledger.issue(_entry("o-1", BIG_NODE))
    ledger.move("o-1", OrderState.HELD)
    with pytest.raises(HubConfigError, match="no transition from held to failed"):
        ledger.move("o-1", OrderState.FAILED)
    ledger.move("o-1", OrderState.SPENT, buffer=4)
    for later in OrderState:
        with pytest.raises(HubConfigError):
            ledger.move("o-1", later)  # spent is final
    (entry,) = ledger.entries()
    assert entry.ref == HeldUpdateRef(BIG_NODE, "o-1", 1)
    assert (entry.state, entry.buffer, entry.device_name) == (
        OrderState.SPENT,
        4,
        f"dev-{BIG_NODE}",
    )


def test_a_new_hub_process_reads_the_ledger_back(registry: Registry) -> None:
    first = RegistryOrderLedger(registry, "r1", clock=lambda: T0)
    first.issue(_entry("o-1", 11))
    first.issue(_entry("o-2", 12))
    first.move("o-1", OrderState.HELD)
    first.move("o-2", OrderState.FAILED)
    RegistryOrderLedger(registry, "r2").issue(_entry("o-3", 11))  # another run's order
    restarted = RegistryOrderLedger(registry, "r1")
    states = {e.ref.order_id: e.state for e in restarted.entries()}
    assert states == {"o-1": OrderState.HELD, "o-2": OrderState.FAILED}


def test_device_condition_facts_read_recent_readings_per_metric(registry: Registry) -> None:
    from cloud_hub.registry import TelemetryAggregate, devices, reports
    from cloud_hub.registry.device_conditions import device_condition_facts
    from shared.messages import Hello

    now = T0 + 3600
    with registry.session() as s:
        devices.record_hellos(
            s, [Hello(d, "rpi4", "0.1", [], 1 << 30, 1 << 30) for d in ("d1", "d2")], now=T0
        )
        devices.set_online(s, {"d1": True, "d2": False})
        rows = [
            TelemetryAggregate("d1", int(ts // 60), 0, m, 1, v, v, v, ts)
            for ts, m, v in [
                (now - 7200, "temperature_c", 99.0),  # too old: outside the window
                (now - 120, "temperature_c", 60.0),
                (now - 60, "temperature_c", 65.0),
                (now - 60, "request_count", 10.0),
                (now - 60, "cpu_percent", 3.0),  # not asked for
            ]
        ]
        reports.merge_telemetry(s, rows)
    with registry.session() as s:
        facts = device_condition_facts(
            s, ["d1", "d2", "nope"], ["temperature_c", "request_count"], since=now - 600
        )
    assert set(facts) == {"d1", "d2"}
    d1 = facts["d1"]
    assert d1.online and not facts["d2"].online and facts["d2"].readings == {}
    assert d1.readings["temperature_c"] == ((now - 120, 60.0), (now - 60, 65.0))
    assert set(d1.readings) == {"temperature_c", "request_count"}
    assert d1.newest("temperature_c") == 65.0 and d1.newest_ts == now - 60
