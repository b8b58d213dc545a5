"""Enrollment state inside the hub's data directory (the I/O shell used by CLI and app).

::

    DATA_DIR/ca/ca.key, ca.crt      the hub CA (created on first use)
    DATA_DIR/tls/hub.crt, hub.key   the HTTPS server certificate of the hub API
    DATA_DIR/enrollment.sqlite      tokens and enrolled devices (unless a DB URL is given)
    DATA_DIR/trust_root.json ...    the delivery key store (``cloud-hub keys init --dir``
                                    uses the same directory by default); its trust root
                                    is handed to enrolling devices
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import create_engine

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.service import EnrollmentConfig, EnrollmentService
from cloud_hub.enrollment.store import SqlEnrollmentRepository
from cloud_hub.errors import HubError
from shared.signing import TrustRoot

__all__ = ["HubTlsFiles", "keystore_trust_root", "open_enrollment", "server_tls_files"]


def keystore_trust_root(keys_dir: Path) -> TrustRoot | None:
    """The delivery key store's trust root, or ``None`` while no key store exists."""
    from cloud_hub.keys import KeyStore  # the delivery engineer's module

    store = KeyStore(keys_dir)
    if not store.exists():
        return None
    try:
        return store.trust_root()
    except HubError:
        return None


def open_enrollment(
    data_dir: str | os.PathLike[str],
    *,
    config: EnrollmentConfig | None = None,
    db_url: str | None = None,
    keys_dir: str | os.PathLike[str] | None = None,
) -> EnrollmentService:
    """An :class:`EnrollmentService` over ``data_dir`` (CA created on first use)."""
    d = Path(data_dir)
    d.mkdir(parents=True, exist_ok=True)
    ca = CertificateAuthority.load_or_create(d / "ca")
    engine = create_engine(db_url or f"sqlite:///{(d / 'enrollment.sqlite').resolve()}")
    keys = Path(keys_dir) if keys_dir is not None else d
    return EnrollmentService(
        ca=ca,
        repository=SqlEnrollmentRepository(engine),
        config=config,
        trust_root=lambda: keystore_trust_root(keys),
    )


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
        fd = os.open(files.keyfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(creds.key_pem)
        files.certfile.write_bytes(creds.cert_pem)
    return files
