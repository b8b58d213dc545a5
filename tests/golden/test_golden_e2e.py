"""End to end: a deliberately mis-quantized artifact is refused by the golden-batch check
of real agent processes (``edge-agent run``), each rolls back and reports the measured
figures; the real hub process (``cloud-hub serve``) counts the refusals in the rollout gate
and shows them, with the devices' CPU facts, on the dashboard's device page (Playwright +
Debian's Chromium, screenshot in ``results/dashboard-screenshots/``). A correctly quantized
artifact with its own golden batch commits; a draft rollout of an artifact built for
another target warns before start.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
from cloud_hub.keys import KeyStore
from cloud_hub.registry import devices
from cloud_hub.registry.tables import EventRow
from shared.bundle import artifact_info
from shared.device_facts import detect_device_facts, target_of
from shared.golden import GOLDEN_CHECK, GoldenBatch
from shared.messages import EventKind
from simulations.harness.polling import eventually
from tests.golden.golden_support import TARGETS, build_artifacts
from tests.rollout.rollout_support import (
    CLASS,
    MODEL,
    World,
    build_model_bundle,
    running_world,
)

pytestmark = pytest.mark.integration

N_AGENTS = 2
SHOTS = Path(__file__).resolve().parents[2] / "results" / "dashboard-screenshots"


def _bundle(
    keys: KeyStore,
    version: int,
    model: bytes,
    golden: GoldenBatch,
    targets: tuple[str, ...] = TARGETS,
) -> str:
    built = build_signed_bundle(
        keys,
        default_store(keys),
        BundleSpec(
            model_name=MODEL, device_class=CLASS, version=version, targets=targets, golden=golden
        ),
        [(artifact_info("model.onnx", model, "model", "application/onnx"), model)],
    )
    return str(built.bundle_id)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    arts = build_artifacts()

    def bundles(keys: KeyStore) -> dict[int, str]:
        return {
            1: build_model_bundle(keys, version=1),  # no golden batch: smoke-checked only
            2: _bundle(keys, 2, arts.misquantized_int8, arts.good_golden),  # numerics differ
            3: _bundle(keys, 3, arts.good_int8, arts.good_golden),
            4: _bundle(keys, 4, arts.good_int8, arts.good_golden, targets=("arm64-neon",)),
        }

    root = tmp_path_factory.mktemp("golden-e2e")
    with running_world(root, n=N_AGENTS, bundles=bundles, tag="gb") as w:
        yield w


def _golden_events(world: World, rid: str) -> list[EventRow]:
    reg = world.hub.registry()
    try:
        with reg.session() as s:
            rows = s.scalars(
                select(EventRow).where(
                    EventRow.deployment_id.startswith(f"{rid}.", autoescape=True),
                    EventRow.kind == EventKind.HEALTH_FAILED,
                )
            )
            return [r for r in rows if (r.data or {}).get("check") == GOLDEN_CHECK]
    finally:
        reg.close()


def _on_version(world: World, version: int) -> bool:
    """Every agent runs ``version`` (by version: the hub may have shipped it as a delta)."""
    reg = world.hub.registry()
    try:
        with reg.session() as s:
            page = devices.list_devices(s, devices.DeviceQuery(limit=100))
            got = {d.device_id: d.installed_version for d in page.items}
    finally:
        reg.close()
    return all(got.get(d) == version for d in world.fleet.device_ids)


def test_devices_report_their_cpu_facts_in_hello(world: World) -> None:
    here = detect_device_facts()  # the agents run on this machine
    for device_id in world.fleet.device_ids:
        device = world.hub.api().request("GET", f"/api/v1/devices/{device_id}")["device"]
        assert device["facts"]["cpu_model"] == here.cpu_model
        assert device["facts"]["isa_flags"] == here.isa_flags
        assert device["target"] == target_of(here)


def test_a_misquantized_artifact_is_refused_on_every_device_and_counted(world: World) -> None:
    rid = world.rollout(2, [{"percent": 100}], window=1.0)
    final = world.wait_state(rid, ("rolled_back", "failed", "rollback_failed"), 120)
    gate = final["stages"][0]["gate"]
    # the gate fails as soon as the install ratio cannot be met: after 1 or 2 refusals
    assert 1 <= gate["golden_batch_refusals"] == gate["failed"] <= N_AGENTS, gate
    assert "golden-batch check" in final["reason"], final["reason"]
    eventually(lambda: _on_version(world, 1), 30, "every device back on v1", world.diag)
    events = eventually(
        lambda: len(found := _golden_events(world, rid)) == N_AGENTS and found,
        30,
        "one golden refusal per device",
        world.diag,
    )
    for ev in events:
        data = ev.data
        assert data["passed"] is False and data["samples"] == 16
        assert data["max_abs_logit_error"] > data["max_abs_logit_error_allowed"]
        assert data["runtime"].startswith("onnxruntime:CPUExecutionProvider")
        assert "golden batch of 16" in ev.detail
    detail = world.hub.api().request("GET", f"/api/v1/devices/{events[0].device_id}")
    assert [e["deployment_id"] for e in detail["golden_refusals"]] == [events[0].deployment_id]


def test_a_correct_artifact_with_its_golden_batch_commits(world: World) -> None:
    rid = world.rollout(3, [{"percent": 100}], window=0.5)
    world.wait_state(rid, ("done",), 120)
    eventually(lambda: _on_version(world, 3), 30, "v3 everywhere", world.diag)
    assert _golden_events(world, rid) == []


def test_a_draft_rollout_warns_about_devices_the_artifact_was_not_built_for(
    world: World,
) -> None:
    api = world.hub.api()
    config = {
        "bundle_id": world.bundles[4],
        "target": {"device_class": CLASS, "labels": {"site": "plant-3"}},
        "stages": [{"percent": 100}],
    }
    rid = api.request("POST", "/api/v1/rollouts", {"config": config})["rollout_id"]
    status = api.request("GET", f"/api/v1/rollouts/{rid}")
    here = target_of(detect_device_facts())
    assert status["state"] == "draft"
    assert status["warnings"] == [
        f"{N_AGENTS} device(s) run {here}, which the artifact was not built for "
        f"(built for arm64-neon): {', '.join(sorted(world.fleet.device_ids))}"
    ]
    api.request("POST", f"/api/v1/rollouts/{rid}/abort", {"reason": "built for ARM"})


def test_the_device_page_shows_facts_and_golden_refusals(world: World) -> None:
    chromium = shutil.which("chromium")
    assert chromium, "Debian's chromium is needed for the dashboard check (apt-get install)"
    from playwright.sync_api import sync_playwright

    device_id = world.fleet.device_ids[0]
    if not world.hub.api().request("GET", f"/api/v1/devices/{device_id}")["golden_refusals"]:
        test_a_misquantized_artifact_is_refused_on_every_device_and_counted(world)
    with sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=chromium,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{world.hub.api_url}/ui/")
            page.fill("#token", world.hub.token)
            page.click("button[type=submit]")
            page.wait_for_selector("#nav:not([hidden])")
            page.goto(f"{world.hub.api_url}/ui/#/device/{device_id}")
            page.wait_for_selector("#facts")
            page.wait_for_selector("#golden tbody tr")
            facts = str(page.text_content("#facts"))
            assert detect_device_facts().cpu_model in facts
            assert str(target_of(detect_device_facts())) in facts
            row = str(page.text_content("#golden tbody tr"))
            assert "onnxruntime:CPUExecutionProvider" in row and "min 1.000" in row
            SHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SHOTS / "device-golden-refusal.png"), full_page=True)
        finally:
            browser.close()
