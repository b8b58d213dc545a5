"""#15: ``/docs`` works without internet access: the Swagger UI assets come from the hub.

Debian's Chromium (Playwright) loads ``/docs`` from a real uvicorn with every request to
another origin aborted; the UI must render the API's title and its operations.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from cloud_hub.api import ApiContext, create_app
from simulations.harness.api_thread import ServedApp

pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_docs_page_names_only_local_assets(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower() and "https://" not in page.text
    for asset in ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png"):
        assert f"/docs/assets/{asset}" in page.text
        assert client.get(f"/docs/assets/{asset}").status_code == 200
    assert client.get("/redoc").status_code == 404  # CDN-only: not offered


@pytest.fixture
def served(context: ApiContext) -> Iterator[str]:
    with ServedApp(create_app(context)) as api:
        yield api.url


def test_docs_render_in_chromium_with_the_network_blocked(served: str) -> None:
    if CHROMIUM is None:
        pytest.fail("Debian's chromium is required (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api")
    blocked: list[str] = []

    def only_the_hub(route: Any) -> None:
        url = route.request.url
        if url.startswith(served):
            route.continue_()
        else:
            blocked.append(url)
            route.abort()

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(
            executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            page = browser.new_page()
            page.route("**/*", only_the_hub)
            page.goto(f"{served}/docs", wait_until="networkidle")
            page.wait_for_selector(".swagger-ui .info .title", timeout=30_000)
            assert "fedfleet hub" in page.inner_text(".swagger-ui .info .title")
            page.wait_for_selector(".opblock-summary-path", timeout=30_000)
            paths = page.locator(".opblock-summary-path").all_inner_texts()
            assert any("/api/v1/rollouts" in t for t in paths), paths
        finally:
            browser.close()
    assert blocked == [], blocked  # it never needed anything from elsewhere
