"""Flower's Deployment Engine on loopback: a real SuperLink and SuperNodes as processes,
over TLS with a server certificate from the hub CA, the SuperNodes pinned to the FAB."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.errors import HubConfigError
from cloud_hub.fl.model_store import ModelStore
from cloud_hub.fl.superlink import (
    SuperLinkConfig,
    SuperLinkProcess,
    wait_for_summary,
)
from edge_agent.errors import AgentConfigError
from edge_agent.fl.supernode import SuperNodeConfig, SuperNodeSupervisor
from shared.data import generate_sensor_data
from shared.net import free_port
from simulations.harness.federation import local_federation


def test_supernode_argv_and_tls_rules(tmp_path: Path) -> None:
    cfg = SuperNodeConfig(
        superlink="hub.example:9092",
        data_path=tmp_path / "samples.npz",
        clientappio_port=9094,
        root_certificates=tmp_path / "ca.pem",
        batch_size=8,
        max_local_epochs=2,
    )
    argv = cfg.argv()
    assert argv[0].endswith("flower-supernode")
    assert "--insecure" not in argv
    assert argv[argv.index("--root-certificates") + 1] == str(tmp_path / "ca.pem")
    node_config = argv[argv.index("--node-config") + 1]
    assert (
        f'data-path="{tmp_path / "samples.npz"}"' in node_config
        and "max-local-epochs=2" in node_config
    )
    with pytest.raises(AgentConfigError, match="set insecure=True explicitly"):
        SuperNodeConfig(superlink="h:1", data_path=tmp_path, clientappio_port=1)
    with pytest.raises(AgentConfigError, match="cannot be combined"):
        SuperNodeConfig(
            superlink="h:1",
            data_path=tmp_path,
            clientappio_port=1,
            insecure=True,
            root_certificates=tmp_path,
        )
    with pytest.raises(AgentConfigError, match="host:port"):
        SuperNodeConfig(superlink="nohost", data_path=tmp_path, clientappio_port=1, insecure=True)
    pinned = SuperNodeConfig(
        superlink="h:1",
        data_path=tmp_path,
        clientappio_port=1,
        root_certificates=tmp_path,
        fab_sha256="ab" * 32,
        extra_node_config={"require-secure-aggregation": True},
    ).argv()
    assert pinned[1:3] == ["-m", "edge_agent.fl.pinned_supernode"]
    assert pinned[pinned.index("--fab-sha256") + 1] == "ab" * 32
    assert "require-secure-aggregation=true" in pinned[pinned.index("--node-config") + 1]
    assert pinned[pinned.index("--clientapp") + 1] == "in-process"  # the default
    with pytest.raises(AgentConfigError, match="clientapp"):
        SuperNodeConfig(
            superlink="h:1", data_path=tmp_path, clientappio_port=1, insecure=True, clientapp="x"
        )
    with pytest.raises(AgentConfigError, match="fab_sha256"):
        SuperNodeConfig(
            superlink="h:1", data_path=tmp_path, clientappio_port=1, insecure=True, fab_sha256="x"
        )


def test_superlink_tls_rules_and_argv(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="insecure=True"):
        SuperLinkConfig(database=tmp_path / "s.db")
    with pytest.raises(HubConfigError, match="must be a file"):
        SuperLinkConfig(database=Path(":memory:"), insecure=True)
    tls = SuperLinkConfig(
        database=tmp_path / "s.db",
        ssl_certfile=tmp_path / "c",
        ssl_keyfile=tmp_path / "k",
        ssl_ca_certfile=tmp_path / "ca",
    )
    argv = tls.argv()
    assert "--insecure" not in argv and "--ssl-certfile" in argv
    assert "--disable-runtime-dependency-installation" in argv
    # the ServerApp runs in the SuperLink process unless the forked mode is asked for
    assert argv[1:3] == ["-m", "cloud_hub.fl.inprocess_serverapp"]
    forked = tls.argv("forked")
    assert forked[1:5] == [
        "-m",
        "shared.warm_superexec",
        "superlink",
        "cloud_hub.fl.warm_serverapp",
    ]
    assert forked[5:] == argv[3:]  # the same flower-superlink arguments
    with pytest.raises(HubConfigError, match="inprocess, forked"):
        tls.argv("threaded")
    assert argv[argv.index("--database") + 1] == str(tmp_path / "s.db")
    # no file named: Flower's in-memory state (a SuperLink serves one run), not sqlite's
    in_memory = SuperLinkConfig(insecure=True).argv()
    assert in_memory[in_memory.index("--database") + 1] == ":flwr-in-memory:"


@pytest.mark.integration
def test_supervisor_restarts_a_dead_supernode_and_stops_it(tmp_path: Path) -> None:
    # No SuperLink listens: the SuperNode gives up after its retry budget and exits; the
    # supervisor must bring it back, then stop it cleanly on request.
    cfg = SuperNodeConfig(
        superlink=f"127.0.0.1:{free_port()}",
        data_path=tmp_path / "none.npz",
        clientappio_port=free_port(),
        insecure=True,
        max_retries=0,
        max_wait_time_s=0.5,
    )
    supervisor = SuperNodeSupervisor(cfg, log_path=tmp_path / "node.log", restart_backoff_s=0.2)
    supervisor.start()
    try:
        import time

        deadline = time.monotonic() + 90
        while supervisor.restarts < 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert supervisor.restarts >= 1, (tmp_path / "node.log").read_text()[-2000:]
    finally:
        supervisor.stop()
    assert not supervisor.is_running()


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.timeout(400)
@pytest.mark.parametrize(
    ("clientapp", "serverapp"), [("in-process", "inprocess"), ("forked", "forked")]
)
def test_secagg_run_on_superlink_and_three_supernodes(
    tmp_path: Path, clientapp: str, serverapp: str
) -> None:
    for i in range(3):
        x, y = generate_sensor_data(80, seed=3, sample_seed=10 + i)
        np.savez(tmp_path / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(300, seed=3, sample_seed=99)
    np.savez(tmp_path / "validation.npz", x=x, y=y)
    (tmp_path / "train.toml").write_text(
        '[training]\nmodel_name = "sensor-mlp"\nnum_clients = 3\nmin_fit_clients = 3\nnum_rounds = 1\n'
        "local_epochs = 2\n[training.secagg]\nreconstruction_threshold = 2\n"
    )
    federation = local_federation(tmp_path, devices=3, run_id="deploy-test", clientapp=clientapp)
    link = SuperLinkProcess(
        federation.link.config, workdir=federation.link.workdir, serverapp=serverapp
    )
    federation = dataclasses.replace(federation, link=link)
    with federation.running() as link:
        link.submit_run(
            {
                "config-path": str(tmp_path / "train.toml"),
                "validation-path": str(tmp_path / "validation.npz"),
                "results-dir": str(tmp_path / "results"),
                "model-store": str(tmp_path / "models"),
                "run-name": "deploy-test",
                "model-name": "sensor-mlp",
            },
            expected_fab_sha256=federation.fab_sha256,
        )
        summary = wait_for_summary(tmp_path / "results", timeout_s=300)
    assert summary["lineage"]["secagg"]["enabled"] is True
    assert [r["round"] for r in summary["rounds"]] == [0, 1]
    assert summary["rounds"][1]["accuracy"] > summary["rounds"][0]["accuracy"]
    record = ModelStore(tmp_path / "models").get("deploy-test")
    assert record.lineage["engine"] == "deployment" and record.lineage["clients"] == 3
    # the ServerApp ran where asked (forked from a warm process, or in the SuperLink's);
    # every ClientApp task ran where asked
    link_log = (tmp_path / "link" / "superlink.log").read_text()
    assert ("flwr-serverapp task" in link_log) == (serverapp == "forked")
    assert ("runs in the SuperLink" in link_log) == (serverapp == "inprocess")
    for i in range(3):
        log = (tmp_path / f"node-{i}.log").read_text()
        in_process = "ran in this process: completed" in log
        assert in_process == (clientapp == "in-process")
        assert ("flwr-clientapp task" in log) == (clientapp == "forked")
