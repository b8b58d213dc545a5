"""The smallest bundle per device, over real agent processes (``edge-agent run``), a real hub
(``cloud-hub serve``) and the real Mosquitto.

Three devices end up running three different versions (v1, v2, v3); a rollout of v4 then
sends each the delta against what it runs — or the full bundle where no delta is smaller
(v3 shares no bytes with v4). The bytes each device downloaded are measured by the device
(its agent counts the chunk bytes it received and reports them with ``download_complete``)
and must equal, per device, what the rollout status (REST API) says it was sent.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
from onnx import helper, numpy_helper
from sqlalchemy import select

from cloud_hub.bundles import default_store
from cloud_hub.registry import devices
from cloud_hub.registry.tables import EventRow
from shared.messages import EventKind
from simulations.harness.polling import eventually
from tests.onnx_models import checked_model

from .rollout_support import World, running_world

pytestmark = pytest.mark.integration

PAD = 24 * 1024  # bytes of each opaque tensor: what a delta can save


def _model(pad_a: bytes, pad_b: bytes) -> bytes:
    """A loadable 4 -> 3 linear model carrying two opaque uint8 tensors (random bytes do not
    compress: a version that shares none of them with another gets no useful delta)."""
    w = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    inits = [
        numpy_helper.from_array(w, "W"),
        numpy_helper.from_array(np.frombuffer(pad_a, np.uint8), "pad_a"),
        numpy_helper.from_array(np.frombuffer(pad_b, np.uint8), "pad_b"),
    ]
    return checked_model([helper.make_node("MatMul", ["input", "W"], ["logits"])], inits, "padded")


def _touch(data: bytes, at: int) -> bytes:
    changed = bytearray(data)
    changed[at : at + 16] = bytes((b + 1) % 256 for b in changed[at : at + 16])
    return bytes(changed)


def _versions() -> dict[int, bool | bytes]:
    rng = np.random.default_rng(7)
    a, b, c, d = (rng.bytes(PAD) for _ in range(4))
    a2, b2 = _touch(a, 100), _touch(b, 5000)
    return {
        1: _model(a, b),
        2: _model(a2, b),  # v1 -> v2: one tensor touched
        3: _model(c, d),  # shares nothing with the others
        4: _model(a2, b2),  # v2 -> v4 and v1 -> v4: small, and different, deltas
    }


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("smallest-bundle")
    with running_world(root, n=3, bundles=_versions()) as w:
        yield w


def _runs(world: World, versions: dict[str, int]) -> bool:
    """Each device runs the version given (the bundle id it reports is that of the delta
    when one was applied, so versions are compared, not ids)."""
    reg = world.hub.registry()
    try:
        with reg.session() as s:
            found = {d: devices.find_device(s, d) for d in versions}
    finally:
        reg.close()
    return all(r is not None and r.installed_version == versions[d] for d, r in found.items())


def _received(world: World, rollout_id: str) -> dict[str, int]:
    """Per device: the bytes it says it received for the rollout's deployments."""
    reg = world.hub.registry()
    try:
        with reg.session() as s:
            rows = s.execute(
                select(EventRow.device_id, EventRow.deployment_id, EventRow.data).where(
                    EventRow.deployment_id.startswith(rollout_id, autoescape=True),
                    EventRow.kind == EventKind.DOWNLOAD_COMPLETE,
                )
            )
            per_deployment = {(d, dep): int(data["bytes_received"]) for d, dep, data in rows}
    finally:
        reg.close()
    totals: dict[str, int] = {}
    for (device, _dep), size in per_deployment.items():  # a repeated event counts once
        totals[device] = totals.get(device, 0) + size
    return totals


def _roll(world: World, version: int, device_ids: list[str]) -> tuple[str, dict[str, int]]:
    """Roll ``version`` out to ``device_ids``; returns the rollout id and, per device, the
    bytes it was sent according to the rollout status — after checking that each device
    measured the same."""
    target = {"device_class": "x86-cpu", "device_ids": device_ids}
    rid = world.rollout(version, [{"percent": 100}], window=0.5, config={"target": target})
    status = world.wait_state(rid, ("done",), 90)
    sent = {d: int(n) for d, n in status["delivery"]["devices"].items()}
    assert status["delivery"]["bytes_shipped"] == sum(sent.values())
    eventually(
        lambda: _received(world, rid) == sent,
        30,
        f"devices report the bytes the status says for {rid}: {sent} vs {_received(world, rid)}",
        world.diag,
    )
    return rid, sent


def test_each_device_downloads_the_smallest_bundle_for_what_it_runs(world: World) -> None:
    store = default_store(world.keys)
    full = {v: len(store.read(bundle_id)) for v, bundle_id in world.bundles.items()}
    on_v2, on_v3, on_v1 = world.fleet.device_ids

    _rid, sent = _roll(world, 2, [on_v2])
    assert list(sent) == [on_v2] and 0 < sent[on_v2] < full[2] // 4  # the v1 -> v2 delta
    _rid, sent = _roll(world, 3, [on_v3])
    assert sent == {on_v3: full[3]}  # nothing in common with v1: the full bundle
    eventually(lambda: _runs(world, {on_v2: 2, on_v3: 3, on_v1: 1}), 30, "v2/v3/v1", world.diag)

    _rid, sent = _roll(world, 4, world.fleet.device_ids)
    assert sent[on_v3] == full[4]  # v3 -> v4 cannot beat the full bundle
    assert 0 < sent[on_v2] < full[4] // 4 and 0 < sent[on_v1] < full[4] // 4
    assert sent[on_v2] != sent[on_v1]  # each got the delta against its own version
    eventually(lambda: world.all_on(4), 30, "v4 everywhere", world.diag)
