"""A local secure federation: a TLS SuperLink certified by a fresh hub CA and SuperNodes that
pin that CA and the hub's FAB, one per ``device-{i}.npz`` sample file under ``root``.

The Deployment Engine the product runs (SuperLink on the hub, one pinned SuperNode per
device), on loopback, for the benchmark and the tests that need real processes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.fl.superlink import (
    SuperLinkConfig,
    SuperLinkProcess,
    fab_sha256,
    issue_superlink_tls,
)
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.net import free_port

__all__ = ["LocalFederation", "local_federation"]


@dataclass(frozen=True)
class LocalFederation:
    link: SuperLinkProcess
    nodes: list[SuperNodeSupervisor]
    fab_sha256: str  # the FAB every SuperNode is pinned to


def local_federation(root: Path, *, devices: int, run_id: str) -> LocalFederation:
    """Build (not start) the SuperLink and ``devices`` SuperNodes that require SecAgg+."""
    port = free_port()
    ca = CertificateAuthority.load_or_create(root / "ca")
    cert, key, ca_file = issue_superlink_tls(root / "ca", "127.0.0.1", root / "tls")
    (root / "pinned-ca.crt").write_bytes(ca.cert_pem)
    link = SuperLinkProcess(
        SuperLinkConfig(
            database=root / "state.db",
            port=port,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_ca_certfile=ca_file,
        ),
        workdir=root / "link",
    )
    fab = fab_sha256()
    nodes = [
        SuperNodeSupervisor(
            SuperNodeConfig(
                superlink=f"127.0.0.1:{port}",
                data_path=root / f"device-{i}.npz",
                clientappio_port=free_port(),
                root_certificates=root / "pinned-ca.crt",
                fab_sha256=fab,
                extra_node_config={"order-run-id": run_id, "require-secure-aggregation": True},
            ),
            log_path=root / f"node-{i}.log",
        )
        for i in range(devices)
    ]
    return LocalFederation(link=link, nodes=nodes, fab_sha256=fab)
