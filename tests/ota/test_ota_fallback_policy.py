"""The full-bundle fallback policy (R8) and the repair cache's handling of a bundle split
again with another chunk size (#15), as pure bookkeeping with explicit times."""

from __future__ import annotations

from cloud_hub.delivery.fallback import FallbackDecision, FullFallbacks
from cloud_hub.delivery.repairs import RepairQueue
from shared.chunks import encode_chunk, split_chunks

Q, D = FallbackDecision, "d" * 64


def _policy(**kw: float) -> FullFallbacks:
    args = {"max_deltas": 4, "max_pending": 3, "min_interval_s": 60.0, **kw}
    return FullFallbacks(**args)  # type: ignore[arg-type]


def test_only_targets_of_a_known_delta_are_queued() -> None:
    p = _policy()
    assert p.request("a", D, 0.0) == Q.UNKNOWN
    p.offer(D, b"full", "dep-1", ["a", "b"])
    assert p.request("x", D, 0.0) == Q.NOT_TARGET
    assert p.request("a", D, 0.0) == Q.QUEUED


def test_repeats_are_coalesced_and_waiting_devices_share_one_batch() -> None:
    p = _policy()
    p.offer(D, b"full", "dep-1", ["a", "b"])
    assert p.request("a", D, 0.0) == Q.QUEUED
    assert p.needs_batch(D) and not p.needs_batch(D)  # one batch scheduled
    assert p.request("a", D, 0.1) == Q.COALESCED
    assert p.request("b", D, 0.2) == Q.QUEUED
    batch = p.take(D)
    assert batch is not None and batch.device_ids == ("a", "b")
    assert batch.full == b"full" and batch.deployment_id == "dep-1"
    assert p.request("a", D, 0.3) == Q.COALESCED  # being sent
    assert p.take(D) is None  # nobody else waits: the batch ends
    p.done(batch, now=1.0)
    assert p.request("a", D, 30.0) == Q.RATE_LIMITED
    assert p.request("a", D, 61.0) == Q.QUEUED
    assert p.needs_batch(D)


def test_pending_devices_are_bounded() -> None:
    p = _policy(max_pending=2)
    p.offer(D, b"full", "dep-1", ["a", "b", "c"])
    assert [p.request(d, D, 0.0) for d in "abc"] == [Q.QUEUED, Q.QUEUED, Q.BUSY]


def test_repeated_offer_adds_targets_and_old_deltas_are_forgotten() -> None:
    p = _policy(max_deltas=2)
    p.offer(D, b"full", "dep-1", ["a"])
    p.offer(D, b"full", "dep-1", ["b"])
    assert p.request("b", D, 0.0) == Q.QUEUED
    p.offer("e" * 64, b"f2", "dep-2", ["a"])
    p.offer("f" * 64, b"f3", "dep-3", ["a"])
    assert p.request("a", D, 0.0) == Q.UNKNOWN


def test_rate_limit_memory_is_bounded_by_the_interval() -> None:
    p = _policy(max_pending=1000, min_interval_s=10.0)
    p.offer(D, b"full", "dep-1", [f"d{i}" for i in range(100)])
    for i in range(100):
        assert p.request(f"d{i}", D, float(i)) == Q.QUEUED
        batch = p.take(D)
        assert batch is not None
        p.done(batch, now=float(i))
    assert len(p._last_sent) <= 11


def _frames(data: bytes, chunk_size: int) -> list[bytes]:
    return [encode_chunk(c) for c in split_chunks("b" * 64, data, chunk_size)]


def test_repair_cache_takes_the_new_split_of_a_reoffered_bundle() -> None:
    data = bytes(range(256)) * 20
    q = RepairQueue(max_cached_bundles=2, max_indices=100, max_pending=1000)
    q.cache("b" * 64, _frames(data, 1000))
    assert q.request("dev", "b" * 64, [0, 1]) == 2
    new = _frames(data, 512)
    q.cache("b" * 64, new)  # re-offered with another chunk size
    assert q.request("dev", "b" * 64, [7]) == 1
    item = q.next(timeout=0.1)
    assert item is not None and item.frame == new[7]  # not a frame of the old split
    assert q.next(timeout=0.01) is None  # pending indices of the old split were dropped
    q.cache("b" * 64, _frames(data, 512))  # the same split again keeps what is queued
    assert q.request("dev", "b" * 64, [1]) == 1
    q.cache("b" * 64, _frames(data, 512))
    assert q.next(timeout=0.1) is not None


def test_a_batch_that_failed_to_send_may_be_asked_for_again() -> None:
    p = _policy()
    p.offer(D, b"full", "dep-1", ["a"])
    assert p.request("a", D, 0.0) == Q.QUEUED
    batch = p.take(D)
    assert batch is not None
    p.done(batch, now=1.0, sent=False)  # e.g. the broker went away mid-publish
    assert p.request("a", D, 2.0) == Q.QUEUED
