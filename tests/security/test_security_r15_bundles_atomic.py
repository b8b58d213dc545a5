"""R15 (bundle part): the bundle folder is written atomically and a failure is not remembered
forever.

The attacks/faults (issue #13, finding 15): the delta cache wrote through a fixed temporary
name (a symlink planted there redirects the hub's write) and cached a transient build failure
forever in a ``.none`` marker (a base that was briefly unreadable never got a delta again);
bundle files and uploads bypassed ``shared.files``. Now every write is ``atomic_write`` (fresh
``O_EXCL`` temporary, fsync, rename), and failures live in a bounded in-memory cache that
expires.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from cloud_hub.bundles import BundleStore, default_store
from cloud_hub.delta import DeltaCache
from cloud_hub.keys import KeyStore
from cloud_hub.registry import catalog, open_registry
from cloud_hub.registry.bundle_index import register_bundle_bytes
from shared.errors import BundleError
from tests.security._support_api import recording_logs
from tests.security._support_bundles import hub_bundle


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def world(tmp_path: Path) -> tuple[KeyStore, BundleStore, str, str, bytes]:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    v1_id, v1 = hub_bundle(keys, store, 1)
    v2_id, _ = hub_bundle(keys, store, 2)
    return keys, store, v1_id, v2_id, v1


def _odd_files(store: BundleStore) -> list[str]:
    return sorted(
        str(p.relative_to(store.directory))
        for p in store.directory.rglob("*")
        if p.suffix in (".none", ".tmp") or p.name.endswith(".tmp")
    )


def test_a_transient_delta_failure_is_retried_not_cached_forever(
    world: tuple[KeyStore, BundleStore, str, str, bytes],
) -> None:
    _, store, v1_id, v2_id, v1 = world
    clock = Clock()
    cache = DeltaCache(store, retry_after_s=60, clock=clock)
    base = store.path_of(v1_id)
    base.write_bytes(v1[: len(v1) // 2])  # torn copy of the base: it does not verify now
    with recording_logs("cloud_hub.delta") as logs:
        assert cache.delta(v2_id, v1_id) is None
    assert any("not built" in m for m in logs.messages()), logs.messages()
    assert _odd_files(store) == []  # no .none marker, no temporary left behind

    base.write_bytes(v1)  # the base is whole again
    clock.now += 30
    assert cache.delta(v2_id, v1_id) is None  # within the retry window: still the full bundle
    clock.now += 31
    delta = cache.delta(v2_id, v1_id)
    assert delta is not None  # retried after the window
    assert store.cached_delta(v2_id, v1_id) == delta
    # a fresh process (a restarted hub) never inherits a failure either
    base.write_bytes(b"junk")
    assert DeltaCache(store).delta(v2_id, v1_id) == delta  # kept delta still served


def test_the_negative_cache_is_bounded(
    world: tuple[KeyStore, BundleStore, str, str, bytes],
) -> None:
    _, store, _, v2_id, _ = world
    cache = DeltaCache(store, max_failures=3)
    unknown = [f"{i:064x}" for i in range(10)]  # bases this hub never stored
    for base in unknown:
        assert cache.delta(v2_id, base) is None
    assert len(cache._failed) == 3
    assert list(cache._failed) == [(v2_id, b) for b in unknown[-3:]]


def test_a_symlink_planted_at_a_temporary_name_is_not_written_through(
    world: tuple[KeyStore, BundleStore, str, str, bytes], tmp_path: Path
) -> None:
    _, store, v1_id, v2_id, _ = world
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    final = store.delta_path(v2_id, v1_id)
    final.parent.mkdir(parents=True)
    # the old fixed name, and the name a predictable writer would use
    for name in (final.with_suffix(".tmp").name, f".{final.name}.tmp"):
        os.symlink(victim, final.parent / name)
    delta = DeltaCache(store).delta(v2_id, v1_id)
    assert delta is not None
    assert victim.read_text() == "precious"
    assert final.is_file() and not final.is_symlink() and final.read_bytes() == delta


def test_a_torn_bundle_file_is_replaced_on_store_and_never_shipped(
    world: tuple[KeyStore, BundleStore, str, str, bytes], tmp_path: Path
) -> None:
    keys, store, v1_id, _, v1 = world
    path = store.path_of(v1_id)
    path.write_bytes(v1[:100])  # what a crash during a non-atomic write leaves
    with pytest.raises(BundleError):
        store.read_verified(v1_id)  # R1: never shipped or delta'd as is
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    try:
        with registry.session() as s, pytest.raises(BundleError):
            register_bundle_bytes(s, store.read(v1_id), trust=store.trust(), now=time.time())
        with registry.session() as s:
            assert catalog.find_bundle(s, v1_id) is None
    finally:
        registry.close()
    stored = store.add(v1, require_newer=False)  # an upload of the same bundle repairs it
    assert stored.bundle_id == v1_id and path.read_bytes() == v1
    assert store.read_verified(v1_id).data == v1
    assert _odd_files(store) == []
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert keys.directory not in path.parents  # the bundle folder is not the key folder
