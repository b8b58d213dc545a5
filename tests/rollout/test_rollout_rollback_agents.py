"""Rollbacks always land (#15), end to end: a real hub process (API + ingest + engine), real
``edge-agent run`` processes, the real Mosquitto.

The fleet takes v1 as a full bundle, then v2 as a *delta* (the hub builds it against v1), so
each device's previous slot holds v2 under the delta bundle's id, not the catalog's full v2.
Rolling back v3 must bring every device back to that slot (the bug: the order named the full
v2, the devices answered "previous slot does not hold version 2", the rollout stayed in
``rolling_back`` for good). Then a rollback that cannot land — one device lost its previous
slot — ends ``rollback_failed`` with that device's own reason, holds its devices against a
new rollout (409) until the operator resolves it.
"""

from __future__ import annotations

import json
import shutil
import urllib.request
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np
import pytest

from cloud_hub.errors import HubError
from shared.bundle import BundleManifest, artifact_info, build_bundle
from shared.signing import format_time
from simulations.harness.polling import eventually
from tests.onnx_models import linear_onnx

from .rollout_support import World, running_world

pytestmark = pytest.mark.integration  # about 20 s for the module (one fleet)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rollback-agents")
    with running_world(root, n=2, bundles={v: _model(v) for v in (1, 2, 3, 4)}) as w:
        yield w


def _model(version: int) -> bytes:
    """A 64 KiB model whose versions differ in the bias only: a delta is far smaller."""
    weights = np.random.default_rng(0).normal(size=(256, 64)).astype(np.float32)
    return linear_onnx(weights, np.full(64, version, np.float32))


def _targets(world: World, rid: str) -> list[dict[str, Any]]:
    targets: list[dict[str, Any]] = world.hub.api().request(
        "GET", f"/api/v1/rollouts/{rid}/targets"
    )
    return targets


def _rollout_done(world: World, version: int) -> str:
    rid = world.rollout(version, [{"percent": 100}], window=0.5)
    world.wait_state(rid, ("done",), 90)
    return rid


def test_rollback_after_a_delta_update_lands_on_what_each_device_ran(world: World) -> None:
    _rollout_done(world, 2)
    ran_v2 = eventually(
        lambda: (got := world.installed()) and world.bundles[1] not in got.values() and got,
        30,
        "v2 reported",
        world.diag,
    )
    # v2 reached the devices as a delta: another bundle id than the catalog's full v2
    assert all(b != world.bundles[2] and b != world.bundles[1] for b in ran_v2.values()), ran_v2
    rid = _rollout_done(world, 3)
    eventually(lambda: world.all_on(3), 30, "v3 everywhere", world.diag)
    assert {t["device_id"]: t["from_bundle_id"] for t in _targets(world, rid)} == ran_v2
    world.hub.api().request("POST", f"/api/v1/rollouts/{rid}/rollback", {"reason": "test"})
    final = world.wait_state(rid, ("rolled_back", "rollback_failed"), 90)
    assert final["state"] == "rolled_back", final
    assert final["targets"] == {"rolled_back": 2}
    eventually(
        lambda: world.installed() == ran_v2, 30, "back on the delta-delivered v2", world.diag
    )


def test_rollback_that_cannot_land_fails_clearly_and_is_resolved(world: World) -> None:
    ran_v2 = world.installed()
    rid = _rollout_done(world, 4)
    eventually(lambda: world.all_on(4), 30, "v4 everywhere", world.diag)
    broken = world.fleet.device_ids[0]
    slots = world.fleet.agents[0].state_dir / "slots"
    for name in ("a", "b"):  # the previous slot is lost (e.g. a failed flash sector)
        meta = slots / name / "slot.json"
        # the slot not holding v4 (v4 may have come as a delta: its slot names the delta)
        if meta.exists() and json.loads(meta.read_text())["version"] != 4:
            shutil.rmtree(slots / name)
    world.hub.api().request("POST", f"/api/v1/rollouts/{rid}/rollback", {"reason": "test"})
    final = world.wait_state(rid, ("rolled_back", "rollback_failed"), 90)
    assert final["state"] == "rollback_failed", final
    assert final["targets"] == {"rolled_back": 1, "rollback_failed": 1}
    assert f"{broken}: failed: previous slot holds nothing" in final["reason"], final["reason"]
    [failed] = [t for t in _targets(world, rid) if t["state"] == "rollback_failed"]
    assert failed["device_id"] == broken and "previous slot holds nothing" in failed["detail"]
    ok = world.fleet.device_ids[1]
    eventually(lambda: world.installed()[ok] == ran_v2[ok], 30, "the other device back", world.diag)
    # held: a new rollout on these devices can be drafted (it warns) but not started
    api = world.hub.api()
    config = {
        "bundle_id": world.bundles[4],
        "target": {"device_class": "x86-cpu", "labels": {"site": "plant-3"}},
        "stages": [{"percent": 100}],
    }
    draft = api.request("POST", "/api/v1/rollouts", {"config": config})
    assert any(broken in w and "start is refused" in w for w in draft["warnings"]), draft
    with pytest.raises(HubError) as refused:
        api.request("POST", f"/api/v1/rollouts/{draft['rollout_id']}/start")
    assert "HTTP 409" in str(refused.value) and "held by unfinished rollouts" in str(refused.value)
    assert broken in str(refused.value)
    from cloud_hub.cli import main

    auth = ["--api", world.hub.api_url, "--token", world.hub.token]
    assert main(["rollout", "resolve", rid, *auth, "--reason", "re-flashed by hand"]) == 0
    assert world.status(rid)["state"] == "resolved"
    released = world.status(draft["rollout_id"])  # the draft no longer meets held devices
    assert released["state"] == "draft"
    assert not [w for w in released["warnings"] if "held by unfinished" in w], released


def test_a_rollout_of_another_model_lands_with_bound_switch_orders(world: World) -> None:
    """R5 keeps devices from taking a bundle of another model on their own; the engine sends
    the operator's rollout of one with a signed order per device group, and it lands."""
    now = datetime.now(tz=timezone.utc)
    model = _model(1)
    manifest = BundleManifest(
        model_name="other-model",
        version=1,
        device_class="x86-cpu",
        created=format_time(now),
        expires=format_time(now + timedelta(days=1)),
        artifacts=[artifact_info("model.onnx", model, "model", "application/onnx")],
    )
    data = build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=world.keys.signing_keys(),
        keyring_envelope=world.keys.keyring_envelope(),
    )
    request = urllib.request.Request(
        f"{world.hub.api_url}/api/v1/bundles/upload",
        data=data,
        method="POST",
        headers={
            "Authorization": f"Bearer {world.hub.token}",
            "Content-Type": "application/octet-stream",
        },
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        world.bundles[100] = json.loads(resp.read())["bundle_id"]
    rid = _rollout_done(world, 100)
    eventually(lambda: world.all_on(100), 30, "other-model everywhere", world.diag)
    switches = [
        (d, k) for d, k in world.events(f"{rid}.d") if k in ("committed", "rejected", "failed")
    ]
    assert sorted(switches) == sorted((d, "committed") for d in world.fleet.device_ids), switches
