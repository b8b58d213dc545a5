"""#15: the API says what it does. Strict JSON types, real methods on OPTIONS and 405,
authentication and authorization before any validation, the error answers and the
``/metrics`` content type in the OpenAPI document."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from .conftest import auth

BROKEN_JSON = {"content": b'{"name": "x", "role":', "headers": {"content-type": "application/json"}}


@pytest.mark.parametrize(
    "body",
    [
        {"version": True},  # a boolean is not an integer
        {"version": "2"},  # nor is a string of digits
        {"version": 2.5},
        {"version": 2, "metrics": [], "lineage": {}},  # a list is not an object
    ],
)
def test_a_body_is_taken_as_its_json_types_say(
    client: TestClient, tokens: dict[str, str], body: dict[str, object]
) -> None:
    r = client.post("/api/v1/models/m/versions", json=body, headers=auth(tokens["operator"]))
    assert r.status_code == 422, r.text
    assert r.json()["error"] == "invalid"


def test_an_integral_float_is_an_integer_as_in_json_schema(
    client: TestClient, tokens: dict[str, str]
) -> None:
    r = client.post(
        "/api/v1/models/m/versions", json={"version": 2.0}, headers=auth(tokens["operator"])
    )
    assert r.status_code == 201, r.text
    assert r.json()["version"] == 2


def test_options_and_405_name_the_real_methods(client: TestClient) -> None:
    r = client.options("/api/v1/rollouts")
    assert r.status_code == 204
    assert r.headers["allow"] == "GET, OPTIONS, POST"
    r = client.options("/api/v1/devices/cam-1")
    assert r.headers["allow"] == "DELETE, GET, OPTIONS, PATCH"
    r = client.delete("/api/v1/rollouts")  # Starlette alone said "Allow: GET" here
    assert r.status_code == 405 and r.headers["allow"] == "GET, OPTIONS, POST"
    assert r.json()["error"] == "method_not_allowed"
    assert client.options("/api/v1/no-such-thing").status_code == 404


def test_no_validation_answers_before_authentication_and_authorization(
    client: TestClient, tokens: dict[str, str]
) -> None:
    # anonymous: 401 whatever the body or query
    assert client.post("/api/v1/tokens", **BROKEN_JSON).status_code == 401
    assert client.get("/api/v1/rollouts?limit=not-a-number").status_code == 401
    # a viewer on an admin call: 403, not a parse error that tells what the call expects
    r = client.post(
        "/api/v1/tokens",
        content=BROKEN_JSON["content"],
        headers={**BROKEN_JSON["headers"], **auth(tokens["viewer"])},
    )
    assert r.status_code == 403, r.text
    r = client.post("/api/v1/tokens", json={"role": 5}, headers=auth(tokens["viewer"]))
    assert r.status_code == 403, r.text
    # the admin gets the validation answer
    r = client.post(
        "/api/v1/tokens",
        content=BROKEN_JSON["content"],
        headers={**BROKEN_JSON["headers"], **auth(tokens["admin"])},
    )
    assert r.status_code in (400, 422), r.text


def test_the_document_lists_the_real_error_answers(client: TestClient) -> None:
    doc = client.get("/openapi.json").json()
    abort = doc["paths"]["/api/v1/rollouts/{rollout_id}/abort"]["post"]["responses"]
    assert {"400", "401", "403", "404", "409", "413", "422"} <= set(abort)
    listing = doc["paths"]["/api/v1/devices"]["get"]["responses"]
    assert "401" in listing and "403" not in listing  # viewers may list devices
    tokens = doc["paths"]["/api/v1/tokens"]["post"]["responses"]
    assert "403" in tokens and tokens["403"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/Error"
    }
    metrics = doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain; version=0.0.4; charset=utf-8"]
    assert doc["paths"]["/metrics"]["get"]["responses"].keys() == {"200"}  # public, no body


def test_metrics_answer_with_the_declared_content_type(client: TestClient) -> None:
    r = client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
