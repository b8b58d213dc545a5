"""``/docs``: Swagger UI served from the hub itself, so it works without internet access.

FastAPI's default page loads Swagger UI from a CDN; hubs often run where that is not
reachable. The assets of the ``swagger-ui-dist`` npm package (5.35.0; licence in
``swagger/swagger-ui.LICENSE``) are vendored beside this module, like the dashboard's uPlot,
and served under ``/docs/assets``. ReDoc (CDN only) is not offered.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

__all__ = ["ASSETS", "install_docs"]

ASSETS = Path(__file__).with_name("swagger")
ASSETS_URL = "/docs/assets"


def install_docs(app: FastAPI, *, title: str) -> None:
    """Serve Swagger UI at ``/docs`` for ``app.openapi_url``; build ``app`` with
    ``docs_url=None, redoc_url=None``."""
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{title} - API",
            oauth2_redirect_url=redirect_url,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon-32x32.png",
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")
