"""A Mosquitto configuration for mutual TLS, and the files it needs.

Two listeners with their own settings (``per_listener_settings true``):

- the device listener (``port``, default 8883) trusts only the device CA (``ca.crt``), maps
  the certificate's CN to the user name and (R3) replaces the client id with it, so a device
  can neither take another client's id nor its persistent session; its ACL (``acl``) has
  device patterns only (R2);
- the hub listener (``hub_port``, default 8884) trusts only the hub client CA
  (``hub-ca.crt``), which issues nothing but the hub's own certificates; its ACL
  (``acl-hub``) gives the hub identity the whole prefix. The hub's connections keep the
  client ids they choose (identity, role and instance: several hubs share one broker) and
  every one of them contains ``:``, which no device id can.

:func:`render_mosquitto_config` is pure; :func:`write_broker_files` is the I/O shell that
issues the broker's server certificate and the hub's MQTT client certificate and writes::

    DIR/ca.crt  DIR/hub-ca.crt  DIR/server.crt  DIR/server.key  DIR/hub.crt  DIR/hub.key
    DIR/acl     DIR/acl-hub     DIR/mosquitto.conf
    DIR/crl.pem, DIR/hub-crl.pem (when given: revoked device / replaced hub certificates)

Deletion at run time: with :class:`DynsecSetup` the device listener loads the dynamic
security plugin (:mod:`.dynsec`), and a device deleted on the hub is dropped and left without
rights within seconds, with no restart and no file copied to the broker host.

Revocation across restarts: with a CRL (``EnrollmentService.crl_pem()``) the device listener checks every
client certificate against ``crl.pem``; ``cloud-hub enroll-revoke`` rewrites that file. Then
send Mosquitto SIGHUP (checked with 2.0.11: new connections are verified against the new
CRL) or restart it (which also drops a connection the revoked device still holds). The CRL is
long-lived on purpose: OpenSSL refuses every client once a CRL is past its next update.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from cloud_hub.enrollment.acl import render_device_acl, render_hub_acl
from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.dynsec import render_dynsec_config
from cloud_hub.errors import HubConfigError
from shared.files import atomic_write
from shared.topics import TopicScheme

__all__ = [
    "BrokerFiles",
    "BrokerTlsConfig",
    "DynsecSetup",
    "render_mosquitto_config",
    "write_broker_files",
]


@dataclass(frozen=True)
class DynsecSetup:
    """The dynamic security plugin of the device listener: where the broker host has it, the
    hub's admin user, the devices deleted so far."""

    plugin: Path
    admin_user: str
    revoked: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class BrokerTlsConfig:
    """The two mTLS listeners of Mosquitto (2.0.x): devices and the hub."""

    port: int = 8883
    hub_port: int = 8884
    bind: str = "0.0.0.0"
    cafile: Path  # the device CA
    hub_cafile: Path  # the hub client CA
    certfile: Path  # the broker's server certificate (device CA), on both listeners
    keyfile: Path
    acl_file: Path
    hub_acl_file: Path
    crlfile: Path | None = None  # revoked device certificates (`cloud-hub enroll-revoke`)
    # The dynamic security plugin on the device listener (see .dynsec): deleting a device
    # drops its connection and leaves it no rights, at run time. Both or neither.
    dynsec_plugin: Path | None = None
    dynsec_config: Path | None = None
    hub_crlfile: Path | None = None  # hub certificates replaced by a later broker-config
    tls_version: str = "tlsv1.2"  # the minimum accepted; 1.3 is negotiated when possible
    max_packet_size: int = 1024 * 1024  # bundle chunks are ~128 KiB
    # QoS 1 messages the broker queues per client beyond those in flight, e.g. for the hub's
    # persistent ingest session while the hub restarts. Mosquitto's default (1,000) is what a
    # 10,000-device fleet sends in under a second; past it the broker drops silently,
    # must-keep reports included. 200,000 covers minutes of such a fleet; the byte bound keeps
    # any one client (a device offline during a rollout of 128 KiB chunks) at 64 MiB.
    max_queued_messages: int = 200_000
    max_queued_bytes: int = 64 * 1024 * 1024
    persistence_dir: Path | None = None
    log_dest: str = "stderr"
    # Mosquitto started as root drops to this user (default "mosquitto"), which must be able
    # to read keyfile; tests running as root pass "root" to keep it.
    user: str | None = None

    def __post_init__(self) -> None:
        for name in ("port", "hub_port"):
            if not 1 <= getattr(self, name) <= 65535:
                raise HubConfigError(f"invalid broker {name} {getattr(self, name)}")
        if self.port == self.hub_port:
            raise HubConfigError("the device and hub listeners need different ports")
        if self.tls_version not in ("tlsv1.2", "tlsv1.3"):
            raise HubConfigError("tls_version must be tlsv1.2 or tlsv1.3")
        if not 64 * 1024 <= self.max_packet_size <= 256 * 1024 * 1024:
            raise HubConfigError("max_packet_size must be between 64 KiB and 256 MiB")
        if not 1000 <= self.max_queued_messages <= 10_000_000:
            raise HubConfigError("max_queued_messages must be between 1,000 and 10,000,000")
        if not self.max_packet_size <= self.max_queued_bytes <= 16 * 1024**3:
            raise HubConfigError("max_queued_bytes must be between max_packet_size and 16 GiB")
        if (self.dynsec_plugin is None) != (self.dynsec_config is None):
            raise HubConfigError("dynsec_plugin and dynsec_config go together")
        paths = ("cafile", "hub_cafile", "certfile", "keyfile", "acl_file", "hub_acl_file")
        optional = ("crlfile", "hub_crlfile", "dynsec_plugin", "dynsec_config", "persistence_dir")
        for name in (*paths, *optional, "bind", "log_dest"):
            if any(c in str(getattr(self, name)) for c in "\n\r"):
                raise HubConfigError(f"{name} contains a line break")
        if self.user is not None and not re.fullmatch(
            r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}$", self.user
        ):
            raise HubConfigError(f"invalid broker user {self.user!r}")


def render_mosquitto_config(cfg: BrokerTlsConfig) -> str:
    """``mosquitto.conf`` text: client certificates required on both listeners, ACLs enforced."""
    lines = [
        "# fedfleet broker (generated by `cloud-hub broker-config`).",
        "per_listener_settings true",
        f"max_packet_size {cfg.max_packet_size}",
        f"log_dest {cfg.log_dest}",
        "# per-client queue of QoS 1 messages (the hub's session while it restarts)",
        f"max_queued_messages {cfg.max_queued_messages}",
        f"max_queued_bytes {cfg.max_queued_bytes}",
    ]
    if cfg.user is not None:
        lines.append(f"user {cfg.user}")
    if cfg.persistence_dir is not None:
        lines += ["persistence true", f"persistence_location {cfg.persistence_dir}/"]
    else:
        lines.append("persistence false")
    tls = [
        f"certfile {cfg.certfile}",
        f"keyfile {cfg.keyfile}",
        f"tls_version {cfg.tls_version}",
        "require_certificate true",
        "use_identity_as_username true",
        "allow_anonymous false",
    ]
    lines += [
        "",
        "# Devices: certificates from the device CA. R3: the client id is the certificate's",
        "# identity, so no device can take another client's id or persistent session.",
        f"listener {cfg.port} {cfg.bind}",
        f"cafile {cfg.cafile}",
        *([f"crlfile {cfg.crlfile}"] if cfg.crlfile is not None else []),
        *tls,
        "use_username_as_clientid true",
        *_dynsec_lines(cfg),
        f"acl_file {cfg.acl_file}",
        "",
        "# The hub: certificates from the hub client CA only (R2). Its connections choose",
        "# their client ids (identity:role:instance), which no device id can equal.",
        f"listener {cfg.hub_port} {cfg.bind}",
        f"cafile {cfg.hub_cafile}",
        *([f"crlfile {cfg.hub_crlfile}"] if cfg.hub_crlfile is not None else []),
        *tls,
        f"acl_file {cfg.hub_acl_file}",
    ]
    return "\n".join(lines) + "\n"


def _dynsec_lines(cfg: BrokerTlsConfig) -> list[str]:
    if cfg.dynsec_plugin is None or cfg.dynsec_config is None:
        return []
    return [
        "# Deleted devices: the hub's admin identity revokes them here at run time (the",
        "# plugin is asked before the ACL file; it knows only the admin and deleted devices).",
        f"plugin {cfg.dynsec_plugin}",
        f"plugin_opt_config_file {cfg.dynsec_config}",
    ]


@dataclass(frozen=True)
class BrokerFiles:
    """Paths written by :func:`write_broker_files`."""

    config: Path
    acl: Path
    hub_acl: Path
    ca_cert: Path
    hub_ca_cert: Path
    server_cert: Path
    server_key: Path
    hub_cert: Path
    hub_key: Path
    port: int
    hub_port: int
    crl: Path | None = None
    hub_crl: Path | None = None
    dynsec_config: Path | None = None


def write_broker_files(
    ca: CertificateAuthority,
    directory: str | os.PathLike[str],
    *,
    hub_ca: CertificateAuthority,
    hub_user: str,
    scheme: TopicScheme,
    hostnames: Sequence[str] = ("localhost", "127.0.0.1"),
    port: int = 8883,
    hub_port: int = 8884,
    bind: str = "0.0.0.0",
    persistence_dir: Path | None = None,
    broker_user: str | None = None,
    crl_pem: bytes | None = None,
    hub_crl_pem: bytes | None = None,
    record_hub_serial: Callable[[int], None] | None = None,
    dynsec: DynsecSetup | None = None,
) -> BrokerFiles:
    """Issue the broker and hub certificates and write a complete mTLS broker setup.

    ``ca`` is the device CA (it also issues the broker's server certificate, which devices
    verify); ``hub_ca`` issues the hub's client certificate (CN ``hub_user``), whose serial
    goes to ``record_hub_serial`` before any file is written; ``hub_crl_pem`` revokes the
    hub certificates issued before (hub listener)."""
    if hub_ca.fingerprint == ca.fingerprint:
        raise HubConfigError("the hub client CA must not be the device CA (R2)")
    d = Path(directory).resolve()
    d.mkdir(parents=True, exist_ok=True)
    server = ca.issue_server(list(hostnames))
    hub = hub_ca.issue_client(hub_user)
    if record_hub_serial is not None:
        record_hub_serial(x509.load_pem_x509_certificate(hub.cert_pem).serial_number)
    files = BrokerFiles(
        config=d / "mosquitto.conf",
        acl=d / "acl",
        hub_acl=d / "acl-hub",
        ca_cert=d / "ca.crt",
        hub_ca_cert=d / "hub-ca.crt",
        server_cert=d / "server.crt",
        server_key=d / "server.key",
        hub_cert=d / "hub.crt",
        hub_key=d / "hub.key",
        port=port,
        hub_port=hub_port,
        crl=None if crl_pem is None else d / "crl.pem",
        hub_crl=None if hub_crl_pem is None else d / "hub-crl.pem",
        dynsec_config=None if dynsec is None else d / "dynamic-security.json",
    )
    atomic_write(files.ca_cert, ca.cert_pem, mode=0o644)
    atomic_write(files.hub_ca_cert, hub_ca.cert_pem, mode=0o644)
    atomic_write(files.server_cert, server.cert_pem, mode=0o644)
    # Mosquitto often runs as its own user: the operator may need to chown server.key.
    atomic_write(files.server_key, server.key_pem, mode=0o600)
    atomic_write(files.hub_cert, hub.cert_pem, mode=0o644)
    atomic_write(files.hub_key, hub.key_pem, mode=0o600)
    atomic_write(files.acl, render_device_acl(scheme).encode(), mode=0o644)
    atomic_write(files.hub_acl, render_hub_acl(scheme, hub_user=hub_user).encode(), mode=0o644)
    if files.crl is not None and crl_pem is not None:
        atomic_write(files.crl, crl_pem, mode=0o644)
    if files.hub_crl is not None and hub_crl_pem is not None:
        atomic_write(files.hub_crl, hub_crl_pem, mode=0o644)
    if files.dynsec_config is not None and dynsec is not None:
        text = render_dynsec_config(dynsec.admin_user, dynsec.revoked)
        atomic_write(files.dynsec_config, text.encode(), mode=0o644)
    cfg = BrokerTlsConfig(
        port=port,
        hub_port=hub_port,
        bind=bind,
        cafile=files.ca_cert,
        hub_cafile=files.hub_ca_cert,
        certfile=files.server_cert,
        keyfile=files.server_key,
        acl_file=files.acl,
        hub_acl_file=files.hub_acl,
        crlfile=files.crl,
        hub_crlfile=files.hub_crl,
        dynsec_plugin=None if dynsec is None else dynsec.plugin,
        dynsec_config=files.dynsec_config,
        persistence_dir=persistence_dir,
        user=broker_user,
    )
    atomic_write(files.config, render_mosquitto_config(cfg).encode(), mode=0o644)
    return files
