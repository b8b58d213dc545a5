"""The dashboard in a real browser: Playwright driving Debian's Chromium headless against a
real hub process (``cloud-hub serve``), real agents (``edge-agent run``) and real Mosquitto.

Log in, watch devices appear as agents connect (live, no reload), start a rollout from the
dashboard and watch it progress to done, watch a bad bundle roll back on its own, abort a
rollout and roll it back, and check that a viewer cannot press operator buttons. A screenshot
of every page is written to ``results/dashboard-screenshots/`` for review.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, open_registry
from shared.messages import new_id
from simulations.harness.agents import LocalAgentFleet

from ..rollout.rollout_support import AGENT_TABLES, MQTT_URL, HubProcess, build_model_bundle

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "results" / "dashboard-screenshots"
N_AGENTS = 3


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield b
        b.close()


@pytest.fixture(scope="module")
def hub(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[HubProcess, dict[int, str], KeyStore, str]]:
    root = tmp_path_factory.mktemp("dashboard")
    keys = KeyStore.init(root / "keys")
    bundles = {
        v: build_model_bundle(keys, version=v, loadable=ok)
        for v, ok in {1: True, 2: True, 3: False}.items()
    }
    prefix = f"ui-{new_id()[:10]}"
    hub = HubProcess(root / "hub", prefix, keys)
    reg = open_registry(hub.db_url, migrate=False)
    with reg.session() as s:
        _, viewer = admin.create_token(s, name="watcher", role="viewer", now=time.time())
    reg.close()
    hub.start()
    try:
        yield hub, bundles, keys, viewer
    finally:
        hub.stop()


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def login(page: Any, url: str, token: str) -> None:
    page.goto(f"{url}/ui/")
    page.fill("#token", token)
    page.click("button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def create_and_start(page: Any, url: str, bundle_id: str, stages: str, window_s: int) -> str:
    page.goto(f"{url}/ui/#/rollouts")
    page.click("#create summary")
    page.select_option("#r-bundle", bundle_id)
    page.fill("#r-labels", "site=plant-3")
    page.fill("#r-stages", stages)
    page.fill("#r-window", str(window_s))
    page.click("#r-create")
    page.wait_for_url("**/#/rollout/*")
    rid = page.url.rsplit("/", 1)[-1]
    page.click("[data-action=start]")
    return rid


STOPPED = ("done", "aborted", "rolled_back", "rollback_failed", "resolved")


def wait_state(page: Any, states: tuple[str, ...], timeout_s: float) -> str:
    """Wait for the live page (no reload) to show one of ``states``, or a state the rollout
    cannot leave on its own (returned, so that the caller's assertion names it)."""
    js = "states => states.includes(document.querySelector('#rollout-state .pill')?.textContent)"
    stops = [*states, *(s for s in STOPPED if s not in states and s != "aborted")]
    page.wait_for_function(js, arg=stops, timeout=timeout_s * 1000)
    return str(page.text_content("#rollout-state .pill"))


def print_diagnostics(proc: Any, fleet: LocalAgentFleet) -> None:
    """On failure: what the hub says about every rollout, and the tails of hub and agent logs
    (shown by pytest with the failure)."""
    import json
    import urllib.request

    req = urllib.request.Request(
        f"{proc.api_url}/api/v1/rollouts", headers={"Authorization": f"Bearer {proc.token}"}
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            print("rollouts:", json.dumps(json.load(resp), indent=1)[-8000:])
    except OSError as exc:
        print("rollouts: unavailable:", exc)
    print("hub log tail:\n", proc.logs(8000))
    for device_id in fleet.device_ids:
        print(f"agent {device_id} log tail:\n", fleet.logs(device_id, tail=3000))


def test_operator_watches_fleet_and_drives_rollouts(browser: Any, hub: Any, tmp_path: Path) -> None:
    proc, bundles, keys, _viewer = hub
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.on("dialog", lambda d: d.accept())  # confirmations of abort / roll back
    page.goto(f"{proc.api_url}/ui/")
    shot(page, "01-login")
    login(page, proc.api_url, proc.token)
    assert page.text_content("#n-total") == "0"

    fleet = LocalAgentFleet(
        root=tmp_path / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=MQTT_URL,
        prefix=proc.prefix,
        n=N_AGENTS,
        tables=AGENT_TABLES,
        id_prefix=proc.prefix,
    )
    fleet.start()
    try:
        # devices appear as agents connect, pushed by the live stream (no reload)
        page.wait_for_function(
            f"document.querySelector('#n-total')?.textContent === '{N_AGENTS}'", timeout=60_000
        )
        page.wait_for_function(
            f"document.querySelector('#n-online')?.textContent === '{N_AGENTS}'", timeout=60_000
        )
        page.wait_for_function(
            f"document.querySelectorAll('#devices tbody tr').length === {N_AGENTS}", timeout=30_000
        )
        shot(page, "02-fleet")

        # a good rollout, started from the dashboard, progresses to done
        create_and_start(page, proc.api_url, bundles[1], "1,100", 1)
        assert wait_state(page, ("done",), 120) == "done"
        page.wait_for_function("document.querySelectorAll('.stage').length === 2")
        page.wait_for_selector("#delivery")  # bytes shipped vs what full bundles would cost
        assert "KiB" in page.inner_text("#delivery")
        shot(page, "03-rollout-done")

        # the fleet page now counts the installed version
        page.goto(f"{proc.api_url}/ui/#/fleet")
        page.wait_for_function("document.body.innerText.includes('sensor-mlp v1')", timeout=30_000)
        page.click("#devices tbody tr a >> nth=0")
        page.wait_for_selector("#events")
        assert "OTA state" in page.inner_text("main")
        shot(page, "04-device")

        # a bad bundle fails its health check at the canary and rolls back on its own
        create_and_start(page, proc.api_url, bundles[3], "1,100", 2)
        assert wait_state(page, ("rolled_back",), 120) == "rolled_back"
        assert "rolled_back" in page.inner_text("#targets")
        assert "install_success" in page.inner_text(".gate") and "fail" in page.inner_text(".gate")
        shot(page, "05-rollout-auto-rollback")

        # an operator aborts a rollout at its canary, then rolls it back
        create_and_start(page, proc.api_url, bundles[2], "1,100", 600)
        wait_state(page, ("canary",), 60)
        page.fill("#action-reason", "camera feed looks wrong on plant-3")  # the typed reason
        page.click("[data-action=abort]")
        assert wait_state(page, ("aborted",), 30) == "aborted"
        page.wait_for_selector("#reason")
        assert "camera feed looks wrong on plant-3" in page.inner_text("#reason")
        page.click("[data-action=rollback]")
        assert wait_state(page, ("rolling_back", "rolled_back"), 30) in (
            "rolling_back",
            "rolled_back",
        )
        assert wait_state(page, ("rolled_back",), 120) == "rolled_back"
        # the rollback replaced the rollout's reason; its history keeps the abort's, and who
        page.wait_for_selector("#history td:has-text('rolled_back')")
        history = page.inner_text("#history")
        assert "camera feed looks wrong on plant-3" in history, history
        assert "rollback from the dashboard" in history and "rollout-engine" in history
        shot(page, "06-rollout-aborted-rolled-back")

        page.goto(f"{proc.api_url}/ui/#/rollouts")
        page.wait_for_selector("#rollouts tbody tr")
        assert page.locator("#rollouts tbody tr").count() == 3
        shot(page, "07-rollouts")
        page.goto(f"{proc.api_url}/ui/#/models")
        page.wait_for_selector("#versions")
        shot(page, "08-models")
    except BaseException:
        print_diagnostics(proc, fleet)
        raise
    finally:
        fleet.stop()
        page.close()


def test_viewer_cannot_press_operator_buttons(browser: Any, hub: Any) -> None:
    proc, _bundles, _keys, viewer = hub
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        login(page, proc.api_url, viewer)
        assert "viewer" in page.text_content("#who")
        page.goto(f"{proc.api_url}/ui/#/rollouts")
        page.wait_for_selector("#rollouts")
        assert page.locator("#create").count() == 0  # no create form for viewers
        first = page.locator("#rollouts tbody tr a")
        if first.count():
            first.first.click()
            page.wait_for_selector("[data-action]")
            for action in ("start", "pause", "resume", "abort", "rollback"):
                assert page.locator(f"[data-action={action}]").is_disabled()
        shot(page, "09-viewer")
        # and the API refuses the call even if the button were forced
        status = page.evaluate(
            """async () => (await fetch('/api/v1/rollouts', {method: 'POST', headers: {Authorization: 'Bearer ' + sessionStorage.getItem('fedfleet.token'), 'Content-Type': 'application/json'}, body: '{"config": {}}'})).status"""
        )
        assert status == 403
    finally:
        page.close()


def test_fleet_page_pages_and_filters_5000_devices(browser: Any, hub: Any) -> None:
    proc, _bundles, _keys, viewer = hub
    from cloud_hub.registry import devices
    from shared.messages import Hello

    now = time.time()
    reg = open_registry(proc.db_url, migrate=False)
    with reg.session() as s:
        devices.record_hellos(
            s,
            [
                Hello(
                    device_id=f"bulk-{i:05d}",
                    device_class="rpi4" if i % 3 else "jetson-orin",
                    agent_version="0.1.0",
                    runtimes=["onnxruntime-cpu"],
                    free_disk_bytes=1,
                    free_mem_bytes=1,
                    labels={"site": f"plant-{i % 7}"},
                    ts=now,
                )
                for i in range(5000)
            ],
            now=now,
        )
    reg.close()
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        login(page, proc.api_url, viewer)
        page.wait_for_function(
            "document.querySelector('#page-info')?.textContent.includes('of 50')"
        )
        assert int(page.text_content("#n-total")) >= 5000
        assert page.locator("#devices tbody tr").count() == 50  # server-side pagination
        page.click("#next")
        page.wait_for_function("document.querySelector('#page-info')?.textContent.startsWith('51')")
        page.fill("#f-q", "bulk-04999")
        page.wait_for_function(
            "document.querySelector('#page-info')?.textContent.endsWith(' of 1')"
        )
        assert page.locator("#devices tbody tr").count() == 1
        page.fill("#f-q", "")
        page.fill("#f-class", "jetson-orin")
        page.wait_for_function(
            "document.querySelector('#page-info')?.textContent.endsWith('of 1667')"
        )
        shot(page, "10-fleet-5000")
    finally:
        page.close()
