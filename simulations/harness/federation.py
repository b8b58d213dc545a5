"""A local secure federation: a TLS SuperLink certified by a fresh hub CA and SuperNodes that
pin that CA and one of the hub's FABs, one per ``device-{i}.npz`` sample file under ``root``.

The Deployment Engine the product runs (SuperLink on the hub, one pinned SuperNode per
device), on loopback, for the benchmark and the tests that need real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.fl.superlink import (
    FAB_DIR,
    SuperLinkConfig,
    SuperLinkProcess,
    fab_sha256,
    issue_superlink_tls,
)
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.fl.config_keys import NodeConfigKey
from shared.net import free_port

__all__ = ["LocalFederation", "NodeConfigOf", "local_federation"]

#: The extra node-config entries of device ``i`` (e.g. its held-update folder).
NodeConfigOf = Callable[[int], Mapping[str, str | int | float | bool]]


@dataclass(frozen=True)
class LocalFederation:
    link: SuperLinkProcess
    nodes: list[SuperNodeSupervisor]
    fab_dir: Path  # the FAB to submit
    fab_sha256: str  # the FAB every SuperNode is pinned to

    @contextmanager
    def running(self) -> Iterator[SuperLinkProcess]:
        """The SuperLink up, then every SuperNode; all stopped on the way out."""
        with self.link:
            for node in self.nodes:
                node.start()
            try:
                yield self.link
            finally:
                for node in self.nodes:
                    node.stop()


def local_federation(
    root: Path,
    *,
    devices: int,
    run_id: str,
    fab_dir: Path = FAB_DIR,
    node_config: NodeConfigOf | None = None,
    clientapp: str = "in-process",
) -> LocalFederation:
    """Build (not start) the SuperLink and ``devices`` SuperNodes that require SecAgg+.

    The SuperNodes are pinned to the FAB in ``fab_dir`` (the synchronous one unless told)
    and ordered for run ``run_id``; ``node_config(i)`` adds entries to device ``i``'s;
    ``clientapp`` says where their ClientApps run (``SuperNodeConfig.clientapp``)."""
    port = free_port()
    ca = CertificateAuthority.load_or_create(root / "ca")
    cert, key, ca_file = issue_superlink_tls(root / "ca", "127.0.0.1", root / "tls")
    (root / "pinned-ca.crt").write_bytes(ca.cert_pem)
    link = SuperLinkProcess(
        SuperLinkConfig(
            port=port,
            ssl_certfile=cert,
            ssl_keyfile=key,
            ssl_ca_certfile=ca_file,
        ),
        workdir=root / "link",
    )
    fab = fab_sha256(fab_dir)
    nodes = [
        SuperNodeSupervisor(
            SuperNodeConfig(
                superlink=f"127.0.0.1:{port}",
                data_path=root / f"device-{i}.npz",
                clientappio_port=free_port(),
                root_certificates=root / "pinned-ca.crt",
                fab_sha256=fab,
                clientapp=clientapp,
                extra_node_config={
                    NodeConfigKey.ORDER_RUN_ID: run_id,
                    NodeConfigKey.REQUIRE_SECURE_AGGREGATION: True,
                    **(node_config(i) if node_config is not None else {}),
                },
            ),
            log_path=root / f"node-{i}.log",
        )
        for i in range(devices)
    ]
    return LocalFederation(link=link, nodes=nodes, fab_dir=fab_dir, fab_sha256=fab)
