"""R11: a device id with a trailing newline (``'dev-1\\n'``) is not an id.

``re.match`` with ``$`` accepts ``'dev-1\\n'`` (``$`` also matches before a final newline):
such a device enrolled, got a certificate for a name that is not a topic level, and
collided with ``dev-1`` wherever the newline is lost. Every id check now matches the whole
string. The attack is performed against the real enrollment endpoint (uvicorn) and the
real ingest; the token survives the refusal and nothing is registered.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from cloud_hub.enrollment.tokens import validate_labels
from cloud_hub.errors import HubConfigError
from cloud_hub.ingest import FleetIngest, IngestConnection
from cloud_hub.ingest.intake import Rejected
from cloud_hub.registry import devices, open_registry
from cloud_hub.rollout.config import TargetSelector
from edge_agent.service.identity import build_csr, generate_device_key
from shared.errors import ConfigError
from shared.messages import Hello
from shared.topics import TopicScheme, validate_device_id
from tests.security._support_api import auth, recording_logs, request, running_api

pytestmark = pytest.mark.integration

EVIL = "dev-1\n"


def _enroll(port: int, token: str, device_id: str) -> tuple[int, dict[str, object]]:
    body = {
        "token": token,
        "csr": build_csr(generate_device_key(), "dev-1").decode(),
        "device_class": "x86-cpu",
        "device_id": device_id,
        "labels": {},
    }
    answer = request(
        port,
        "POST",
        "/api/v1/enroll",
        body=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    return answer.status, answer.json()


def test_enrollment_refuses_a_trailing_newline_and_keeps_the_token(tmp_path: Path) -> None:
    with running_api(tmp_path) as api:
        secret, record = api.enrollment.issue_token(device_class="x86-cpu")
        with recording_logs("cloud_hub.enrollment") as logs:
            status, body = _enroll(api.port, secret, EVIL)
        assert status == 400, body
        assert "invalid id 'dev-1\\n'" in str(body["message"])
        assert any("enrollment refused" in m and "dev-1" in m for m in logs.messages())
        # nothing issued or registered; the token is still unused
        assert api.enrollment.repository.get_device(EVIL) is None
        stored = api.enrollment.repository.get_token(record.token_hash)
        assert stored is not None and stored.used_at is None
        with api.registry.session() as s:
            assert devices.find_device(s, EVIL) is None
        # the same token enrolls the honest id
        status, body = _enroll(api.port, secret, "dev-1")
        assert status == 200 and body["device_id"] == "dev-1"
        # the REST API's id and label patterns refuse it too (422, nothing changed)
        viewer, operator = auth(api.tokens["viewer"]), auth(api.tokens["operator"])
        assert request(api.port, "GET", "/api/v1/devices/dev-1%0A", headers=viewer).status == 422
        patch = json.dumps({"labels": {"site\n": "p1"}}).encode()
        answer = request(api.port, "PATCH", "/api/v1/devices/dev-1", body=patch, headers=operator)
        assert answer.status == 422, answer.body
        with api.registry.session() as s:
            assert "site\n" not in devices.get_device(s, "dev-1").labels


def test_topics_and_ingest_refuse_a_trailing_newline(tmp_path: Path) -> None:
    scheme = TopicScheme("r11")
    with pytest.raises(ConfigError):
        validate_device_id(EVIL)
    with pytest.raises(ConfigError):
        scheme.device(EVIL, "cmd")
    with pytest.raises(ConfigError):
        scheme.bundle_chunks("b1\n")
    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    ingest = FleetIngest(registry, scheme=scheme, mqtt_settings=IngestConnection())
    hello = Hello(EVIL, "x86-cpu", "0.1", [], 1, 1, ts=time.time())
    outcome = ingest.submit(f"r11/v1/devices/{EVIL}/hello", hello.encode())
    assert isinstance(outcome, Rejected) and outcome.kind == "bad_topic"
    assert ingest.stats().rejected == {"bad_topic": 1}
    ingest.stop()
    with registry.session() as s:
        assert devices.find_device(s, EVIL) is None
    registry.close()


def test_other_names_refuse_a_trailing_newline() -> None:
    with pytest.raises(HubConfigError):
        validate_labels({"site\n": "p1"})
    with pytest.raises(HubConfigError, match="invalid device id"):
        TargetSelector(device_class="x86-cpu", device_ids=(EVIL,))
    with pytest.raises(HubConfigError, match="invalid device class"):
        TargetSelector(device_class="x86-cpu\n")
