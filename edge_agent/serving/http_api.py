"""The local prediction API: stdlib HTTP on loopback (and optionally a Unix socket).

``POST /predict``   ``{"inputs": [...]}`` or ``{"inputs_b64", "shape", "dtype"}`` (batch ok),
                    or a raw tensor: ``Content-Type: application/octet-stream`` with
                    ``X-Shape: 4,3,96,96`` and ``X-Dtype: float32`` (the fast path)
``POST /feedback``  ``{"id": "...", "label": 2}`` or ``{"items": [{"id", "label"}, ...]}``
``GET  /health``    model version, backend/provider, fallback warnings, counters

Errors are JSON ``{"error": {"type", "message"}}`` with a 4xx status for the caller's
mistakes (400 malformed, 403 a Host or Origin that is not this device, 404 unknown,
413 too large, 422 invalid input, NaN or infinite numbers included) and 503 when no
model is loaded; a bad request never stops the server. The stdlib server keeps the agent's
memory small (no web framework).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import socketserver
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edge_agent.errors import AgentConfigError, InferenceInputError, RuntimeBackendError
from edge_agent.serving.server import ModelServer
from shared.canonical import parse_json_object
from shared.errors import NonFiniteNumberError, ProtocolError

__all__ = ["HttpApiConfig", "LocalApi"]

log = logging.getLogger(__name__)
_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})


@dataclass(frozen=True)
class HttpApiConfig:
    """Where the API listens and how much it accepts."""

    host: str = "127.0.0.1"
    port: int = 8787  # 0: pick a free port
    unix_socket: Path | None = None  # additionally serve on this socket path
    max_body_bytes: int = 16 * 1024 * 1024
    allow_remote: bool = False  # the API is for applications on the device
    # names callers may use in the Host header besides loopback and ``host`` (R14); with
    # ``allow_remote`` list the names remote callers reach the device by
    allowed_hosts: tuple[str, ...] = ()

    @property
    def host_names(self) -> frozenset[str]:
        """What the Host (and a browser's Origin) may name: anything else is a DNS-rebinding
        or cross-site page talking to the device's API."""
        return frozenset(h.lower() for h in (*_LOOPBACK, self.host, *self.allowed_hosts))

    def __post_init__(self) -> None:
        if self.host not in _LOOPBACK and not self.allow_remote:
            raise AgentConfigError(f"refusing to serve on {self.host}: not loopback")
        if not 0 <= self.port <= 65535:
            raise AgentConfigError("port must be in [0, 65535]")
        if not 1024 <= self.max_body_bytes <= 1 << 31:
            raise AgentConfigError("max_body_bytes must be in [1 KiB, 2 GiB]")


class _ApiError(Exception):
    def __init__(self, status: HTTPStatus, kind: str, message: str) -> None:
        super().__init__(message)
        self.status, self.kind = status, kind


def _make_handler(
    server: ModelServer, config: HttpApiConfig, health_extra: Callable[[], dict[str, Any]] | None
) -> type[BaseHTTPRequestHandler]:
    allowed = config.host_names

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # headers and body go out in separate writes: without TCP_NODELAY, Nagle plus the
        # client's delayed ACK add ~40 ms to every keep-alive response
        disable_nagle_algorithm = True
        server_version = "fedfleet-agent"
        check_host = True

        def address_string(self) -> str:  # Unix sockets have no client address
            return str(self.client_address[0]) if self.client_address else "unix"

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

        def _send(self, status: HTTPStatus, body: dict[str, Any]) -> None:
            data = json.dumps(body, separators=(",", ":")).encode()
            self.log_request(status.value)
            head = (
                f"{self.protocol_version} {status.value} {status.phrase}\r\n"
                f"Server: {self.server_version}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n"
                + ("Connection: close\r\n" if self.close_connection else "")
                + "\r\n"
            )
            # one write: status, headers and body leave in a single segment
            self.wfile.write(head.encode("latin-1") + data)

        def _raw_body(self) -> bytes:
            try:
                length = int(self.headers.get("Content-Length", ""))
            except ValueError:
                self.close_connection = True
                raise _ApiError(
                    HTTPStatus.LENGTH_REQUIRED, "LengthRequired", "need Content-Length"
                ) from None
            if length > config.max_body_bytes or length < 0:
                self.close_connection = True  # the unread body would poison keep-alive
                raise _ApiError(
                    HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                    "RequestTooLarge",
                    f"body of {length} bytes exceeds the limit of {config.max_body_bytes}",
                )
            return self.rfile.read(length)

        def _body(self) -> dict[str, Any]:
            raw = self._raw_body()
            try:
                return parse_json_object(raw, max_bytes=config.max_body_bytes)
            except NonFiniteNumberError as exc:  # R14: 1e999 is not a number we accept
                raise _ApiError(HTTPStatus.UNPROCESSABLE_ENTITY, "InvalidNumber", str(exc)) from exc
            except ProtocolError as exc:
                raise _ApiError(HTTPStatus.BAD_REQUEST, "MalformedRequest", str(exc)) from exc

        def _handle(self, fn: Callable[[], tuple[HTTPStatus, dict[str, Any]]]) -> None:
            try:
                status, body = fn()
            except _ApiError as exc:
                status, body = exc.status, {"error": {"type": exc.kind, "message": str(exc)}}
            except InferenceInputError as exc:
                status = HTTPStatus.UNPROCESSABLE_ENTITY
                body = {"error": {"type": "InferenceInputError", "message": str(exc)}}
            except RuntimeBackendError as exc:
                status = HTTPStatus.SERVICE_UNAVAILABLE
                body = {"error": {"type": "RuntimeBackendError", "message": str(exc)}}
            except Exception as exc:  # last resort: answer, log, keep serving
                log.exception("request failed")
                status = HTTPStatus.INTERNAL_SERVER_ERROR
                body = {"error": {"type": type(exc).__name__, "message": str(exc)}}
            with contextlib.suppress(OSError):  # the client went away
                self._send(status, body)

        def _refused_origin(self) -> str | None:
            """Why this request may not be served (R14), or ``None``: the Host header must
            name the device itself (a DNS-rebinding page sends its own name), and a browser's
            Origin, when sent, too (a cross-site page posting to 127.0.0.1)."""
            if not self.check_host:
                return None  # a Unix socket: no browser reaches it
            host = _host_name(self.headers.get("Host", ""))
            if host not in allowed:
                return f"Host {self.headers.get('Host', '')[:100]!r} is not this device"
            origin = self.headers.get("Origin")
            if origin is not None and _host_name(origin, url=True) not in allowed:
                return f"Origin {origin[:100]!r} is not this device"
            return None

        def _admitted(self) -> bool:
            problem = self._refused_origin()
            if problem is None:
                return True
            log.warning("refused %s %s: %s", self.command, self.path, problem)
            self.close_connection = True  # the body is not read
            self._handle_error(HTTPStatus.FORBIDDEN, "HostNotAllowed", problem)
            return False

        def _handle_error(self, status: HTTPStatus, kind: str, message: str) -> None:
            with contextlib.suppress(OSError):
                self._send(status, {"error": {"type": kind, "message": message}})

        def do_POST(self) -> None:
            if not self._admitted():
                return
            if self.path == "/predict":
                self._handle(self._predict)
            elif self.path == "/feedback":
                self._handle(lambda: self._feedback(self._body()))
            else:
                self._handle(self._not_found)

        def do_GET(self) -> None:
            if not self._admitted():
                return
            if self.path == "/health":
                self._handle(self._health)
            else:
                self._handle(self._not_found)

        def _predict(self) -> tuple[HTTPStatus, dict[str, Any]]:
            ctype = self.headers.get("Content-Type", "application/json").split(";")[0].strip()
            if ctype == "application/octet-stream":
                result = server.predict_binary(
                    self._raw_body(), self.headers.get("X-Shape"), self.headers.get("X-Dtype")
                )
            else:
                result = server.predict_request(self._body())
            return HTTPStatus.OK, result.to_dict()

        def _not_found(self) -> tuple[HTTPStatus, dict[str, Any]]:
            if self.command == "POST":
                # drain the body so the connection stays usable
                with contextlib.suppress(_ApiError):
                    self._raw_body()
            raise _ApiError(
                HTTPStatus.NOT_FOUND, "NotFound", f"no route {self.command} {self.path}"
            )

        def _feedback(self, body: dict[str, Any]) -> tuple[HTTPStatus, dict[str, Any]]:
            items = body.get("items", [body])
            if not isinstance(items, list) or not items or len(items) > 10_000:
                raise _ApiError(
                    HTTPStatus.BAD_REQUEST, "MalformedRequest", "'items' must be a non-empty list"
                )
            observers = server.observers
            accepted, unknown = 0, []
            for item in items:
                if not isinstance(item, dict):
                    raise _ApiError(
                        HTTPStatus.BAD_REQUEST, "MalformedRequest", "feedback items are objects"
                    )
                pid, label = item.get("id"), item.get("label")
                if (
                    not isinstance(pid, str)
                    or not isinstance(label, int)
                    or isinstance(label, bool)
                    or not 0 <= label < 1 << 31
                    or len(pid) > 128
                ):
                    raise _ApiError(
                        HTTPStatus.BAD_REQUEST,
                        "MalformedRequest",
                        "feedback needs 'id' (str, <= 128 chars) and 'label' (int >= 0)",
                    )
                if observers is not None and observers.feedback(pid, label):
                    accepted += 1
                else:
                    unknown.append(pid)
            status = HTTPStatus.OK if accepted else HTTPStatus.NOT_FOUND
            return status, {"accepted": accepted, "unknown": unknown}

        def _health(self) -> tuple[HTTPStatus, dict[str, Any]]:
            report = server.report
            body: dict[str, Any] = {
                "status": "ok" if report is not None else "no-model",
                "runtime": None if report is None else report.to_dict(),
                "stats": asdict(server.stats()),
            }
            if server.observers is not None:
                body["observers"] = asdict(server.observers.stats())
            if health_extra is not None:
                body.update(health_extra())
            return (HTTPStatus.OK if report is not None else HTTPStatus.SERVICE_UNAVAILABLE), body

    return Handler


def _host_name(value: str, *, url: bool = False) -> str:
    """The host part of a Host header (``name[:port]``, ``[v6]:port``) or of an Origin URL,
    lower-case; ``""`` when there is none."""
    try:
        host = urlsplit(value if url else f"//{value}").hostname
    except ValueError:
        return ""
    return host or ""


class _UnixHTTPServer(ThreadingHTTPServer):
    address_family = socket.AF_UNIX

    def server_bind(self) -> None:
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


class LocalApi:
    """Runs the HTTP API (and the optional Unix socket) in background threads."""

    def __init__(
        self,
        server: ModelServer,
        config: HttpApiConfig | None = None,
        *,
        health_extra: Callable[[], dict[str, Any]] | None = None,
    ) -> None:
        self.config = config or HttpApiConfig()
        handler = _make_handler(server, self.config, health_extra)
        self._servers: list[ThreadingHTTPServer] = [
            ThreadingHTTPServer((self.config.host, self.config.port), handler)
        ]
        sock = self.config.unix_socket
        if sock is not None:
            if sock.exists():
                sock.unlink()  # a stale socket from a crashed run
            # TCP_NODELAY does not exist on Unix sockets
            unix_handler = type(
                "UnixHandler", (handler,), {"disable_nagle_algorithm": False, "check_host": False}
            )
            self._servers.append(_UnixHTTPServer(str(sock), unix_handler))  # type: ignore[arg-type]
            os.chmod(sock, 0o660)
        for s in self._servers:
            s.daemon_threads = True
        self._threads: list[threading.Thread] = []

    @property
    def port(self) -> int:
        return int(self._servers[0].server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.config.host}:{self.port}"

    def start(self) -> None:
        for s in self._servers:
            t = threading.Thread(target=s.serve_forever, name="local-api", daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        for s in self._servers:
            s.shutdown()
            s.server_close()
        for t in self._threads:
            t.join(5)
        if self.config.unix_socket is not None:
            with contextlib.suppress(FileNotFoundError):
                self.config.unix_socket.unlink()
