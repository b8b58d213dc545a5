"""Enrollment inside a hub's data directory and registry (the I/O shell of CLI and app).

::

    DATA_DIR/ca/ca.key, ca.crt      the device CA (created on first use)
    DATA_DIR/hub-ca/                the hub client CA and the hub's MQTT identity (R2)
    DATA_DIR/tls/hub.crt, hub.key   the HTTPS server certificate of the hub API
    DATA_DIR/hub.db                 the hub registry (default; PostgreSQL via db_url) which
                                    also holds the enrollment_tokens / enrolled_devices tables
    DATA_DIR/broker-admin/          the hub's admin identity at the broker's dynamic security
                                    plugin (``broker-config`` issues it; see .broker_admin)
    DATA_DIR/keys/                  the delivery key store (``HubConfig.keys_path``); its
                                    trust root is handed to enrolling devices

The paths follow :class:`cloud_hub.config.HubConfig`, so ``cloud-hub serve`` and
``cloud-hub enroll-token`` agree on them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.hub_identity import load_hub_identity
from cloud_hub.enrollment.service import EnrollmentConfig, EnrollmentService
from cloud_hub.enrollment.tokens import EnrolledDevice
from cloud_hub.errors import HubError, RegistryError
from shared.files import atomic_write
from shared.signing import TrustRoot

if TYPE_CHECKING:
    from cloud_hub.enrollment.broker_admin import BrokerAccessControl
    from cloud_hub.registry import Registry

__all__ = [
    "HubTlsFiles",
    "broker_access_control",
    "keystore_keyring",
    "keystore_trust_root",
    "open_enrollment",
    "register_in_fleet",
    "server_tls_files",
]


def keystore_keyring(keys_dir: Path) -> dict[str, Any] | None:
    """The key store's current keyring envelope (R10: a new device starts at the fleet's
    keyring floor), or ``None`` while none exists or it does not verify."""
    from cloud_hub.keys import KeyStore

    store = KeyStore(keys_dir)
    if not store.exists():
        return None
    try:
        store.keyring()  # only one that verifies against our own trust root
        return store.keyring_envelope()
    except HubError:
        return None


def keystore_trust_root(keys_dir: Path) -> TrustRoot | None:
    """The delivery key store's trust root, or ``None`` while no key store exists."""
    from cloud_hub.keys import KeyStore  # imported where used: keeps enrollment import-light

    store = KeyStore(keys_dir)
    if not store.exists():
        return None
    try:
        return store.trust_root()
    except HubError:
        return None


def register_in_fleet(registry: Registry) -> Callable[[EnrolledDevice], None]:
    """An ``on_enrolled`` hook: the device appears in the fleet registry (class, labels)
    before its first hello, so rollouts can target it right away."""
    from cloud_hub.registry import devices
    from cloud_hub.registry.errors import DatabaseError

    def hook(device: EnrolledDevice) -> None:
        try:
            with registry.session() as s:
                devices.register_device(
                    s,
                    device.device_id,
                    device_class=device.device_class,
                    labels=dict(device.labels),
                    now=device.enrolled_at.timestamp(),
                )
        except DatabaseError as exc:
            raise RegistryError(f"cannot register {device.device_id}: {exc}") from exc

    return hook


def broker_access_control(
    data_dir: str | os.PathLike[str], device_mqtt_url: str
) -> BrokerAccessControl | None:
    """The admin session with the broker's device listener at ``device_mqtt_url``, or
    ``None`` when that is not mqtts:// or ``broker-config`` issued no admin identity here."""
    from cloud_hub.enrollment.broker_admin import (
        BrokerAccessControl,
        BrokerAdmin,
        BrokerAdminSettings,
        admin_credentials,
    )
    from shared.broker_endpoint import BrokerEndpoint

    cert, key = admin_credentials(data_dir)
    if not device_mqtt_url.startswith("mqtts://") or not (cert.exists() and key.exists()):
        return None
    endpoint = BrokerEndpoint.from_url(device_mqtt_url)
    settings = BrokerAdminSettings(
        host=endpoint.host,
        port=endpoint.port,
        ca_file=Path(data_dir) / "ca" / "ca.crt",
        cert_file=cert,
        key_file=key,
    )
    return BrokerAccessControl(BrokerAdmin(settings))


def open_enrollment(
    data_dir: str | os.PathLike[str],
    *,
    config: EnrollmentConfig | None = None,
    registry: Registry | None = None,
    db_url: str | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
) -> EnrollmentService:
    """An :class:`EnrollmentService` over ``data_dir`` (CA created on first use).

    Tokens and enrolled devices live in the hub registry's database: ``registry`` when the
    caller has it open (``cloud-hub serve``), else the one at ``db_url`` (default
    ``sqlite:///DATA_DIR/hub.db``), opened and migrated here.

    With a ``config`` whose ``mqtt_url`` (what devices connect to: the device listener) is
    mqtts:// and the admin identity ``broker-config`` issued, revoked devices are dropped at
    the broker at run time, and the ones it may have missed are sent to it in the background
    now (the hub's start)."""
    from cloud_hub.registry import open_registry
    from cloud_hub.registry.enrollment import SqlEnrollmentRepository

    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(d / "ca")
    if registry is None:
        registry = open_registry(db_url or f"sqlite:///{(d / 'hub.db').resolve()}")
    keys = Path(keys_dir) if keys_dir is not None else d / "keys"
    broker = None if config is None else broker_access_control(d, config.mqtt_url)
    service = EnrollmentService(
        ca=ca,
        repository=SqlEnrollmentRepository(registry.engine, migrate=False),  # opened migrated
        config=config,
        trust_root=lambda: keystore_trust_root(keys),
        keyring=lambda: keystore_keyring(keys),
        on_enrolled=register_in_fleet(registry),
        hub_identity=lambda: load_hub_identity(d),
        broker=broker,
    )
    service.sync_broker()
    return service


@dataclass(frozen=True)
class HubTlsFiles:
    """Certificate and key for ``uvicorn --ssl-certfile/--ssl-keyfile``."""

    certfile: Path
    keyfile: Path
    ca_file: Path


def server_tls_files(
    data_dir: str | os.PathLike[str],
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    *,
    renew: bool = False,
) -> HubTlsFiles:
    """The hub API's TLS server certificate, issued by the hub CA on first use."""
    d = Path(data_dir)
    ca = CertificateAuthority.load_or_create(d / "ca")
    tls = d / "tls"
    files = HubTlsFiles(
        certfile=tls / "hub.crt", keyfile=tls / "hub.key", ca_file=d / "ca" / "ca.crt"
    )
    if renew or not (files.certfile.exists() and files.keyfile.exists()):
        tls.mkdir(parents=True, exist_ok=True)
        creds = ca.issue_server(list(hostnames))
        atomic_write(files.keyfile, creds.key_pem, mode=0o600)
        atomic_write(files.certfile, creds.cert_pem)
    return files
