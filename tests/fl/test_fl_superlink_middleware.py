"""The SuperLink's middleware scoped per API and chained (shared.flower_middleware): the same
answers as Flower's own stack for Fleet, runtime and Control requests, fewer layers per
Fleet/runtime request, and each layer still seeing what nested layers would."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from shared import flower_middleware
from shared.flower_middleware import CONTROL_ONLY, FLEET_ONLY, chain_dispatches, stack_for_path

#: (method, path, content type, body): malformed, unauthenticated and valid calls per API.
REQUESTS = [
    ("POST", "/v1/fleet/pull-messages", "text/plain", b"x"),
    ("POST", "/v1/fleet/pull-messages", "application/protobuf", b""),
    ("POST", "/v1/fleet/push-object", "application/protobuf", b"\x00\x01"),
    ("POST", "/v1/runtime/pull-messages", "text/plain", b"x"),
    ("POST", "/v1/runtime/pull-messages", "application/protobuf", b""),
    ("POST", "/v1/control/list-runs", "application/protobuf", b""),
    ("POST", "/v1/control/get-login-details", "application/protobuf", b""),
    ("GET", "/v1/no-such-api", "text/plain", b""),
]


def _answers(app: Any) -> list[tuple[int, str, str]]:
    client = TestClient(app)
    answers = []
    for method, path, content_type, body in REQUESTS:
        response = client.request(
            method, path, content=body, headers={"content-type": content_type}
        )
        answers.append(
            (response.status_code, response.headers.get("cache-control", ""), response.text)
        )
    return answers


def _flower_app() -> Any:
    from flwr.superlink import main

    return main.create_app()


def test_every_api_answers_as_with_flowers_own_middleware(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.superlink import main

    flower = _answers(_flower_app())
    monkeypatch.setattr(main, "_get_middleware", main._get_middleware)  # restored afterwards
    flower_middleware.scope_superlink_middleware()
    app = _flower_app()
    assert [getattr(m.cls, "__name__", "") for m in app.user_middleware] == ["PathScopedMiddleware"]
    scoped = _answers(app)
    assert [a[0] for a in flower] == [415, 401, 400, 415, 401, 200, 200, 404]
    assert [(status, cache) for status, cache, _ in scoped] == [(s, c) for s, c, _ in flower]
    for (_, _, text), (_, _, flower_text) in zip(scoped, flower, strict=True):
        if "T" not in text[:30]:  # a ListRuns answer carries the time it was made
            assert text == flower_text


def test_fleet_and_runtime_calls_skip_only_the_layers_that_pass_them_through() -> None:
    from flwr.superlink import main

    flower = main._get_middleware()
    names = [getattr(m.cls, "__name__", "") for m in flower]
    fleet = [
        getattr(m.cls, "__name__", "") for m in stack_for_path("/v1/fleet/pull-messages", flower)
    ]
    runtime = [
        getattr(m.cls, "__name__", "") for m in stack_for_path("/v1/runtime/push-object", flower)
    ]
    control = [
        getattr(m.cls, "__name__", "") for m in stack_for_path("/v1/control/start-run", flower)
    ]
    assert control == names and len(names) == 9
    assert fleet == [n for n in names if n not in CONTROL_ONLY]
    assert "NodeAuthMiddleware" in fleet and "ProtobufTranslationMiddleware" in fleet
    assert runtime == [n for n in names if n not in CONTROL_ONLY | FLEET_ONLY]
    assert len(fleet) == 5 and len(runtime) == 3


def test_chained_dispatches_see_what_nested_layers_would() -> None:
    seen: list[str] = []

    async def translate_errors(request: Request, call_next: Any) -> Any:
        try:
            return await call_next(request)
        except ValueError as exc:  # raised by an inner layer or the endpoint
            return JSONResponse({"error": str(exc)}, status_code=400)

    async def tag(request: Request, call_next: Any) -> Any:
        seen.append("tag")
        request.state.tag = "outer"
        response = await call_next(request)
        response.headers["x-tag"] = "set-after"
        return response

    async def refuse_bad(request: Request, call_next: Any) -> Any:
        seen.append(f"refuse:{request.state.tag}")
        if request.query_params.get("bad"):
            raise ValueError("bad request")
        return await call_next(request)

    async def endpoint(request: Request) -> PlainTextResponse:
        seen.append("endpoint")
        if request.query_params.get("boom"):
            raise ValueError("endpoint failed")
        return PlainTextResponse(f"{request.state.tag}:{(await request.body()).decode()}")

    chained = chain_dispatches([translate_errors, tag, refuse_bad])
    app = Starlette(
        routes=[Route("/", endpoint, methods=["POST"])],
        middleware=[Middleware(BaseHTTPMiddleware, dispatch=chained)],
    )
    client = TestClient(app)
    ok = client.post("/", content=b"body")
    assert (ok.status_code, ok.text, ok.headers["x-tag"]) == (200, "outer:body", "set-after")
    assert seen == ["tag", "refuse:outer", "endpoint"]
    assert client.post("/?bad=1").json() == {"error": "bad request"}
    assert client.post("/?boom=1").json() == {"error": "endpoint failed"}
