"""Staged rollouts end to end: a real hub process (``cloud-hub serve``: API + ingest + engine,
SQLite registry), real ``edge-agent run`` processes and the real Mosquitto on 127.0.0.1:1883
(unique topic prefix). Driven through the REST API with an operator token.

One fleet serves the whole module: v1 everywhere; v2 (good) promoted through every
wave to done while the hub is SIGKILLed and restarted mid-rollout; then three bad bundles —
v3 fails the device health check (not an ONNX model), v4 has a high inference error rate,
v5 loses accuracy on labelled feedback (for these two the test publishes the devices'
telemetry as real MQTT messages, since inference traffic comes from the runtime stack) —
each halts at the canary, the canary goes back to v2 and no other device receives it. Each
test brings the fleet to the version it starts from, so any one of them runs alone.

The 20-agent variant is ``test_rollout_agents_20.py`` (slow).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from simulations.harness.polling import eventually

from .rollout_support import World, running_world

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    root = tmp_path_factory.mktemp("rollout-agents")
    versions = {1: True, 2: True, 3: False, 4: True, 5: True}  # v3: not an ONNX model
    with running_world(root, n=6, bundles=versions) as w:
        yield w


def test_good_bundle_promotes_to_done_across_a_hub_kill(world: World) -> None:
    rid = world.rollout(
        2, [{"count": 1}, {"percent": 50}, {"percent": 100}], window=2.0, previous_bundle_id=None
    )
    status = world.wait_state(rid, ("wave", "done"), 60)
    assert status["state"] == "wave" and status["stages"][0]["state"] == "passed"
    world.hub.kill()  # mid-rollout: no chance to flush or say goodbye
    world.hub.start()
    final = world.wait_state(rid, ("done",), 90)
    sizes = [len(s["devices"]) for s in final["stages"]]
    assert sizes == [1, 2, 3]
    assert all(s["state"] == "passed" for s in final["stages"])
    eventually(lambda: world.all_on(2), 30, "v2 everywhere", world.diag)
    # nothing lost or repeated: every agent installed v2 exactly once (its own log is the
    # witness: events published while the hub was down may be lost by the ingest)
    installs = {
        d: sum(
            1
            for line in world.fleet.logs(d, 1_000_000).splitlines()
            if f"deployment {rid}.d" in line and "installed -> health_check" in line
        )
        for d in world.fleet.device_ids
    }
    assert installs == dict.fromkeys(world.fleet.device_ids, 1), installs
    assert final["targets"] == {"succeeded": len(world.fleet.device_ids)}
    assert world.hub.starts == 2


def _bring_fleet_to(world: World, version: int) -> None:
    if world.all_on(version):
        return
    rid = world.rollout(version, [{"percent": 100}], window=1.0, previous_bundle_id=None)
    world.wait_state(rid, ("done",), 90)
    eventually(lambda: world.all_on(version), 30, f"v{version} everywhere", world.diag)


def _bad_rollout(
    world: World, version: int, publish: Callable[[list[str]], None] | None
) -> dict[str, Any]:
    _bring_fleet_to(world, 2)  # independent of test order: the first test may not have run
    # the previous version's baseline on every device
    world.publish_telemetry(
        world.fleet.device_ids,
        2,
        p95_ms=10.0,
        request_count=200.0,
        error_count=0.0,
        feedback_count=100.0,
        feedback_correct=90.0,
    )
    rid = world.rollout(
        version, [{"count": 1}, {"percent": 100}], window=2.5, previous_bundle_id=world.bundles[2]
    )
    if publish is not None:
        canary = eventually(
            lambda: [
                t["device_id"]
                for t in world.hub.api().request("GET", f"/api/v1/rollouts/{rid}/targets")
                if t["stage_index"] == 0 and t["state"] == "succeeded"
            ],
            60,
            "canary installed",
            world.diag,
        )
        publish(canary)
    final = world.wait_state(rid, ("rolled_back",), 90)
    canary_ids = final["stages"][0]["devices"]
    assert len(canary_ids) == 1
    assert final["stages"][0]["state"] == "failed"
    assert final["stages"][1]["state"] == "pending"
    eventually(lambda: world.all_on(2), 30, "canary back on v2", world.diag)
    received = {d for d, _kind in world.events(f"{rid}.d")}
    assert received <= set(canary_ids)  # the rest never received it
    assert final["targets"].get("skipped") == len(world.fleet.device_ids) - 1
    return final


def test_bundle_failing_device_health_check_halts_at_canary(world: World) -> None:
    final = _bad_rollout(world, 3, None)
    assert "install_success" in final["reason"], final["reason"]
    assert final["stages"][0]["gate"]["failed"] == 1


def test_high_error_rate_halts_at_canary_and_rolls_back(world: World) -> None:
    def errors(canary: list[str]) -> None:
        world.publish_telemetry(canary, 4, p95_ms=11.0, request_count=100.0, error_count=40.0)

    final = _bad_rollout(world, 4, errors)
    assert "error_rate" in final["reason"], final["reason"]
    assert final["targets"].get("rolled_back") == 1


def test_accuracy_drop_on_feedback_halts_at_canary_and_rolls_back(world: World) -> None:
    def feedback(canary: list[str]) -> None:
        world.publish_telemetry(canary, 5, p95_ms=10.0, feedback_count=100.0, feedback_correct=40.0)

    final = _bad_rollout(world, 5, feedback)
    assert "accuracy_drop" in final["reason"], final["reason"]
    checks = {c["name"]: c for c in final["stages"][0]["gate"]["checks"]}
    assert checks["accuracy_drop"]["value"] == pytest.approx(0.5)


def test_cli_drives_the_hub_over_the_api(world: World, capsys: pytest.CaptureFixture[str]) -> None:
    from cloud_hub.cli import main

    hub = world.hub
    auth = ["--api", hub.api_url, "--token", hub.token]
    assert (
        main(
            [
                "rollout",
                "create",
                *auth,
                "--bundle",
                world.bundles[2],
                "--device-class",
                "x86-cpu",
                "--label",
                "site=plant-3",
                "--canary",
                "1",
                "--waves",
                "100",
                "--window",
                "60",
                "--start",
                "--json",
            ]
        )
        == 0
    )
    created = json.loads(capsys.readouterr().out)
    rid = created["rollout_id"]
    assert created["phase"] == "canary"
    assert main(["rollout", "pause", rid, *auth, "--reason", "lunch"]) == 0
    assert "paused (canary)" in capsys.readouterr().out
    assert main(["rollout", "resume", rid, *auth]) == 0
    assert rid in capsys.readouterr().out
    assert main(["rollout", "abort", rid, *auth, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "aborted"
    assert main(["rollout", "status", *auth]) == 0
    assert rid in capsys.readouterr().out
    # the history: each move, who made it, and the reason typed with it
    assert main(["rollout", "history", rid, *auth]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("  ", 1)[1].split()[1:4] for line in lines] == [
        ["draft", "->", "canary"],
        ["canary", "->", "paused"],
        ["paused", "(canary)", "->"],
        ["canary", "->", "aborted"],
    ], lines
    assert lines[1].endswith("lunch") and "aborted by operator" in lines[3]
    # refused: a wrong token, and an illegal transition, each one clear line
    assert main(["rollout", "status", rid, "--api", hub.api_url, "--token", "nope"]) == 2
    assert "401" in capsys.readouterr().err
    assert main(["rollout", "resume", rid, *auth]) == 2
    assert "cannot resume in state aborted" in capsys.readouterr().err
