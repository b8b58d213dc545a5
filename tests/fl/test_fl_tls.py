"""TLS between SuperLink and SuperNode: the SuperLink's certificate comes from the hub CA
(``issue_superlink_tls``), a SuperNode that trusts the CA pinned at enrollment registers,
one that trusts another CA does not."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.fl.superlink import SuperLinkConfig, SuperLinkProcess, issue_superlink_tls
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.net import free_port


def _link_and_node(
    tmp_path: Path, *, certified_by: Path, pinned: Path
) -> tuple[SuperLinkProcess, SuperNodeSupervisor]:
    """A TLS SuperLink whose certificate the CA in ``certified_by`` issued, and a SuperNode
    that trusts only the CA certificate ``pinned``."""
    cert, key, ca = issue_superlink_tls(certified_by, "127.0.0.1", tmp_path / "tls")
    port = free_port()
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
            clientappio_port=free_port(),
            root_certificates=pinned,
        ),
        log_path=tmp_path / "node.log",
    )
    return link, node


@pytest.mark.integration
def test_supernode_registers_over_tls(tmp_path: Path) -> None:
    hub = CertificateAuthority.load_or_create(tmp_path / "hub-ca")
    (tmp_path / "pinned.crt").write_bytes(hub.cert_pem)
    link, node = _link_and_node(
        tmp_path, certified_by=tmp_path / "hub-ca", pinned=tmp_path / "pinned.crt"
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


@pytest.mark.integration
def test_supernode_refuses_a_superlink_the_pinned_ca_did_not_certify(tmp_path: Path) -> None:
    # R4: an impostor SuperLink (certificate from another CA) gets no device
    pinned = CertificateAuthority.load_or_create(tmp_path / "hub-ca")
    (tmp_path / "pinned.crt").write_bytes(pinned.cert_pem)
    CertificateAuthority.load_or_create(tmp_path / "other-ca")
    link, node = _link_and_node(
        tmp_path, certified_by=tmp_path / "other-ca", pinned=tmp_path / "pinned.crt"
    )
    with link, node:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "node.log").read_text(errors="replace"):
                break
            time.sleep(0.3)
        log = link.log_tail(50_000)
    assert "CERTIFICATE_VERIFY_FAILED" in (tmp_path / "node.log").read_text(errors="replace")
    assert "Activated node_id" not in log
