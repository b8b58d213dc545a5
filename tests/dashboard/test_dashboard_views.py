"""What an operator reads on each dashboard page, in a real browser (Debian's Chromium via
Playwright) against a real ``cloud-hub serve`` (uvicorn, rollout engine, ingest on the shared
Mosquitto).

The registry is seeded with the situations the pages got wrong: a device whose install
failed but says healthy, one enrolled that never connected, one whose model drifts, a
single telemetry point, 45 events, 12 drift features; the rollouts are driven through the
real API into an aborted canary and a rollback that cannot land (its devices never answer).
Every page is checked at 1400 px and at 390 px, and screenshots go to
``results/dashboard-screenshots/`` (``views-*.png``) for review.
"""

from __future__ import annotations

import json
import re
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
from cloud_hub.keys import KeyStore
from cloud_hub.registry import admin, devices, open_registry, reports
from cloud_hub.registry.records import TelemetryAggregate
from shared.bundle import artifact_info
from shared.messages import DriftReport, Event, FeatureDrift, Hello, InstalledModel, Status, new_id
from shared.topics import TopicScheme
from tests.onnx_models import tiny_onnx_model

from ..rollout.rollout_support import CLASS, MODEL, HubProcess

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SHOTS = Path(__file__).resolve().parents[2] / "results" / "dashboard-screenshots"
HEX64 = r"[0-9a-f]{64}"


def _bundle(keys: KeyStore, version: int) -> str:
    model = tiny_onnx_model()
    spec = BundleSpec(
        model_name=MODEL,
        device_class=CLASS,
        version=version,
        profile="x86-avx2-int8",
        targets=("x86-avx2",),
        metrics={
            "validation_accuracy": 0.90 + version / 100,
            "accuracy": 0.89 + version / 100,
            "eval_samples": 2000,
            "size_bytes": len(model),
            "latency_ms": {"b1": 0.05, "b32": 0.4},
        },
        lineage={"training_run_id": f"run-v{version}", "profile": "x86-avx2-int8"},
    )
    info = artifact_info("model.onnx", model, "model", "application/onnx")
    return str(build_signed_bundle(keys, default_store(keys), spec, [(info, model)]).bundle_id)


def _features(drifted: bool) -> dict[str, FeatureDrift]:
    out = {}
    for i in range(12):
        over = drifted and i in (2, 10)
        out[f"f{i}"] = FeatureDrift(
            psi=0.9 if over else 0.01 * i,
            ks=0.3 if over else 0.01,
            extra={"psi_critical": 0.25, "ks_critical": 0.12, "drifted": over},
        )
    return out


NAMES = ["dev-ok", "dev-drift", "dev-failed", "dev-a0", "dev-a1", "dev-a2", "dev-b0", "dev-b1"]


def _connect_devices(prefix: str, bundle_v1: str, *, clear: bool = False) -> None:
    """What agents would say on connecting: a hello and a retained status each, over the
    shared Mosquitto (``clear``: remove the retained statuses again)."""
    topics = TopicScheme(prefix)
    installed = InstalledModel(MODEL, 1, bundle_v1)
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"t-{new_id()[:10]}"
    )
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        for d in NAMES:
            if clear:
                client.publish(
                    topics.device(d, "status"), b"", qos=1, retain=True
                ).wait_for_publish(5)
                continue
            hello = Hello(
                device_id=d,
                device_class=CLASS,
                agent_version="0.1.0",
                runtimes=["onnxruntime-cpu"],
                free_disk_bytes=1 << 30,
                free_mem_bytes=1 << 29,
                installed=installed,
                labels={"site": "b" if d.startswith("dev-b") else "a"},
            )
            status = Status(
                d,
                True,
                installed=installed,
                ota_state="failed" if d == "dev-failed" else "idle",
                runtime="onnxruntime",
                provider="CPUExecutionProvider",
                healthy=True,  # what dev-failed says of itself, next to its failed install
            )
            client.publish(topics.device(d, "hello"), hello.encode(), qos=1).wait_for_publish(5)
            client.publish(
                topics.device(d, "status"), status.encode(), qos=1, retain=True
            ).wait_for_publish(5)
    finally:
        client.loop_stop()
        client.disconnect()


def _seed(db_url: str, now: float) -> None:
    """Reports the pages show, written straight to the registry (their ingest is tested
    elsewhere), and a device enrolled that never connected."""
    reg = open_registry(db_url, migrate=False)
    with reg.session() as s:
        devices.register_device(s, "dev-new", device_class=CLASS, labels={"site": "c"}, now=now)
        for device, drifted in (("dev-ok", False), ("dev-drift", True)):
            report = DriftReport(
                device,
                new_id(),
                MODEL,
                1,
                500,
                _features(drifted),
                0.9 if drifted else 0.11,
                drifted,
                ts=now - 30,
            )
            reports.record_drift(s, [report], now=now)
        minute = int(now // 60)
        aggs = [
            TelemetryAggregate("dev-ok", minute - k, 1, metric, 1, v, v, v, (minute - k) * 60.0)
            for k in range(30)
            for metric, v in (
                ("p50_ms", 2.0 + k % 3),
                ("p95_ms", 5.0 + k % 4),
                ("cpu_percent", 20.0 + k),
            )
        ]
        aggs.append(TelemetryAggregate("dev-drift", minute, 1, "p95_ms", 1, 7.5, 7.5, 7.5, now))
        reports.merge_telemetry(s, aggs)
        events = [
            Event(
                device_id="dev-ok",
                event_id=f"ev-{i:03d}",
                kind="health_ok" if i % 2 else "installed",
                deployment_id=f"dep-{i // 10}",
                detail=f"event number {i}",
                data={"n": i, "why": "seeded"},
                ts=now - 1000 + i,
            )
            for i in range(45)
        ]
        reports.record_events(s, events, now=now)
        run = admin.create_training_run(s, run_id="run-v2", model_name=MODEL, now=now - 600)
        rounds = [
            {
                "round": r,
                "accuracy": 0.5 + 0.08 * r,
                "loss": 1.0 / (r + 1),
                "fit_time_s": 1.0,
                "elapsed_s": r * 2.0,
            }
            for r in range(6)
        ]
        admin.update_training_run(
            s, run.run_id, now=now - 500, state="done", result_version=2, metrics={"rounds": rounds}
        )
        _seed_async_run(s, now)
    reg.close()


def _seed_async_run(s: Any, now: float) -> None:
    """An asynchronous run: two SecAgg+ buffers, the second folding stale updates."""
    run = admin.create_training_run(
        s, run_id="run-async", model_name=MODEL, config={"mode": "async"}, now=now - 700
    )
    buffers = [
        {
            "buffer": 1,
            "base_version": 0,
            "new_version": 1,
            "secure": True,
            "error": None,
            "members": ["dev-a", "dev-b", "dev-c"],
            "folded": [
                {"device": d, "order_id": f"o-{d}", "base_version": 0, "staleness": 0}
                for d in ("dev-a", "dev-b", "dev-c")
            ],
        },
        {
            "buffer": 2,
            "base_version": 1,
            "new_version": 2,
            "secure": True,
            "error": None,
            "members": ["dev-d", "dev-e", "dev-f"],
            "folded": [
                {"device": d, "order_id": f"o-{d}", "base_version": b, "staleness": 1 - b}
                for d, b in (("dev-d", 0), ("dev-e", 1), ("dev-f", 0))
            ],
        },
    ]
    versions = [{"version": v, "accuracy": 0.6 + 0.1 * v, "loss": 0.5} for v in (1, 2)]
    admin.update_training_run(
        s,
        run.run_id,
        now=now - 650,
        state="done",
        metrics={
            "mode": "async",
            "rounds": versions,
            "buffers": buffers,
            "eligibility": [
                {
                    "checked": 9,
                    "eligible": 6,
                    "not_eligible": {"serving": 1, "too hot": 2},
                    "summary": "3 devices not eligible: 1 serving, 2 too hot",
                    "devices": {"dev-g": ["serving"], "dev-h": ["too hot"], "dev-i": ["too hot"]},
                }
            ],
        },
    )


class Api:
    def __init__(self, hub: HubProcess) -> None:
        self.hub = hub

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        for _ in range(20):  # a hub busy on a loaded test box answers 503: ask again
            try:
                return self._call(method, path, body)
            except urllib.error.HTTPError as exc:
                if exc.code != 503:
                    raise
                time.sleep(0.5)
        return self._call(method, path, body)

    def _call(self, method: str, path: str, body: dict[str, Any] | None) -> Any:
        req = urllib.request.Request(
            f"{self.hub.api_url}{path}",
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={
                "Authorization": f"Bearer {self.hub.token}",
                "Content-Type": "application/json",
            },
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def wait(self, rid: str, pred: Any, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.call("GET", f"/api/v1/rollouts/{rid}")
            if pred(r):
                return dict(r)
            time.sleep(0.3)
        raise AssertionError(f"rollout {rid} did not get there: {r}")

    def rollout(self, bundle: str, site: str, name: str, **cfg: Any) -> str:
        config = {
            "bundle_id": bundle,
            "name": name,
            "target": {"device_class": CLASS, "labels": {"site": site}},
            "stages": [{"count": 1}, {"percent": 100}],
            "gate_window_s": 600,
            **cfg,
        }
        rid = str(self.call("POST", "/api/v1/rollouts", {"config": config})["rollout_id"])
        self.call("POST", f"/api/v1/rollouts/{rid}/start", {})
        return rid


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is not installed (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    root = tmp_path_factory.mktemp("views")
    keys = KeyStore.init(root / "keys")
    v1, v2 = _bundle(keys, 1), _bundle(keys, 2)
    hub = HubProcess(root / "hub", f"views-{new_id()[:8]}", keys)
    now = time.time()
    _seed(hub.db_url, now)
    hub.start()
    api = Api(hub)
    try:
        _connect_devices(hub.prefix, v1)
        deadline = time.monotonic() + 60
        while api.call("GET", "/api/v1/devices?online=true")["total"] < len(NAMES):
            assert time.monotonic() < deadline, "the devices did not come online"
            time.sleep(0.3)
        # an aborted canary: its gate stops where it was
        aborted = api.rollout(v2, "a", "canary-then-abort")
        api.wait(aborted, lambda r: r["stages"][0].get("gate") is not None, 60)
        api.call("POST", f"/api/v1/rollouts/{aborted}/abort", {"reason": "abort typed in a test"})
        # a rollback that cannot land: the canary never answers (3 s offline timeout), its
        # gate fails, and the rollback order goes unanswered too
        stuck = api.rollout(v2, "b", "rollback-that-fails", offline_timeout_s=3)
        api.wait(stuck, lambda r: r["state"] == "rollback_failed", 90)
        yield {"hub": hub, "api": api, "aborted": aborted, "stuck": stuck, "v1": v1, "v2": v2}
    finally:
        hub.stop()
        _connect_devices(hub.prefix, v1, clear=True)


def shot(page: Any, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"views-{name}.png"), full_page=True)


def open_page(browser: Any, world: dict[str, Any], width: int = 1400) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 900})
    page.on("dialog", lambda d: d.accept())
    hub = world["hub"]
    page.goto(f"{hub.api_url}/ui/")
    page.fill("#token", hub.token)
    page.click("button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    page.wait_for_function("document.querySelector('#live')?.classList.contains('on')")
    return page


def row_text(page: Any, device: str) -> str:
    return str(page.inner_text(f"#devices tr[data-device='{device}']"))


def no_hashes(page: Any) -> None:
    assert not re.search(HEX64, page.inner_text("main")), "a raw bundle hash is shown"


def test_fleet_shows_one_health_verdict_drift_and_rollout(
    browser: Any, world: dict[str, Any]
) -> None:
    page = open_page(browser, world)
    try:
        page.wait_for_selector("#devices tr[data-device='dev-new'] td.health .pill")
        assert "failed" in row_text(page, "dev-failed") and "healthy" not in row_text(
            page, "dev-failed"
        )
        new = row_text(page, "dev-new")
        assert "never connected" in new and "healthy" not in new
        drift = row_text(page, "dev-drift")
        assert "drifting" in drift and "healthy" not in drift and "0.90" in drift
        ok = row_text(page, "dev-ok")
        assert "healthy" in ok and "no drift" in ok and "0.11" in ok
        assert f"{MODEL} v1" in ok
        # the rollout each device is in, by name (the held devices of the failed rollback)
        assert "rollback-that-fails" in row_text(page, "dev-b0")
        assert "canary-then-abort" in page.inner_text("#devices")
        no_hashes(page)
        shot(page, "01-fleet")
    finally:
        page.close()


def test_device_page_axes_drift_table_and_paged_events(browser: Any, world: dict[str, Any]) -> None:
    hub = world["hub"]
    page = open_page(browser, world)
    try:
        page.goto(f"{hub.api_url}/ui/#/device/dev-drift")
        page.wait_for_function("document.querySelector('h1')?.textContent.startsWith('dev-drift')")
        # a single telemetry point: the time axis spans minutes around it, not years
        span = page.evaluate(
            "(() => { const s = document.querySelector('#c-lat').uplot.scales.x; return s.max - s.min; })()"
        )
        assert 0 < span <= 3600, span
        names = page.eval_on_selector_all(
            "#drift-features tbody tr td:first-child", "els => els.map(e => e.textContent)"
        )
        assert names == [f"f{i}" for i in range(12)]  # natural order: f2 before f10
        assert page.locator("#drift-features tr.row-bad").count() == 2
        assert "0.250" in page.inner_text("#drift-features")  # the PSI limit is shown
        assert "the model the device runs" in page.inner_text("#drift-card")
        assert "drifting" in page.inner_text("#device-health")
        shot(page, "02-device-drift")

        page.goto(f"{hub.api_url}/ui/#/device/dev-ok")
        page.wait_for_function("document.querySelector('h1')?.textContent.startsWith('dev-ok')")
        span = page.evaluate(
            "(() => { const s = document.querySelector('#c-lat').uplot.scales.x; return s.max - s.min; })()"
        )
        assert 25 * 60 <= span <= 2 * 3600, span  # 30 minutes of points
        assert page.text_content("#ev-info") == "1\u201320 of 45"
        assert page.locator("#events tbody tr").count() == 20
        assert "event number 44" in page.inner_text("#events")  # newest first
        page.click("#ev-next")
        page.wait_for_function(
            "document.querySelector('#ev-info').textContent === '21\u201340 of 45'"
        )
        page.click("#events tbody tr details summary >> nth=0")
        assert '"why": "seeded"' in page.inner_text("#events")
        shot(page, "03-device-ok")
    finally:
        page.close()


def test_rollouts_stage_numbers_frozen_gate_and_failed_rollback(
    browser: Any, world: dict[str, Any]
) -> None:
    hub = world["hub"]
    page = open_page(browser, world)
    try:
        page.goto(f"{hub.api_url}/ui/#/rollouts")
        page.wait_for_selector("#rollouts tbody tr")
        listing = page.inner_text("#rollouts")
        assert "1 of 2" in listing and "0 of 2" not in listing
        assert f"{MODEL} v2" in listing
        no_hashes(page)
        # the create form previews how many devices each stage targets
        page.click("#create summary")
        page.fill("#r-labels", "site=a")
        page.fill("#r-stages", "1,50,100")
        page.wait_for_function(
            "document.querySelector('#r-preview').textContent.includes('6 matching')"
        )
        preview = page.inner_text("#r-preview")  # 6 at site=a: 1, then 50 % (3) and 100 %
        assert "stage 1 (canary): 1 device" in preview and "stage 2: 2 devices" in preview
        assert "stage 3: 3 devices" in preview
        shot(page, "04-rollouts")

        page.goto(f"{hub.api_url}/ui/#/rollout/{world['aborted']}")
        page.wait_for_selector(".stage")
        first = page.inner_text(".stage[data-stage='1']")
        assert first.startswith("Stage 1 · canary") and "stopped" in first
        assert "frozen" in first or "not evaluated" in first
        assert "pending" not in first.split("\n", 1)[1]  # no live counters on a stopped gate
        assert "abort typed in a test" in page.inner_text("#reason")
        shot(page, "05-rollout-aborted")

        page.goto(f"{hub.api_url}/ui/#/rollout/{world['stuck']}")
        page.wait_for_selector("#rollback-errors")
        errors = page.inner_text("#rollback-errors")
        assert "Rollback failed on 1 device" in errors and "not back after" in errors
        assert page.locator("[data-action=resolve]").is_enabled()
        shot(page, "06-rollback-failed")
        page.fill("#action-reason", "re-imaged dev-b by hand")
        page.click("[data-action=resolve]")
        page.wait_for_function(
            "document.querySelector('#rollout-state .pill')?.textContent === 'resolved'"
        )
        assert "re-imaged dev-b by hand" in page.inner_text("#reason")
    finally:
        page.close()


def test_models_page_rounds_axis_artifacts_and_fit(browser: Any, world: dict[str, Any]) -> None:
    hub = world["hub"]
    page = open_page(browser, world)
    try:
        page.goto(f"{hub.api_url}/ui/#/models")
        page.wait_for_selector(".run-chart .uplot")
        x = page.evaluate(
            "(() => { const u = document.querySelector('.run-chart').uplot; return [u.scales.x.time, u.scales.x.min, u.scales.x.max]; })()"
        )
        assert x[0] is False and -1 <= x[1] <= 0 and 5 <= x[2] <= 6, x
        card = page.evaluate(
            "(() => { const c = document.querySelector('.run-chart'); return [c.scrollWidth, c.clientWidth]; })()"
        )
        assert card[0] <= card[1], f"chart overflows its card: {card}"
        assert "global accuracy per round" in page.inner_text("#run-charts")
        versions = page.inner_text("#versions")
        assert "validation, fp32" in versions and "x86-avx2-int8" in versions and "KiB" in versions
        fits = page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
        assert fits, "the models page is wider than the window"
        shot(page, "07-models")
    finally:
        page.close()


def test_models_page_shows_an_async_runs_buffers(browser: Any, world: dict[str, Any]) -> None:
    hub = world["hub"]
    page = open_page(browser, world)
    try:
        page.goto(f"{hub.api_url}/ui/#/models")
        page.wait_for_selector("#runs details.buffers")
        row = page.locator("#runs tr", has_text="run-async")
        assert "async" in row.inner_text()
        row.locator("details.buffers summary").click()
        table = row.locator(".buffer-table").inner_text()
        assert "v0 → v1" in table and "v1 → v2" in table and "SecAgg+" in table
        assert "dev-d, dev-e, dev-f" in table and "0-1" in table
        eligibility = row.locator("details.eligibility")
        assert eligibility.locator("summary").inner_text() == (
            "3 devices not eligible: 1 serving, 2 too hot"
        )
        eligibility.locator("summary").click()
        reasons = row.locator(".eligibility-table").inner_text()
        assert "dev-h" in reasons and "too hot" in reasons and "serving" in reasons
        shot(page, "07b-models-async")
    finally:
        page.close()


def test_every_page_is_usable_at_390_px(browser: Any, world: dict[str, Any]) -> None:
    hub = world["hub"]
    page = open_page(browser, world, width=390)
    try:
        for name, path, ready in (
            ("fleet", "#/fleet", "#devices tbody tr"),
            ("device", "#/device/dev-ok", "#events"),
            ("rollouts", "#/rollouts", "#rollouts tbody tr"),
            ("rollout", f"#/rollout/{world['stuck']}", ".stage"),
            ("models", "#/models", "#versions"),
        ):
            page.goto(f"{hub.api_url}/ui/{path}")
            page.wait_for_selector(ready)
            width = page.evaluate("document.documentElement.scrollWidth")
            assert width <= 390, f"{name} is {width} px wide at 390 px"
            assert page.locator("#nav a").first.is_visible()
            shot(page, f"08-phone-{name}")
    finally:
        page.close()


def test_bad_token_says_invalid_token(browser: Any, world: dict[str, Any]) -> None:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    try:
        page.goto(f"{world['hub'].api_url}/ui/")
        page.fill("#token", "ffh_not_a_real_token")
        page.click("button[type=submit]")
        page.wait_for_function("document.querySelector('#login-error')?.textContent.length > 0")
        message = page.text_content("#login-error")
        assert "invalid token" in message and "expired" not in message
        shot(page, "09-bad-token")
    finally:
        page.close()


def test_live_indicator_turns_red_when_the_hub_goes_away(
    browser: Any, world: dict[str, Any]
) -> None:
    """Last in this module: it stops the hub."""
    hub = world["hub"]
    page = open_page(browser, world)
    try:
        assert page.text_content("#live-text") == "live"
        hub.stop()
        page.wait_for_function(
            "document.querySelector('#live').classList.contains('down')", timeout=20_000
        )
        page.wait_for_function(
            "document.querySelector('#live-text').textContent.includes('unreachable')",
            timeout=20_000,
        )
        color = page.evaluate("getComputedStyle(document.querySelector('#live')).backgroundColor")
        assert color == "rgb(207, 34, 46)", color  # the "bad" red
        shot(page, "10-hub-unreachable")
    finally:
        page.close()
