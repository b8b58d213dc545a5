"""A keep-alive client for the device's local API, for applications on the device.

One persistent connection (TCP on loopback, or the agent's Unix socket), raw tensors as
``application/octet-stream`` with ``X-Shape``/``X-Dtype`` (the fast path of ``POST
/predict``), and a lean response reader: ``http.client`` parses every response's headers
through the ``email`` package, which costs about as much per request as the server's whole
request path. The server answers every request with ``Content-Length`` and no chunking, so
the reader needs nothing more; anything else is refused as a ``TransportError``.
"""

from __future__ import annotations

import json
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from edge_agent.errors import AgentConfigError, AgentError, TransportError

__all__ = ["LocalApiClient", "LocalApiClientConfig", "LocalApiError"]

_MAX_HEAD = 64 * 1024  # status line + headers of one response


class _StaleConnectionError(TransportError):
    """A kept-alive connection the agent had closed: nothing of the answer arrived."""


class LocalApiError(AgentError):
    """The agent answered with an error status; ``kind`` is its ``error.type``."""

    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(f"{status} {kind}: {message}")
        self.status, self.kind, self.message = status, kind, message

    def to_dict(self) -> dict[str, Any]:
        """The agent's error body, as it sent it."""
        return {"error": {"type": self.kind, "message": self.message}}


@dataclass(frozen=True)
class LocalApiClientConfig:
    """Where the agent is and how long and how much to wait for."""

    url: str = "http://127.0.0.1:8787"  # ignored for the connection when unix_socket is set
    unix_socket: Path | None = None
    timeout_s: float = 30.0
    max_response_bytes: int = 64 * 1024 * 1024

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme != "http" or not parts.hostname or parts.path not in ("", "/"):
            raise AgentConfigError(f"local API url must be http://host[:port], not {self.url!r}")
        if not 0 < self.timeout_s <= 3600:
            raise AgentConfigError("timeout_s must be in (0, 3600]")
        if not 1024 <= self.max_response_bytes <= 1 << 31:
            raise AgentConfigError("max_response_bytes must be in [1 KiB, 2 GiB]")


class LocalApiClient:
    """``predict(x)`` over one kept-alive connection; reconnects when the agent closed it."""

    def __init__(self, config: LocalApiClientConfig | None = None) -> None:
        self.config = config or LocalApiClientConfig()
        parts = urlsplit(self.config.url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        # the Host header names the address we dial: the agent refuses other names (R14)
        self._host = parts.netloc
        self._sock: socket.socket | None = None
        self._reader: Any = None

    def __enter__(self) -> LocalApiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
        if self._sock is not None:
            self._sock.close()
        self._sock = self._reader = None

    def predict(self, x: np.ndarray) -> dict[str, Any]:
        """Predictions for a batch ``x`` (its first axis), as the JSON API answers them."""
        tensor = np.ascontiguousarray(x)
        headers = {
            "Content-Type": "application/octet-stream",
            "X-Shape": ",".join(str(d) for d in tensor.shape),
            "X-Dtype": str(tensor.dtype),
        }
        return self.request("POST", "/predict", tensor.tobytes(), headers)

    def predict_json(self, body: dict[str, Any]) -> dict[str, Any]:
        """The JSON form of ``POST /predict`` (``inputs`` or ``inputs_b64`` + ``shape``)."""
        data = json.dumps(body, separators=(",", ":")).encode()
        return self.request("POST", "/predict", data, {"Content-Type": "application/json"})

    def health(self) -> dict[str, Any]:
        return self.request("GET", "/health", b"", {})

    def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str]
    ) -> dict[str, Any]:
        """One request; the JSON answer, or ``LocalApiError`` for an error status."""
        head = f"{method} {path} HTTP/1.1\r\nHost: {self._host}\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in headers.items()
        )
        wire = (head + f"Content-Length: {len(body)}\r\n\r\n").encode("latin-1") + body
        reused = self._sock is not None
        try:
            try:
                status, payload, keep = self._exchange(wire)
            except _StaleConnectionError:
                if not reused:
                    raise
                # the agent had closed the idle kept-alive connection: one fresh try
                self.close()
                status, payload, keep = self._exchange(wire)
        except TransportError:
            self.close()
            raise
        except OSError as exc:
            self.close()
            raise TransportError(f"local API at {self.config.url}: {exc}") from exc
        if not keep:
            self.close()
        try:
            answer = json.loads(payload)
        except ValueError as exc:
            raise TransportError(f"local API answered {status} with non-JSON body") from exc
        if not isinstance(answer, dict):
            raise TransportError(f"local API answered {status} with a non-object body")
        if status >= 400:
            error = answer.get("error")
            if not isinstance(error, dict):
                error = {}
            raise LocalApiError(status, str(error.get("type", "")), str(error.get("message", "")))
        return answer

    def _connect(self) -> Any:
        if self._sock is None:
            try:
                self._sock = self._open_socket()
            except OSError as exc:
                raise TransportError(f"local API at {self.config.url} unreachable: {exc}") from exc
            self._reader = self._sock.makefile("rb")
        return self._reader

    def _open_socket(self) -> socket.socket:
        cfg = self.config
        if cfg.unix_socket is not None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(cfg.timeout_s)
            try:
                sock.connect(str(cfg.unix_socket))
            except OSError:
                sock.close()
                raise
        else:
            sock = socket.create_connection(self._address, timeout=cfg.timeout_s)
            # one write per request; Nagle would hold back nothing useful
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _exchange(self, wire: bytes) -> tuple[int, bytes, bool]:
        reader = self._connect()
        assert self._sock is not None
        try:
            self._sock.sendall(wire)
            status_line = reader.readline(_MAX_HEAD)
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise _StaleConnectionError(f"connection closed: {exc}") from exc
        if not status_line:
            raise _StaleConnectionError("connection closed before an answer")
        parts = status_line.split(None, 2)
        if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or not parts[1].isdigit():
            raise TransportError(f"not an HTTP answer: {status_line[:80]!r}")
        length, keep, used = -1, True, len(status_line)
        while True:
            line = reader.readline(_MAX_HEAD)
            used += len(line)
            if not line.endswith(b"\n") or used > _MAX_HEAD:
                raise TransportError("answer headers too long or cut off")
            if line in (b"\r\n", b"\n"):
                break
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = int(value.strip()) if value.strip().isdigit() else -2
            elif name == b"connection":
                keep = value.strip().lower() != b"close"
            elif name == b"transfer-encoding":
                raise TransportError("chunked answers are not part of the local API")
        if not 0 <= length <= self.config.max_response_bytes:
            raise TransportError(f"answer without a usable Content-Length ({length})")
        payload = reader.read(length)
        if len(payload) != length:
            raise TransportError("connection closed inside an answer")
        return int(parts[1]), payload, keep
