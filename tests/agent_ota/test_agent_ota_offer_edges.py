"""OTA edge cases of offers and downloads (issue #15), against the real updater in-process:
the same bundle re-offered with another chunk size, a kill during the health check, and
unsigned offer fields that are too long to persist or echo."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.ota.download import BundleDownload, regrid
from edge_agent.ota.machine import Phase
from shared.chunks import chunk_count, split_chunks
from shared.messages import Event, EventKind
from tests.agent_ota.agent_ota_helpers import (
    Harness,
    make_offer,
    onnx_model_bytes,
    rollback_command,
    with_command,
)


class Crash(BaseException):
    """Stands in for SIGKILL at a precise point (nothing after it runs)."""


def _downloads(h: Harness) -> list[str]:
    root = h.state_dir / "downloads"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_same_bundle_reoffered_with_another_chunk_size_keeps_bytes_and_commits(
    harness: Harness,
) -> None:
    first = harness.offer(1, chunk_size=256, model=onnx_model_bytes(64, 64, seed=1))
    harness.deliver(first, list(range(0, len(first.frames) // 2)))
    assert harness.updater.deployment is not None
    assert harness.updater.deployment.phase == Phase.DOWNLOADING
    bundle = first.bundle
    second = make_offer(bundle, harness.topics, chunk_size=1000)
    harness.updater.handle_deploy(second.command)
    dl = harness.updater.transfer.download
    assert dl is not None and dl.geometry == (len(bundle), 1000)
    kept = dl.received_count
    # the first half of the bytes arrived under the old split: the new chunks lying wholly
    # inside it are kept, not fetched again
    assert kept == (len(first.frames) // 2 * 256) // 1000 > 0
    harness.clock.advance(5)
    harness.updater.tick()
    asked = harness.requests()[-1]
    assert asked.bundle_id == second.bundle_id and asked.indices == list(
        range(kept, len(second.frames))
    )
    harness.answer(second.frames)
    assert harness.events(second.command.deployment_id)[-1] == EventKind.COMMITTED
    assert harness.events(first.command.deployment_id)[-1] == EventKind.FAILED  # superseded
    assert harness.active_bundle == second.bundle_id
    assert _downloads(harness) == []


def test_reoffer_with_another_chunk_size_after_restart_resumes_from_disk(
    harness: Harness,
) -> None:
    first = harness.offer(1, chunk_size=300, model=onnx_model_bytes(64, 64, seed=1))
    harness.deliver(first, list(range(len(first.frames) - 3)))
    harness.restart()
    second = make_offer(first.bundle, harness.topics, chunk_size=128)
    harness.deliver(second)  # the whole fan-out again: duplicates of kept chunks are no-ops
    assert harness.events(second.command.deployment_id)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == second.bundle_id


def test_chunks_of_the_old_split_are_dropped_not_stored(harness: Harness) -> None:
    first = harness.offer(1, chunk_size=256)
    harness.deliver(first, [0])
    second = make_offer(first.bundle, harness.topics, chunk_size=1000)
    harness.updater.handle_deploy(second.command)
    harness.chunks(first, list(range(1, len(first.frames))))  # late frames of the old split
    dl = harness.updater.transfer.download
    assert dl is not None and not dl.complete
    harness.chunks(second)
    assert harness.events(second.command.deployment_id)[-1] == EventKind.COMMITTED


@given(
    total=st.integers(1, 5000),
    old=st.integers(1, 700),
    new=st.integers(1, 700),
    seed=st.integers(0, 2**32 - 1),
)
def test_regrid_keeps_exactly_the_new_chunks_covered_by_received_bytes(
    total: int, old: int, new: int, seed: int
) -> None:
    import random

    rng = random.Random(seed)
    received = {i for i in range(chunk_count(total, old)) if rng.random() < 0.6}
    have = bytearray(total)
    for i in received:
        have[i * old : (i + 1) * old] = b"\x01" * len(have[i * old : (i + 1) * old])
    expected = {
        j for j in range(chunk_count(total, new)) if all(have[j * new : min((j + 1) * new, total)])
    }
    assert regrid(received, total, old, new) == expected


def test_download_directory_redrawn_for_new_split_holds_the_right_bytes(tmp_path: Path) -> None:
    data = bytes(range(256)) * 30
    old = split_chunks("b" * 64, data, 700)
    dl = BundleDownload(tmp_path / "d", bundle_id="b" * 64, total_size=len(data), chunk_size=700)
    for c in old[:5]:
        dl.store(c)
    dl.close()
    again = BundleDownload(tmp_path / "d", bundle_id="b" * 64, total_size=len(data), chunk_size=512)
    new = split_chunks("b" * 64, data, 512)
    assert again.missing() == list(range(5 * 700 // 512, len(new)))
    for i in again.missing():
        again.store(new[i])
    assert again.complete and again.read_all() == data


def test_kill_during_health_check_leaves_no_download_on_disk(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    offer = harness.offer(1)
    seen: list[list[str]] = []

    def killed_mid_check(*_: object) -> None:
        seen.append(_downloads(harness))
        raise Crash

    monkeypatch.setattr(harness.updater, "_check_health", killed_mid_check)
    with pytest.raises(Crash):
        harness.deliver(offer)
    assert seen == [[]]  # the download was gone before the check started
    assert harness.updater.deployment is not None
    assert harness.updater.deployment.phase == Phase.HEALTH_CHECK
    assert _downloads(harness) == []
    harness.restart()  # the check runs again from the slot, without the download
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    assert harness.active_bundle == offer.bundle_id


def test_download_left_by_a_kill_after_install_is_removed_at_restart(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kill between ``installed`` and the cleanup (or an older agent) leaves the bundle on
    disk in HealthCheck: the restart removes it, since nothing reads it any more."""
    offer = harness.offer(1)

    def killed_mid_check(*_: object) -> None:
        raise Crash

    monkeypatch.setattr(harness.updater, "_check_health", killed_mid_check)
    with pytest.raises(Crash):
        harness.deliver(offer)
    stale = harness.state_dir / "downloads" / offer.bundle_id
    stale.mkdir(parents=True)
    (stale / "bundle.part").write_bytes(b"x" * 1000)
    harness.restart()
    assert harness.events(offer.command.deployment_id)[-1] == EventKind.COMMITTED
    assert _downloads(harness) == []


@pytest.mark.parametrize("field", ["deployment_id", "bundle_id", "command_id"])
def test_overlong_unsigned_id_is_refused_without_echo(harness: Harness, field: str) -> None:
    running = harness.offer(1)
    harness.deliver(running, [0])
    huge = "d" * 100_000
    bad = with_command(harness.offer(2), **{field: huge})
    harness.updater.handle_deploy(bad.command)
    rejected = [m for m in harness.sent if isinstance(m, Event) and m.kind == EventKind.REJECTED]
    assert len(rejected) == 1
    report = rejected[0]
    assert report.deployment_id is None
    assert f"{field} must be 1-128" in report.detail and "100000 characters" in report.detail
    assert huge not in report.encode().decode()
    state = (harness.state_dir / "ota_state.json").read_text()
    assert huge not in state
    # the running download is untouched and still finishes
    dep = harness.updater.deployment
    assert dep is not None and dep.deployment_id == running.command.deployment_id
    harness.chunks(running)
    assert harness.events(running.command.deployment_id)[-1] == EventKind.COMMITTED


@pytest.mark.parametrize("value", ["dep/1", "dep+", "", "dep 1", "dep\n"])
def test_malformed_deployment_id_is_refused(harness: Harness, value: str) -> None:
    bad = with_command(harness.offer(1), deployment_id=value)
    harness.updater.handle_deploy(bad.command)
    assert [m.kind for m in harness.sent if isinstance(m, Event)] == [EventKind.REJECTED]
    assert harness.updater.deployment is None and _downloads(harness) == []


def test_rollback_command_with_overlong_deployment_id_is_refused_without_echo(
    harness: Harness,
) -> None:
    v1 = harness.offer(1)
    harness.deliver(v1)
    huge = "r" * 100_000
    cmd = replace(
        rollback_command(
            harness.auth,
            model_name="sensor-mlp",
            to_version=1,
            to_bundle_id=v1.bundle_id,
            from_bundle_id=v1.bundle_id,
        ),
        deployment_id=huge,
    )
    harness.updater.handle_rollback(cmd)
    [report] = [m for m in harness.sent if isinstance(m, Event) and m.kind == EventKind.REJECTED]
    assert report.deployment_id is None and "deployment_id must be 1-128" in report.detail
    assert huge not in (harness.state_dir / "ota_state.json").read_text()
    assert harness.active_bundle == v1.bundle_id
