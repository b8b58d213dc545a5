"""``LocalApiClient``: the keep-alive raw-tensor client against the real local API (TCP and
Unix socket), its errors, its reconnect, and answers it refuses from a server that is not
the agent."""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentConfigError, TransportError
from edge_agent.runtime import RuntimeProfile
from edge_agent.serving import HttpApiConfig, ObserverConfig
from edge_agent.serving.client import LocalApiClient, LocalApiClientConfig, LocalApiError
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig


@pytest.fixture()
def stack(tmp_path: Path, sensor_model) -> Iterator[InferenceStack]:
    config = InferenceStackConfig(
        api=HttpApiConfig(port=0, unix_socket=tmp_path / "agent.sock", max_body_bytes=64 * 1024),
        observers=ObserverConfig(sample_rate=0.0),
    )
    s = InferenceStack(config)
    s.install(
        sensor_model.artifacts(version=3), profile=RuntimeProfile(preferred=("onnxruntime:cpu",))
    )
    s.start()
    yield s
    s.stop()


def test_predict_over_one_kept_alive_connection_matches_the_json_path(stack, sensor_model) -> None:
    x = sensor_model.batch(5)
    with LocalApiClient(LocalApiClientConfig(url=stack.api_url)) as client:
        raw = client.predict(x)
        sock = client._sock
        as_json = client.predict_json({"inputs": x.tolist()})
        assert client._sock is sock  # kept alive: no new connection per request
    assert raw["model_version"] == 3 and len(raw["predictions"]) == 5
    assert [p["label"] for p in raw["predictions"]] == [p["label"] for p in as_json["predictions"]]


def test_unix_socket(stack, sensor_model, tmp_path: Path) -> None:
    config = LocalApiClientConfig(unix_socket=tmp_path / "agent.sock", url="http://localhost")
    with LocalApiClient(config) as client:
        assert len(client.predict(sensor_model.batch(2))["predictions"]) == 2
        assert client.health()["status"] == "ok"


def test_refusals_arrive_as_errors_and_the_connection_keeps_working(stack, sensor_model) -> None:
    with LocalApiClient(LocalApiClientConfig(url=stack.api_url)) as client:
        with pytest.raises(LocalApiError) as bad:
            client.predict(np.full((1, 12), np.nan, np.float32))  # R14: finite numbers only
        assert bad.value.status == 422 and bad.value.kind == "InferenceInputError"
        with pytest.raises(LocalApiError) as wrong_shape:
            client.predict(sensor_model.batch(2)[:, :5])
        assert wrong_shape.value.status == 422
        # a refusal that closes the connection (413: body not read): the next call reconnects
        with pytest.raises(LocalApiError) as big:
            client.predict(np.zeros((64 * 1024 // 48 + 1, 12), np.float32))
        assert big.value.status == 413
        assert len(client.predict(sensor_model.batch(1))["predictions"]) == 1


def test_a_host_the_agent_does_not_answer_to_is_refused(stack, sensor_model) -> None:
    """The client names the address it dials; a name the agent does not serve gets 403 (R14)."""
    port = stack.api.port
    client = LocalApiClient(LocalApiClientConfig(url=f"http://127.0.0.1:{port}"))
    client._host = f"evil.example:{port}"  # what a DNS-rebinding page would send
    with pytest.raises(LocalApiError) as refused:
        client.predict(sensor_model.batch(1))
    assert refused.value.status == 403 and refused.value.kind == "HostNotAllowed"
    client.close()


def test_reconnects_once_when_the_agent_dropped_the_idle_connection(stack, sensor_model) -> None:
    with LocalApiClient(LocalApiClientConfig(url=stack.api_url)) as client:
        client.predict(sensor_model.batch(1))
        assert client._sock is not None
        client._sock.shutdown(socket.SHUT_RDWR)  # as if the agent had closed it
        assert len(client.predict(sensor_model.batch(1))["predictions"]) == 1


def _one_answer_server(answer: bytes) -> tuple[str, threading.Thread]:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn, listener:
            conn.recv(1 << 20)
            conn.sendall(answer)

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    return f"http://127.0.0.1:{port}", t


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{}\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n{}",  # no length
        b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n{}",  # over the limit
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",  # cut off
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",  # not an object
        b"HTTP/1.1 200 OK\r\nX: " + b"a" * 70_000 + b"\r\n\r\n",
    ],
)
def test_answers_that_are_not_the_agents_are_refused(answer: bytes) -> None:
    url, t = _one_answer_server(answer)
    client = LocalApiClient(LocalApiClientConfig(url=url, timeout_s=5))
    with client, pytest.raises(TransportError):
        client.predict(np.zeros((1, 4), np.float32))
    t.join(5)


def test_config_refuses_non_http_urls_and_bad_limits() -> None:
    for bad in ("https://127.0.0.1:1", "127.0.0.1:8787", "http://", "http://127.0.0.1:1/api"):
        with pytest.raises(AgentConfigError):
            LocalApiClientConfig(url=bad)
    with pytest.raises(AgentConfigError):
        LocalApiClientConfig(timeout_s=0)
    with pytest.raises(AgentConfigError):
        LocalApiClientConfig(max_response_bytes=10)
