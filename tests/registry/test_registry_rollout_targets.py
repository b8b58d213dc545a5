"""The rollout targets in bulk and the engine's scans over rollouts, on SQLite and
PostgreSQL (see conftest): the registry stores and reads; which states a move goes from and
to is the caller's."""

from __future__ import annotations

from cloud_hub.registry import Registry, Session, StageSpec, rollouts
from cloud_hub.registry import rollout_targets as targets

T0 = 1_800_000_000.0


def _rollout(s: Session, rollout_id: str, *, created: float, state: str, cls: str = "rpi4") -> None:
    rollouts.create_rollout(
        s,
        rollout_id=rollout_id,
        bundle_id="b-2",
        device_class=cls,
        stages=[StageSpec("canary", device_ids=["d1"]), StageSpec("rest", percent=100)],
        state=state,
        now=created,
    )


def test_moves_touch_only_the_named_targets_still_in_the_source_states(
    registry: Registry,
) -> None:
    with registry.session() as s:
        _rollout(s, "r1", created=T0, state="canary")
        rollouts.add_targets(s, "r1", {"d3": 1, "d1": 0, "d2": 1, "d4": 1}, now=T0)
        rollouts.update_target(s, "r1", "d4", now=T0, state="failed")
    with registry.session() as s:
        targets.move_targets(
            s,
            "r1",
            ["d1", "d2", "d4"],
            now=T0 + 5,
            only_states=["pending"],
            bump_attempts=True,
            state="deploying",
            deployment_id="r1.dx",
        )
    with registry.session() as s:
        by_device = {t.device_id: t for t in rollouts.list_targets(s, "r1")}
        assert {d: (t.state, t.attempts) for d, t in by_device.items()} == {
            "d1": ("deploying", 1),
            "d2": ("deploying", 1),
            "d3": ("pending", 0),  # not named
            "d4": ("failed", 0),  # named, but no longer pending
        }
        assert by_device["d1"].deployment_id == "r1.dx" and by_device["d1"].updated_at == T0 + 5
        assert [t.device_id for t in targets.targets_in_states(s, "r1", ["deploying"])] == [
            "d1",
            "d2",
        ]
        assert [
            t.device_id
            for t in targets.targets_in_states(s, "r1", ["pending", "deploying"], max_stage=0)
        ] == ["d1"]
        assert targets.target_device_ids(s, "r1") == ["d1", "d2", "d3", "d4"]
        assert targets.count_targets_by_stage(s, "r1") == {
            0: {"deploying": 1},
            1: {"deploying": 1, "pending": 1, "failed": 1},
        }


def test_holders_are_the_oldest_holding_rollout_whose_target_is_not_released(
    registry: Registry,
) -> None:
    with registry.session() as s:
        _rollout(s, "old", created=T0, state="canary")
        _rollout(s, "new", created=T0 + 10, state="rolling_back")
        _rollout(s, "over", created=T0 + 20, state="done")
        for rid in ("old", "new", "over"):
            rollouts.add_targets(s, rid, {"d1": 0, "d2": 1, "d3": 1}, now=T0)
        rollouts.update_target(s, "old", "d2", now=T0, state="succeeded")
        rollouts.update_target(s, "new", "d3", now=T0, state="succeeded")

    def holders(exclude: str | None = None) -> dict[str, tuple[str, str]]:
        with registry.session() as s:
            return targets.device_holders(
                s,
                ["d1", "d2", "d3", "d1", "d9"],
                released_target_states=["succeeded"],
                holding_rollout_states=["canary", "rolling_back"],
                exclude=exclude,
            )

    assert holders() == {
        "d1": ("old", "canary"),
        "d2": ("new", "rolling_back"),  # released by "old"
        "d3": ("old", "canary"),
    }
    assert holders(exclude="old") == {
        "d1": ("new", "rolling_back"),
        "d2": ("new", "rolling_back"),  # d3 is released by "new"; "over" holds nobody
    }


def test_scans_over_rollouts(registry: Registry) -> None:
    with registry.session() as s:
        _rollout(s, "a", created=T0, state="done")
        _rollout(s, "b", created=T0 + 1, state="canary")
        _rollout(s, "c", created=T0 + 2, state="draft")
        _rollout(s, "d", created=T0 + 3, state="waves")
        _rollout(s, "e", created=T0 + 4, state="canary", cls="jetson")
        rollouts.update_stage(s, "b", 0, state="active")
    with registry.session() as s:
        live = ["canary", "waves"]
        assert rollouts.live_rollout_ids(s, live, limit=10) == ["e", "d", "b"]
        assert rollouts.live_rollout_ids(s, live, limit=2) == ["e", "d"]
        assert rollouts.newer_rollout_started(s, device_class="rpi4", created_after=T0 + 1)
        # only a draft (c) or another class (e) is newer than d
        assert not rollouts.newer_rollout_started(s, device_class="rpi4", created_after=T0 + 3)
        assert not rollouts.newer_rollout_started(s, device_class="jetson", created_after=T0 + 4)
        assert rollouts.count_stages_by_state(s) == {"pending": 9, "active": 1}
