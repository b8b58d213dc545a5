"""Pure delivery bookkeeping: device progress from events, repair planning, rate limiting."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from cloud_hub.delivery.progress import (
    DeliveryState,
    DeploymentResult,
    DeviceProgress,
    TokenBucket,
    advance,
    plan_repair,
)
from shared.messages import Event


def ev(kind: str, eid: str, detail: str = "") -> Event:
    return Event(device_id="d", event_id=eid, kind=kind, deployment_id="x", detail=detail)


def test_lifecycle_to_commit_with_duplicates_and_stale_events() -> None:
    p = DeviceProgress("d")
    assert not p.started
    p = advance(p, ev("download_started", "1"), 1.0)
    assert p.state is DeliveryState.DOWNLOADING and p.first_seen == 1.0
    done = ev("download_complete", "2")
    p = advance(p, done, 2.0)
    assert p.downloaded_at == 2.0 and p.downloaded_ts == done.ts  # hub's and device's time
    same = advance(p, ev("download_complete", "2"), 3.0)  # duplicate delivery
    assert same is p
    again = advance(p, ev("download_complete", "2b"), 3.0)  # a repeat after a restart
    assert again.downloaded_at == 2.0 and again.downloaded_ts == done.ts
    for i, kind in enumerate(["verified", "installed", "health_ok", "committed"]):
        p = advance(p, ev(kind, f"k{i}"), 4.0 + i)
    assert p.terminal and p.state is DeliveryState.COMMITTED and p.finished == 7.0
    assert advance(p, ev("failed", "late"), 9.0) is p  # terminal is final
    assert p.history == (
        "download_started",
        "download_complete",
        "verified",
        "installed",
        "health_ok",
        "committed",
    )


def test_failures_and_unknown_kinds() -> None:
    p = advance(DeviceProgress("d"), ev("some_future_kind", "1"), 1.0)
    assert p.started and p.state is DeliveryState.PENDING
    p = advance(p, ev("health_failed", "2", "smoke inference crashed"), 2.0)
    assert p.state is DeliveryState.ROLLING_BACK and not p.terminal
    p = advance(p, ev("rolled_back", "3"), 3.0)
    assert p.terminal and p.detail == "smoke inference crashed"
    r = advance(DeviceProgress("e"), ev("rejected", "1", "RollbackError: not newer"), 1.0)
    assert r.state is DeliveryState.REJECTED and r.terminal


def test_result_views() -> None:
    devices = {
        "a": advance(DeviceProgress("a"), ev("committed", "1"), 1.0),
        "b": advance(DeviceProgress("b"), ev("failed", "1"), 1.0),
        "c": DeviceProgress("c"),
    }
    r = DeploymentResult(deployment_id="x", bundle_id="b", devices=devices, started_at=0.0)
    assert r.committed == ["a"] and r.unfinished == ["c"] and not r.done
    assert not r.all_committed
    assert r.summary() == {"committed": 1, "failed": 1, "pending": 1}


@given(
    st.lists(st.integers(min_value=-5, max_value=60), max_size=80),
    st.frozensets(st.integers(min_value=0, max_value=49), max_size=10),
    st.integers(min_value=1, max_value=20),
)
def test_plan_repair_is_valid_unique_bounded(
    req: list[int], pending: frozenset[int], cap: int
) -> None:
    plan = plan_repair(req, chunk_count=50, pending=pending, max_indices=cap)
    assert plan == sorted(set(plan))
    assert len(plan) <= cap
    assert all(0 <= i < 50 and i not in pending and i in req for i in plan)
    wanted = {i for i in req if 0 <= i < 50} - pending
    assert len(plan) == min(cap, len(wanted))


def test_token_bucket_limits_rate() -> None:
    bucket = TokenBucket(rate=1000.0, burst=500.0)
    assert bucket.delay(500, now=0.0) == 0.0  # the burst
    assert bucket.delay(1000, now=0.0) == 1.0  # then the rate
    assert bucket.delay(100, now=2.0) == 0.0


def test_repair_queue_dedupes_bounds_and_round_robins() -> None:
    from cloud_hub.delivery.repairs import RepairQueue

    q = RepairQueue(max_cached_bundles=2, max_indices=3, max_pending=5)
    frames = [bytes([i]) for i in range(10)]
    q.cache("b1", frames)
    assert q.request("a", "unknown", [1]) is None
    assert q.request("a", "b1", [9, 1, 1, 42, -1, 2, 3]) == 3  # valid, unique, at most 3
    assert q.request("a", "b1", [1, 2]) == 0  # already queued
    assert q.request("b", "b1", [5, 6, 7]) == 2  # only 5 pending in total
    served = [(i.device_id, i.index) for i in iter(lambda: q.next(timeout=0.01), None)]
    assert served == [("a", 1), ("b", 5), ("a", 2), ("b", 6), ("a", 9)]
    assert q.request("c", "b1", [], full=True) == 3  # "everything", bounded
    q.cache("b2", frames)
    q.cache("b3", frames)  # b1 is evicted (least recently deployed)
    assert q.request("c", "b1", [0]) is None
    q.close()
    assert q.next(timeout=0.01) is None
