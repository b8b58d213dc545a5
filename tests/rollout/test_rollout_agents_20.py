"""20 real agents: a good bundle is promoted from the canary through 10 % → 50 % → 100 % to
done; wave membership is the seeded draw the hub recorded; two agents of the last wave are
down (SIGKILL) while the rollout runs, are waited for, and get the bundle when they return
(slow: ~1-2 min on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.harness.polling import eventually

from .rollout_support import running_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_twenty_agents_good_bundle_promotes_through_all_waves(tmp_path: Path) -> None:
    with running_world(tmp_path, n=20, bundles={1: True, 2: True}) as world:
        rid = world.rollout(
            2, [{"count": 2}, {"percent": 10}, {"percent": 50}, {"percent": 100}], window=2.0
        )
        started = world.status(rid)
        away = started["stages"][3]["devices"][:2]
        for d in away:  # power loss: the broker publishes their last will (offline)
            world.fleet.kill(d)
        last = world.wait_state(rid, ("wave",), 120)
        eventually(
            lambda: (st := world.status(rid))["stage"] == 3 and st["stages"][3]["targets"],
            120,
            "last wave active",
            world.diag,
        )
        status = world.status(rid)
        assert status["state"] == "wave", status["reason"]
        offline_targets = [
            t
            for t in world.hub.api().request("GET", f"/api/v1/rollouts/{rid}/targets?stage=3")
            if t["device_id"] in away
        ]
        assert {t["state"] for t in offline_targets} == {"pending"}  # waited for, not counted
        for d in away:
            world.fleet.start(d)
        final = world.wait_state(rid, ("done", "rolling_back", "rolled_back"), 240)
        assert final["state"] == "done", final["reason"]
        members = [s["devices"] for s in final["stages"]]
        assert [len(m) for m in members] == [2, 0, 8, 10]  # 10 % of 20 = 2, taken by the canary
        assert sorted(d for m in members for d in m) == sorted(world.fleet.device_ids)
        ids = sorted(world.fleet.device_ids)
        assert members[0] != ids[:2] or members[2] != ids[2:10]  # not registration order
        assert final["targets"] == {"succeeded": 20}
        eventually(lambda: world.all_on(2), 30, "v2 everywhere", world.diag)
        assert last["state"] == "wave"
