"""20 real agents: a good bundle is promoted from the canary through 10 % → 50 % → 100 % to
done; wave membership is the seeded draw the hub recorded (slow: ~1-2 min on 2 cores)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .rollout_support import eventually, running_world

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_twenty_agents_good_bundle_promotes_through_all_waves(tmp_path: Path) -> None:
    with running_world(tmp_path, n=20, bundles={1: True, 2: True}) as world:
        rid = world.rollout(
            2, [{"count": 2}, {"percent": 10}, {"percent": 50}, {"percent": 100}], window=2.0
        )
        final = world.wait_state(rid, ("done", "rolling_back", "rolled_back"), 240)
        assert final["state"] == "done", final["reason"]
        members = [s["devices"] for s in final["stages"]]
        assert [len(m) for m in members] == [2, 0, 8, 10]  # 10 % of 20 = 2, taken by the canary
        assert sorted(d for m in members for d in m) == sorted(world.fleet.device_ids)
        # drawn at random, not in registration order
        assert (
            members[0] != sorted(world.fleet.device_ids)[:2]
            or members[2] != sorted(world.fleet.device_ids)[2:10]
        )
        assert final["targets"] == {"succeeded": 20}
        eventually(lambda: world.all_on(2), 30, "v2 everywhere", world.diag)
