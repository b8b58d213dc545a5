"""Enrollment: a one-time token and a CSR in, a device certificate and broker settings out.

:class:`EnrollmentService` holds the rules; the HTTP router and the CLI are thin shells over
it. The rules:

- the token must exist, be unused and unexpired; it is consumed only by an enrollment that
  succeeds (atomically with registering the device);
- the device class is the token's (a request naming another class is refused);
- the device id is the one the token was issued for, else the one the device asks for, else
  a generated ``{class}-{8 hex}``; an id already enrolled can be taken over only with a
  token issued for that id (re-installing a device), and the hub's MQTT identity, whatever
  name was configured, is reserved (R2; case-insensitively);
- labels set on the token win over labels the device reports about itself;
- the certificate's CN/SAN is the device id whatever the CSR asked for;
- :meth:`EnrollmentService.revoke` puts a device's certificate on the CRL that the broker
  checks (``crlfile``); re-enrolling an id revokes its previous certificate;
- with a :class:`BrokerAccess` (the broker's dynamic security plugin, see :mod:`.dynsec`),
  revoking also drops the device at the broker at once, and re-enrolling a revoked id
  readmits it there.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, Protocol

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.errors import (
    EnrollmentConflictError,
    EnrollmentRefusedError,
    UnknownTokenError,
)
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER, HubIdentity
from cloud_hub.enrollment.store import EnrollmentRepository
from cloud_hub.enrollment.tokens import (
    EnrolledDevice,
    TokenRecord,
    check_redeemable,
    hash_token,
    issue_token,
    validate_labels,
)
from cloud_hub.errors import HubConfigError, HubError
from shared.errors import ConfigError
from shared.signing import TrustRoot
from shared.topics import TopicScheme, validate_device_id

__all__ = [
    "BrokerAccess",
    "DeviceBrokerSettings",
    "EnrollmentConfig",
    "EnrollmentRequest",
    "EnrollmentResult",
    "EnrollmentService",
]

log = logging.getLogger(__name__)
UTC = timezone.utc
MAX_TOKEN_CHARS = 256
BROKER_WAIT_S = 5.0  # how long a revocation waits for the broker's confirmation


class BrokerAccess(Protocol):
    """Who the broker lets in (``broker_admin.BrokerAccessControl``): applied in the
    background until confirmed; the calls say whether it was within ``wait_s``."""

    def revoke(self, device_id: str, *, wait_s: float = 0.0) -> bool: ...

    def readmit(self, device_id: str, *, wait_s: float = 0.0) -> bool: ...

    def sync(self, revoked: Any) -> None: ...


def _utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class EnrollmentConfig:
    """What the hub tells enrolling devices, and how long what it issues lasts."""

    mqtt_url: str = "mqtts://localhost:8883"
    topic_prefix: str = "fedfleet"
    hub_user: str = DEFAULT_HUB_USER
    cert_days: int = 365
    default_token_ttl: timedelta = timedelta(hours=24)

    def __post_init__(self) -> None:
        if not self.mqtt_url.startswith(("mqtts://", "mqtt://")):
            raise HubConfigError(f"mqtt_url must start with mqtts:// or mqtt://: {self.mqtt_url}")
        if not 1 <= self.cert_days <= 3650:
            raise HubConfigError("cert_days must be between 1 and 3650")
        try:
            TopicScheme(self.topic_prefix)
            validate_device_id(self.hub_user)
        except ConfigError as exc:
            raise HubConfigError(str(exc)) from exc


@dataclass(frozen=True)
class EnrollmentRequest:
    """What a device sends."""

    token: str
    csr_pem: bytes
    device_class: str | None = None
    device_id: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DeviceBrokerSettings:
    """How the device reaches the broker. Authentication is the client certificate (mTLS):
    the broker takes the user name from its CN, so there is no password to leak."""

    url: str
    username: str
    client_id: str
    auth: str = "mtls"


@dataclass(frozen=True)
class EnrollmentResult:
    """What the hub answers (see :meth:`to_dict` for the wire form)."""

    device_id: str
    device_class: str
    labels: Mapping[str, str]
    certificate_pem: bytes
    ca_certificate_pem: bytes
    cert_not_after: datetime
    mqtt: DeviceBrokerSettings
    topic_prefix: str
    trust_root: TrustRoot | None
    # R10: the current root-signed keyring: a new device starts with the keyring floor the
    # fleet has, so a broker cannot feed it an older keyring that still trusts a revoked key
    keyring: Mapping[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "device_class": self.device_class,
            "labels": dict(self.labels),
            "certificate": self.certificate_pem.decode("ascii"),
            "ca_certificate": self.ca_certificate_pem.decode("ascii"),
            "cert_not_after": self.cert_not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "mqtt": {
                "url": self.mqtt.url,
                "username": self.mqtt.username,
                "client_id": self.mqtt.client_id,
                "auth": self.mqtt.auth,
            },
            "topic_prefix": self.topic_prefix,
            "trust_root": None if self.trust_root is None else self.trust_root.to_dict(),
            "keyring": None if self.keyring is None else dict(self.keyring),
        }


class EnrollmentService:
    """Issues tokens and enrolls devices. Thread-safe as far as its repository is."""

    def __init__(
        self,
        *,
        ca: CertificateAuthority,
        repository: EnrollmentRepository,
        config: EnrollmentConfig | None = None,
        trust_root: Callable[[], TrustRoot | None] = lambda: None,
        keyring: Callable[[], Mapping[str, Any] | None] = lambda: None,
        on_enrolled: Callable[[EnrolledDevice], None] | None = None,
        clock: Callable[[], datetime] = _utcnow,
        hub_identity: Callable[[], HubIdentity | None] = lambda: None,
        broker: BrokerAccess | None = None,
    ) -> None:
        self.ca = ca
        self.repository = repository
        self.config = config or EnrollmentConfig()
        self._trust_root = trust_root
        self._keyring = keyring
        self._on_enrolled = on_enrolled
        self._clock = clock
        self._hub_identity = hub_identity  # read on every use: broker-config may set it later
        self.broker = broker

    def _reserved(self, device_id: str) -> bool:
        """R2: the hub's MQTT identity (configured or default) is never a device id."""
        names = [HubIdentity(name=self.config.hub_user)]
        configured = self._hub_identity()
        if configured is not None:
            names.append(configured)
        return any(identity.reserves(device_id) for identity in names)

    def issue_token(
        self,
        *,
        device_class: str,
        labels: Mapping[str, str] | None = None,
        ttl: timedelta | None = None,
        device_id: str | None = None,
    ) -> tuple[str, TokenRecord]:
        """A new single-use token; the secret is returned once and never stored."""
        if device_id is not None and self._reserved(device_id):
            raise HubConfigError(f"{device_id!r} is reserved: it is the hub's MQTT identity")
        secret, record = issue_token(
            device_class=device_class,
            ttl=ttl or self.config.default_token_ttl,
            now=self._clock(),
            labels=labels,
            device_id=device_id,
        )
        self.repository.add_token(record)
        return secret, record

    def _device_id(self, record: TokenRecord, requested: str | None) -> str:
        if record.device_id is not None:
            if requested is not None and requested != record.device_id:
                raise EnrollmentConflictError(
                    f"this token is for device {record.device_id!r}, not {requested!r}"
                )
            if self._reserved(record.device_id):  # configured after the token was issued
                raise EnrollmentConflictError(
                    f"device id {record.device_id!r} is reserved (the hub's MQTT identity)"
                )
            return record.device_id
        device_id = requested or f"{record.device_class}-{secrets.token_hex(4)}"
        try:
            validate_device_id(device_id)
        except ConfigError as exc:
            raise EnrollmentRefusedError(f"device id: {exc}") from exc
        if self._reserved(device_id):
            raise EnrollmentConflictError(
                f"device id {device_id!r} is reserved (the hub's MQTT identity)"
            )
        if self.repository.get_device(device_id) is not None:
            raise EnrollmentConflictError(
                f"device id {device_id!r} is already enrolled; issue a token with "
                f"--device-id {device_id} to re-enroll it"
            )
        return device_id

    def enroll(self, request: EnrollmentRequest) -> EnrollmentResult:
        """Check the token, sign the CSR, consume the token and register the device."""
        now = self._clock()
        if not request.token or len(request.token) > MAX_TOKEN_CHARS:
            raise UnknownTokenError("unknown enrollment token")
        token_hash = hash_token(request.token)
        record = self.repository.get_token(token_hash)
        if record is None:
            raise UnknownTokenError("unknown enrollment token")
        check_redeemable(record, now)  # fail fast; redeem() checks again atomically
        if request.device_class is not None and request.device_class != record.device_class:
            raise EnrollmentConflictError(
                f"this token is for device class {record.device_class!r}, "
                f"not {request.device_class!r}"
            )
        try:
            labels = {**validate_labels(request.labels), **record.labels}
        except HubError as exc:
            raise EnrollmentRefusedError(str(exc)) from exc
        device_id = self._device_id(record, request.device_id)
        issued = self.ca.sign_device_csr(
            request.csr_pem, device_id=device_id, days=self.config.cert_days, now=now
        )
        device = EnrolledDevice(
            device_id=device_id,
            device_class=record.device_class,
            cert_serial=issued.serial,
            cert_fingerprint=issued.fingerprint,
            cert_not_after=issued.not_after,
            enrolled_at=now,
            labels=labels,
            token_id=record.token_id,
        )
        previous = self.repository.get_device(device_id)
        self.repository.redeem(
            token_hash, device, now=now, replace_device=record.device_id is not None
        )
        if self.broker is not None and previous is not None and previous.revoked_at is not None:
            self.broker.readmit(device_id)  # in the background: the device retries its connect
        if self._on_enrolled is not None:
            try:
                self._on_enrolled(device)
            except HubError:  # the certificate is issued; the device's hello registers it too
                log.exception("enrolled device %s not pre-registered", device_id)
        return EnrollmentResult(
            device_id=device_id,
            device_class=record.device_class,
            labels=labels,
            certificate_pem=issued.pem,
            ca_certificate_pem=self.ca.cert_pem,
            cert_not_after=issued.not_after,
            mqtt=DeviceBrokerSettings(
                url=self.config.mqtt_url, username=device_id, client_id=device_id
            ),
            topic_prefix=self.config.topic_prefix,
            trust_root=self._trust_root(),
            keyring=self._keyring(),
        )

    def revoke(self, device_id: str, *, wait_s: float = BROKER_WAIT_S) -> EnrolledDevice:
        """Revoke the device's certificate (:meth:`crl_pem`, for the broker's next start) and,
        with a broker access, drop the device there now (waiting up to ``wait_s`` for the
        confirmation; retried in the background after that)."""
        device = self.repository.revoke(device_id, now=self._clock())
        if self.broker is not None and not self.broker.revoke(device_id, wait_s=wait_s):
            log.warning(
                "device %s revoked; the broker has not confirmed dropping it yet (retrying)",
                device_id,
            )
        return device

    def revoked_device_ids(self) -> list[str]:
        """Devices whose enrollment is revoked (deleted and not enrolled again)."""
        return [d.device_id for d in self.repository.list_devices() if d.revoked_at is not None]

    def sync_broker(self) -> None:
        """Have the broker refuse every revoked device (it may have missed a deletion)."""
        if self.broker is not None:
            self.broker.sync(self.revoked_device_ids())

    def crl_pem(self, *, days: int = 365) -> bytes:
        """The current CRL (every revoked or superseded device certificate)."""
        return self.ca.build_crl(
            self.repository.revoked_certificates(), days=days, now=self._clock()
        )
