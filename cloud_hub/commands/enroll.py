"""``cloud-hub enroll-init|enroll-token|enroll-list|enroll-revoke|broker-config``.

``enroll-token`` prints a single-use token once, with the CA fingerprint the device pins and
a ready ``edge-agent install`` line. ``broker-config`` writes a Mosquitto mTLS setup (config,
ACL, broker and hub certificates) signed by the same CA.
"""

from __future__ import annotations

import argparse
import os
import re
from datetime import timedelta
from pathlib import Path

from cloud_hub.commands.options import add_hub_options, hub_config_from_args
from cloud_hub.config import HubConfig
from cloud_hub.enrollment.broker import DynsecSetup, write_broker_files
from cloud_hub.enrollment.broker_admin import issue_admin_credentials
from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.dynsec import DYNSEC_PLUGIN_CANDIDATES, broker_admin_user
from cloud_hub.enrollment.hub_identity import (
    DEFAULT_HUB_USER,
    HubIdentity,
    configure_hub_identity,
    hub_client_ca,
    issued_hub_certificates,
    load_hub_identity,
    record_hub_certificate,
)
from cloud_hub.enrollment.hubdir import open_enrollment, server_tls_files
from cloud_hub.enrollment.service import BROKER_WAIT_S, EnrollmentConfig, EnrollmentService
from cloud_hub.errors import HubConfigError
from shared.errors import ConfigError
from shared.files import atomic_write
from shared.topics import TopicScheme

__all__ = ["parse_labels", "parse_ttl", "register"]

_TTL = re.compile(r"^(\d+)([smhd]?)$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_ttl(text: str) -> timedelta:
    """``90``, ``90s``, ``30m``, ``24h``, ``7d`` → a timedelta."""
    m = _TTL.fullmatch(text.strip())
    if not m:
        raise HubConfigError(f"invalid --ttl {text!r}: use e.g. 30m, 24h or 7d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["site=plant-3", "line=2"]`` → ``{"site": "plant-3", "line": "2"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise HubConfigError(f"invalid label {item!r}: use key=value")
        out[key.strip()] = value.strip()
    return out


def _hub_config(args: argparse.Namespace) -> HubConfig:
    """The hub's settings: ``--config`` file, environment, flags (the same as ``serve``)."""
    return hub_config_from_args(args)


def _enroll_token(args: argparse.Namespace) -> int:
    hub = _hub_config(args)
    service = open_enrollment(hub.data_dir, db_url=hub.database_url, keys_dir=hub.keys_path)
    secret, record = service.issue_token(
        device_class=args.device_class,
        labels=parse_labels(args.labels),
        ttl=parse_ttl(args.ttl),
        device_id=args.device_id,
    )
    expires = record.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
    if args.token_file is not None:  # kept out of terminals, logs and `ps` (install reads it)
        atomic_write(args.token_file, (secret + "\n").encode(), mode=0o600)
        print(f"token           written to {args.token_file}")
    else:
        print(f"token           {secret}")
    print(f"token id        {record.token_id}  (single use, expires {expires})")
    print(f"device class    {record.device_class}")
    if record.labels:
        print(f"labels          {', '.join(f'{k}={v}' for k, v in record.labels.items())}")
    if record.device_id:
        print(f"device id       {record.device_id}")
    print(f"ca fingerprint  {service.ca.fingerprint}")
    given = (
        f"--token-file {args.token_file}" if args.token_file is not None else f"--token {secret}"
    )
    hub_url = args.hub_url or os.environ.get("FEDFLEET_API") or "https://HUB:8443"
    print("install with:")
    print(
        f"  edge-agent install --hub {hub_url} {given} "
        f"--ca-fingerprint {service.ca.fingerprint} --class {record.device_class}"
    )
    return 0


def _enroll_init(args: argparse.Namespace) -> int:
    hub = _hub_config(args)
    ca = CertificateAuthority.load_or_create(hub.data_dir / "ca")
    tls = server_tls_files(
        hub.data_dir, args.hostname or ["localhost", "127.0.0.1"], renew=args.renew
    )
    print(f"hub CA          {tls.ca_file}")
    print(f"ca fingerprint  {ca.fingerprint}")
    print(f"https cert      {tls.certfile}")
    print(f"https key       {tls.keyfile}")
    print("serve the API over HTTPS with this certificate (the hub CA verifies it):")
    print(f"  cloud-hub serve --tls --data-dir {hub.data_dir}")
    print("devices pin the fingerprint with `edge-agent install --ca-fingerprint`; API clients")
    print(f"trust the hub with `cloud-hub rollout --ca-file {tls.ca_file}` (or FEDFLEET_CA_FILE).")
    return 0


def _enroll_list(args: argparse.Namespace) -> int:
    hub = _hub_config(args)
    service = open_enrollment(hub.data_dir, db_url=hub.database_url, keys_dir=hub.keys_path)
    print("tokens (id, class, expires, used by)")
    for t in service.repository.list_tokens():
        expires = t.expires_at.strftime("%Y-%m-%dT%H:%M:%SZ")
        print(f"  {t.token_id}  {t.device_class:16} {expires}  {t.used_by or '-'}")
    print("enrolled devices (id, class, certificate valid until)")
    for d in service.repository.list_devices():
        until = d.cert_not_after.strftime("%Y-%m-%dT%H:%M:%SZ")
        state = "  REVOKED" if d.revoked_at is not None else ""
        print(f"  {d.device_id:24} {d.device_class:16} {until}{state}")
    return 0


def _reserve_hub_identity(
    service: EnrollmentService, data_dir: Path, name: str | None
) -> HubIdentity:
    """R2: the hub's MQTT identity, persisted on first use; refused when a device holds it."""
    current = load_hub_identity(data_dir)
    if current is not None and name is not None and name != current.name:
        return configure_hub_identity(data_dir, name)  # raises: it is set once
    candidate = current or HubIdentity(name=name or DEFAULT_HUB_USER)
    for device in service.repository.list_devices():
        if candidate.reserves(device.device_id) and device.revoked_at is None:
            raise HubConfigError(
                f"device {device.device_id!r} is enrolled under the hub's MQTT identity; "
                f"revoke it (`cloud-hub enroll-revoke {device.device_id}`) or pick another name"
            )
    return configure_hub_identity(data_dir, candidate.name)


def _broker_config(args: argparse.Namespace) -> int:
    try:
        scheme = TopicScheme(args.prefix)
    except ConfigError as exc:
        raise HubConfigError(str(exc)) from exc
    hub = _hub_config(args)
    service = open_enrollment(hub.data_dir, db_url=hub.database_url, keys_dir=hub.keys_path)
    identity = _reserve_hub_identity(service, hub.data_dir, args.hub_user)
    hub_ca = hub_client_ca(hub.data_dir)
    dynsec = None
    if not args.no_dynsec:
        admin_user = broker_admin_user(identity.name)
        issue_admin_credentials(hub.data_dir, service.ca, admin_user)
        deleted = tuple(d.device_id for d in service.repository.list_devices() if d.revoked_at)
        plugin = args.dynsec_plugin or _default_dynsec_plugin()
        dynsec = DynsecSetup(plugin=plugin, admin_user=admin_user, revoked=deleted)
    files = write_broker_files(
        service.ca,
        args.out,
        hub_ca=hub_ca,
        # R2: a new hub certificate each run; the ones issued before are refused from now on
        # (long-lived: a CRL past its next update locks every hub certificate out)
        hub_crl_pem=hub_ca.build_crl(issued_hub_certificates(hub.data_dir), days=3650),
        record_hub_serial=lambda serial: record_hub_certificate(hub.data_dir, serial),
        hub_user=identity.name,
        scheme=scheme,
        hostnames=args.hostname or ["localhost", "127.0.0.1"],
        port=args.port,
        hub_port=args.hub_port,
        bind=args.bind,
        broker_user=args.broker_user,
        crl_pem=service.crl_pem(),
        dynsec=dynsec,
    )
    host = (args.hostname or ["localhost"])[0]
    print(f"wrote {files.config}")
    print(f"  device port  {files.port} (devices; client certificates from {files.ca_cert})")
    print(f"  hub port     {files.hub_port} (the hub only; certificates from {files.hub_ca_cert})")
    print(f"  acls         {files.acl} (devices), {files.hub_acl} (hub)")
    print(f"  broker cert  {files.server_cert} (key {files.server_key})")
    print(f"  hub cert     {files.hub_cert} (key {files.hub_key}; MQTT identity {identity.name})")
    print(f"  crl          {files.crl} (refresh with `cloud-hub enroll-revoke`)")
    print(f"  hub crl      {files.hub_crl} (hub certificates this run replaced)")
    if dynsec is not None:
        print(
            f"  deletions    {files.dynsec_config} (plugin {dynsec.plugin}; the hub drops a "
            f"deleted device at once as {dynsec.admin_user}; keep {files.config.parent} "
            "writable for the broker)"
        )
    print(f"run: mosquitto -c {files.config}")
    print("then run the hub with its own certificate on the hub listener:")
    print(
        f"  cloud-hub serve --tls --data-dir {hub.data_dir} "
        f"--mqtt-url mqtts://{host}:{files.hub_port} --mqtt-ca-file {files.ca_cert} "
        f"--mqtt-cert-file {files.hub_cert} --mqtt-key-file {files.hub_key} "
        f"--device-mqtt-url mqtts://{host}:{files.port}"
    )
    return 0


def _default_dynsec_plugin() -> Path:
    """The plugin where this host has it, else where Debian and Ubuntu install it."""
    for candidate in DYNSEC_PLUGIN_CANDIDATES:
        if Path(candidate).exists():
            return Path(candidate)
    return Path(DYNSEC_PLUGIN_CANDIDATES[0])


def _enroll_revoke(args: argparse.Namespace) -> int:
    hub = _hub_config(args)
    config = None  # with the device listener's URL: drop the device there now (dynsec)
    if hub.device_mqtt_url:
        config = EnrollmentConfig(mqtt_url=hub.device_mqtt_url, topic_prefix=hub.topic_prefix)
    service = open_enrollment(
        hub.data_dir, db_url=hub.database_url, keys_dir=hub.keys_path, config=config
    )
    device = service.revoke(args.device_id, wait_s=0.0)
    print(f"revoked the certificate of {device.device_id} (serial {device.cert_serial:x})")
    if service.broker is not None:
        if service.broker.revoke(device.device_id, wait_s=BROKER_WAIT_S):
            print(f"the broker at {hub.device_mqtt_url} dropped {device.device_id}")
        else:
            print(f"the broker at {hub.device_mqtt_url} did not confirm; the hub retries it")
    crl = service.crl_pem()
    if args.broker_dir is not None:
        path = Path(args.broker_dir) / "crl.pem"
        try:
            atomic_write(path, crl, mode=0o644)  # R15: the broker never reads half a CRL
        except OSError as exc:
            raise HubConfigError(
                f"{device.device_id} is revoked, but {path} could not be replaced ({exc}); "
                "the old CRL is intact: run this command again"
            ) from exc
        print(f"wrote {path}; now `kill -HUP` Mosquitto (or restart it to drop open sessions)")
    else:
        print("no --broker-dir: copy the CRL from `cloud-hub broker-config` output again")
    return 0


def _add_hub_arguments(parser: argparse.ArgumentParser) -> None:
    add_hub_options(parser, ("data_dir", "db_url", "keys_dir"))


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    tok = subparsers.add_parser("enroll-token", help="issue a single-use device enrollment token")
    tok.add_argument("--class", dest="device_class", required=True, help="device class")
    tok.add_argument(
        "--labels", nargs="*", default=[], metavar="K=V", help="labels given to the device"
    )
    tok.add_argument("--ttl", default="24h", help="lifetime, e.g. 30m, 24h, 7d (default 24h)")
    tok.add_argument("--device-id", default=None, help="bind the token to one device id")
    tok.add_argument(
        "--token-file",
        type=Path,
        default=None,
        help="write the token to this file (mode 0600) instead of printing it; copy it to the "
        "device for `edge-agent install --token-file`",
    )
    _add_hub_arguments(tok)
    tok.add_argument(
        "--hub-url",
        default=None,
        help="hub URL shown in the install line (default $FEDFLEET_API, else https://HUB:8443)",
    )
    tok.set_defaults(func=_enroll_token)

    init = subparsers.add_parser(
        "enroll-init", help="create the hub CA and the API's HTTPS certificate"
    )
    _add_hub_arguments(init)
    init.add_argument(
        "--hostname", action="append", default=[], help="API host name/IP (repeatable)"
    )
    init.add_argument("--renew", action="store_true", help="re-issue the HTTPS certificate")
    init.set_defaults(func=_enroll_init)

    listing = subparsers.add_parser("enroll-list", help="list enrollment tokens and devices")
    _add_hub_arguments(listing)
    listing.set_defaults(func=_enroll_list)

    revoke = subparsers.add_parser(
        "enroll-revoke", help="revoke a device certificate and refresh the broker's CRL"
    )
    revoke.add_argument("device_id")
    revoke.add_argument("--broker-dir", type=Path, default=None, help="broker-config --out DIR")
    add_hub_options(revoke, ("data_dir", "db_url", "keys_dir", "device_mqtt_url"))
    revoke.set_defaults(func=_enroll_revoke)

    broker = subparsers.add_parser(
        "broker-config", help="write a Mosquitto mTLS config + ACL signed by the hub CA"
    )
    broker.add_argument("--out", type=Path, required=True, help="output directory")
    _add_hub_arguments(broker)
    broker.add_argument("--port", type=int, default=8883, help="device listener port")
    broker.add_argument(
        "--hub-port", type=int, default=8884, help="hub listener port (hub client CA only)"
    )
    broker.add_argument("--bind", default="0.0.0.0")
    broker.add_argument(
        "--hostname", action="append", default=[], help="broker host name/IP (repeatable)"
    )
    broker.add_argument("--prefix", default="fedfleet", help="topic prefix")
    broker.add_argument(
        "--hub-user",
        default=None,
        help=f"the hub's MQTT identity, set once (default {DEFAULT_HUB_USER}); reserved: "
        "no device can enroll with it",
    )
    broker.add_argument(
        "--broker-user", default=None, help="OS user Mosquitto runs as (must read server.key)"
    )
    broker.add_argument(
        "--dynsec-plugin",
        type=Path,
        default=None,
        help="mosquitto_dynamic_security.so on the broker host (default: found here, else "
        f"{DYNSEC_PLUGIN_CANDIDATES[0]}); deleted devices are dropped through it at run time",
    )
    broker.add_argument(
        "--no-dynsec",
        action="store_true",
        help="no dynamic security plugin: a deleted device is dropped only when the broker "
        "reloads the CRL (enroll-revoke --broker-dir, then a restart)",
    )
    broker.set_defaults(func=_broker_config)
