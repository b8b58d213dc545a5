"""Talking to the hub's enrollment API over HTTPS (stdlib only: the agent has no httpx).

Trust bootstrap: the device must know which CA to trust before it sends its token. The
operator gives it either

- ``--ca-cert FILE`` (the hub CA certificate copied out of band), or
- ``--ca-fingerprint sha256:HEX`` (printed by ``cloud-hub enroll-token``): the agent fetches
  ``/api/v1/enroll/ca.pem`` over an unverified connection, accepts it only if its SHA-256
  matches the pin, and then makes the enrollment request over a connection verified against
  that CA. A man in the middle can serve the (public) CA certificate but cannot complete the
  verified handshake, so the token never reaches it. This is how kubeadm's
  ``--discovery-token-ca-cert-hash`` works.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import ssl
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

from edge_agent.errors import EnrollmentError
from edge_agent.service.identity import fingerprint

__all__ = ["EnrollmentAnswer", "HubEndpoint", "enroll", "fetch_pinned_ca"]

MAX_RESPONSE_BYTES = 256 * 1024
CA_PATH = "/api/v1/enroll/ca.pem"
ENROLL_PATH = "/api/v1/enroll"


@dataclass(frozen=True)
class HubEndpoint:
    """The hub's base URL (``https://host:port``) and the request timeout."""

    url: str
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        parsed = urlparse(self.url)
        if parsed.scheme != "https" or not parsed.hostname:
            raise EnrollmentError(f"--hub must be an https:// URL, got {self.url!r}")
        if not 0 < self.timeout_s <= 600:
            raise EnrollmentError("timeout must be in (0, 600] seconds")

    def endpoint(self, path: str) -> str:
        return self.url.rstrip("/") + path


def _read(response: Any) -> bytes:
    data: bytes = response.read(MAX_RESPONSE_BYTES + 1)
    if len(data) > MAX_RESPONSE_BYTES:
        raise EnrollmentError("the hub's answer is larger than expected")
    return data


def fetch_pinned_ca(hub: HubEndpoint, pin: str) -> bytes:
    """The hub CA certificate, accepted only if its fingerprint equals ``pin``."""
    pin = pin.strip().lower()
    if not pin.startswith("sha256:") or len(pin) != len("sha256:") + 64:
        raise EnrollmentError("--ca-fingerprint must look like sha256:<64 hex digits>")
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE  # deliberately: what we accept is decided by the pin
    try:
        with urllib.request.urlopen(
            hub.endpoint(CA_PATH), context=ctx, timeout=hub.timeout_s
        ) as resp:
            pem = _read(resp)
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollmentError(f"cannot fetch the hub CA from {hub.url}: {exc}") from exc
    got = fingerprint(pem)
    if not hmac.compare_digest(got, pin):
        raise EnrollmentError(f"the hub CA fingerprint {got} does not match the pinned {pin}")
    return pem


@dataclass(frozen=True)
class EnrollmentAnswer:
    """The parsed ``POST /api/v1/enroll`` answer."""

    device_id: str
    device_class: str
    labels: dict[str, str]
    certificate_pem: bytes
    ca_certificate_pem: bytes
    mqtt_url: str
    mqtt_client_id: str
    topic_prefix: str
    trust_root: dict[str, Any] | None
    keyring: dict[str, Any] | None = None  # R10: the fleet's current keyring (root-signed)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EnrollmentAnswer:
        try:
            mqtt = data["mqtt"]
            trust = data.get("trust_root")
            keyring = data.get("keyring")
            answer = cls(
                device_id=str(data["device_id"]),
                device_class=str(data["device_class"]),
                labels={str(k): str(v) for k, v in dict(data.get("labels") or {}).items()},
                certificate_pem=str(data["certificate"]).encode("ascii"),
                ca_certificate_pem=str(data["ca_certificate"]).encode("ascii"),
                mqtt_url=str(mqtt["url"]),
                mqtt_client_id=str(mqtt.get("client_id") or data["device_id"]),
                topic_prefix=str(data["topic_prefix"]),
                trust_root=dict(trust) if isinstance(trust, dict) else None,
                keyring=dict(keyring) if isinstance(keyring, dict) else None,
            )
        except (KeyError, TypeError, ValueError, UnicodeEncodeError) as exc:
            raise EnrollmentError(f"the hub's enrollment answer is malformed: {exc}") from exc
        return answer


def enroll(
    hub: HubEndpoint,
    *,
    ca_pem: bytes,
    token: str,
    csr_pem: bytes,
    device_class: str | None,
    device_id: str | None,
    labels: Mapping[str, str],
) -> EnrollmentAnswer:
    """``POST /api/v1/enroll`` over TLS verified against ``ca_pem``."""
    ctx = ssl.create_default_context(cadata=ca_pem.decode("ascii"))
    body = json.dumps(
        {
            "token": token,
            "csr": csr_pem.decode("ascii"),
            "device_class": device_class,
            "device_id": device_id,
            "labels": dict(labels),
        }
    ).encode("utf-8")
    request = urllib.request.Request(
        hub.endpoint(ENROLL_PATH),
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "Accept": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, context=ctx, timeout=hub.timeout_s) as resp:
            raw = _read(resp)
    except urllib.error.HTTPError as exc:
        detail = ""
        with contextlib.suppress(ValueError, AttributeError, OSError):
            detail = str(json.loads(exc.read(MAX_RESPONSE_BYTES)).get("detail", ""))
        raise EnrollmentError(
            f"the hub refused the enrollment (HTTP {exc.code}): {detail or exc.reason}"
        ) from exc
    except (urllib.error.URLError, OSError) as exc:
        raise EnrollmentError(f"cannot reach the hub at {hub.url}: {exc}") from exc
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise EnrollmentError(f"the hub's answer is not JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise EnrollmentError("the hub's answer is not a JSON object")
    return EnrollmentAnswer.from_dict(data)
