"""R7: the unsigned download geometry of an offer (``total_size``, ``chunk_size``) is tied to
the signed manifest before the agent allocates anything.

The attack: someone who controls the broker replays a genuine, validly signed offer with
``chunk_size=1`` (millions of chunks: a received map, a missing-chunks list and requests of
that length) or with an inflated ``total_size`` (a preallocated file of a gigabyte). The real
updater must refuse both before it creates a download, report the refusal with its reason,
keep the installed model and accept the genuine offer afterwards.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from edge_agent.ota import transfer as transfer_module
from edge_agent.ota.machine import Phase
from shared.chunks import chunk_count
from shared.messages import Event, EventKind
from tests.agent_ota.agent_ota_helpers import (
    Clock,
    Harness,
    make_authority,
    onnx_model_bytes,
    with_command,
)


@pytest.fixture
def harness(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> Harness:
    """The real ``OtaUpdater`` over a real state directory, its reports recorded."""
    caplog.set_level("WARNING", logger="edge_agent.ota")
    return Harness(state_dir=tmp_path / "state", auth=make_authority(), clock=Clock())


def _rejections(h: Harness) -> list[Event]:
    return [m for m in h.sent if isinstance(m, Event) and m.kind == EventKind.REJECTED]


def _downloads(h: Harness) -> list[Path]:
    root = h.state_dir / "downloads"
    return sorted(root.iterdir()) if root.is_dir() else []


@pytest.fixture
def installed(harness: Harness) -> str:
    v1 = harness.offer(1)
    harness.deliver(v1)
    assert harness.events(v1.command.deployment_id)[-1] == EventKind.COMMITTED
    return v1.bundle_id


def _no_allocation(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Record any attempt to create a download (file, received map, chunk list)."""
    created: list[Any] = []
    real = transfer_module.BundleDownload

    def spy(*args: Any, **kwargs: Any) -> Any:
        created.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transfer_module, "BundleDownload", spy)
    return created


def _assert_refused(
    h: Harness, deployment_id: str, reason: str, v1: str, caplog: pytest.LogCaptureFixture
) -> None:
    [report] = [e for e in _rejections(h) if e.deployment_id == deployment_id]
    assert "GeometryError" in report.detail and reason in report.detail, report.detail
    logged = [r.getMessage() for r in caplog.records if deployment_id in r.getMessage()]
    assert any("rejected" in m and reason in m for m in logged), logged
    assert report.data["error"] == "GeometryError"
    assert h.active_bundle == v1  # the installed model is kept ...
    active = h.updater.slots.active_name()
    assert active is not None and h.updater.slots.check(active)  # ... intact
    dep = h.updater.deployment
    assert dep is None or dep.phase != Phase.DOWNLOADING
    assert _downloads(h) == [] and not h.subscribed


def test_replayed_offer_with_chunk_size_one_is_refused_before_allocation(
    harness: Harness,
    installed: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    genuine = harness.offer(2, model=onnx_model_bytes(256, 256, seed=2))  # 256 KiB
    size = genuine.command.total_size
    replay = with_command(
        genuine, deployment_id="replayed-1", chunk_size=1, chunk_count=chunk_count(size, 1)
    )
    created = _no_allocation(monkeypatch)
    harness.updater.handle_deploy(replay.command)
    assert created == []
    _assert_refused(harness, "replayed-1", f"makes {size} chunks", installed, caplog)
    assert harness.requests() == []  # no request list was built either
    # the genuine offer, delivered afterwards, installs
    harness.deliver(genuine)
    assert harness.events(genuine.command.deployment_id)[-1] == EventKind.COMMITTED
    assert created and harness.active_bundle == genuine.bundle_id


def test_replayed_offer_with_inflated_total_size_is_refused_before_allocation(
    harness: Harness,
    installed: str,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    genuine = harness.offer(2)
    huge = harness.limits.max_bundle_bytes  # within the device limit, not the manifest's size
    replay = with_command(
        genuine,
        deployment_id="replayed-2",
        total_size=huge,
        chunk_count=chunk_count(huge, genuine.command.chunk_size),
    )
    created = _no_allocation(monkeypatch)
    harness.updater.handle_deploy(replay.command)
    assert created == []
    _assert_refused(harness, "replayed-2", "is not the signed manifest's", installed, caplog)
    harness.deliver(genuine)
    assert harness.active_bundle == genuine.bundle_id


def test_shrunken_total_size_is_refused(
    harness: Harness, installed: str, caplog: pytest.LogCaptureFixture
) -> None:
    genuine = harness.offer(2)
    short = genuine.command.total_size - 1
    replay = with_command(
        genuine,
        deployment_id="replayed-3",
        total_size=short,
        chunk_count=chunk_count(short, genuine.command.chunk_size),
    )
    harness.updater.handle_deploy(replay.command)
    _assert_refused(harness, "replayed-3", "is not the signed manifest's", installed, caplog)


def test_replayed_geometry_does_not_cancel_a_running_download(
    harness: Harness, installed: str
) -> None:
    """The refusal happens before the running deployment is superseded: nothing is lost."""
    genuine = harness.offer(2, model=onnx_model_bytes(256, 256, seed=2), chunk_size=4096)
    harness.deliver(genuine, [0])
    replay = with_command(
        genuine,
        deployment_id="replayed-4",
        chunk_size=1,
        chunk_count=chunk_count(genuine.command.total_size, 1),
    )
    harness.updater.handle_deploy(replay.command)
    assert [e.deployment_id for e in _rejections(harness)] == ["replayed-4"]
    dep = harness.updater.deployment
    assert dep is not None and dep.deployment_id == genuine.command.deployment_id
    assert dep.phase == Phase.DOWNLOADING
    harness.chunks(genuine)
    assert harness.events(genuine.command.deployment_id)[-1] == EventKind.COMMITTED
