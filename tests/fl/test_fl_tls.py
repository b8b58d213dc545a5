"""TLS between SuperLink and SuperNode: a SuperNode that trusts the hub's CA registers."""

from __future__ import annotations

import datetime as dt
import ipaddress
import socket
import time
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from cloud_hub.fl.superlink import SuperLinkConfig, SuperLinkProcess
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_chain(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1 signed by it (PEM files)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedfleet-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    ca_path, cert_path, key_path = folder / "ca.pem", folder / "server.pem", folder / "server.key"
    ca_path.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_path, cert_path, key_path


@pytest.mark.integration
def test_supernode_registers_over_tls(tmp_path: Path) -> None:
    ca, cert, key = _write_chain(tmp_path)
    port = _free_port()
    link = SuperLinkProcess(
        SuperLinkConfig(
            database=tmp_path / "state.db",
            port=port,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_ca_certfile=ca,
        ),
        workdir=tmp_path / "link",
    )
    node = SuperNodeSupervisor(
        SuperNodeConfig(
            superlink=f"127.0.0.1:{port}",
            data_path=tmp_path / "samples.npz",
            clientappio_port=_free_port(),
            root_certificates=ca,
        ),
        log_path=tmp_path / "node.log",
    )
    link.start()
    try:
        with node:
            deadline = time.monotonic() + 150
            while "Activated node_id" not in link.log_tail(50_000) and time.monotonic() < deadline:
                time.sleep(0.3)
            log = link.log_tail(50_000)
    finally:
        code = link.stop()  # SIGINT: a clean shutdown, state kept in the database file
    assert "Activated node_id" in log, (tmp_path / "node.log").read_text()[-2000:]
    assert "TLS disabled" not in log
    assert code in (0, -2, 130), link.log_tail()
    assert (tmp_path / "state.db").exists()
