"""``edge-agent install|status|uninstall`` with ``--prefix tmp --no-systemd`` against a real
HTTPS hub and the mTLS broker it names."""

from __future__ import annotations

import json
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest

from edge_agent.cli import main as agent_main
from edge_agent.config import load_config
from edge_agent.errors import EnrollmentError, InstallError
from edge_agent.service import InstallLayout, InstallOptions, install
from edge_agent.service.status import collect_status

pytestmark = pytest.mark.integration


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


def test_install_status_uninstall_round_trip(
    hub: Any, broker: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "root"
    secret, _ = hub.service.issue_token(device_class="x86-cpu", labels={"site": "lab"})
    rc = agent_main(
        [
            "install",
            "--hub",
            hub.url,
            "--token",
            secret,
            "--ca-fingerprint",
            hub.service.ca.fingerprint,
            "--prefix",
            str(prefix),
            "--no-systemd",
            "--class",
            "x86-cpu",
            "--device-id",
            "inst-001",
            "--labels",
            "camera=usb",
        ]
    )
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "enrolled as inst-001" in out
    assert "JetPack check skipped" in out  # this machine is no Jetson

    layout = InstallLayout(prefix.resolve())
    cfg_dir = "etc/fedfleet-agent"
    state = "var/lib/fedfleet-agent"
    expected = {
        f"{cfg_dir}/{name}"
        for name in (
            "config.toml",
            "device.key",
            "device.crt",
            "ca.crt",
            "trust_root.json",
            "identity.json",
            "install.json",
        )
    } | {
        f"{state}/slots/a",
        f"{state}/slots/b",
        f"{state}/outbox.sqlite3",
        f"{state}/samples.db",
        "etc/systemd/system/fedfleet-agent.service",
    }
    assert expected <= _files(prefix)
    assert stat.S_IMODE(layout.key_path.stat().st_mode) == 0o600

    # The config is what the agent reads: identity, broker over mTLS, pinned trust root.
    config = load_config(layout.config_path)
    assert config.device_id == "inst-001"
    assert config.device_class == "x86-cpu"
    assert config.labels == {"site": "lab", "camera": "usb"}
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", broker.port)
    assert config.mqtt.topic_prefix == broker.scheme.prefix
    assert config.mqtt.tls is not None and config.mqtt.tls.cert == layout.cert_path
    assert config.state_dir == layout.state_dir
    assert config.load_trust_root() == hub.trust_root
    identity = json.loads(layout.identity_path.read_text())
    assert identity["ca_fingerprint"] == hub.service.ca.fingerprint

    # The unit is rendered even though it is not enabled.
    unit = layout.unit_path.read_text()
    assert f"--config {layout.config_path}" in unit
    assert "edge_agent.cli run" in unit
    assert "Restart=always" in unit and "WantedBy=multi-user.target" in unit
    assert f"ReadWritePaths={layout.state_dir}" in unit
    analyze = shutil.which("systemd-analyze")
    if analyze:
        res = subprocess.run(
            [analyze, "verify", str(layout.unit_path)], capture_output=True, text=True, timeout=30
        )
        assert res.returncode == 0 and "fedfleet-agent.service" not in res.stderr, res.stderr

    # Status: identity from the certificate, a real mTLS connection to the broker.
    status = collect_status(layout, connect=True, timeout_s=5)
    assert status.identity["certificate_cn"] == "inst-001"
    assert status.connection["connected"] is True, status.connection
    assert status.model["active_slot"] is None
    assert status.healthy, status.problems
    assert agent_main(["status", "--prefix", str(prefix), "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["identity"]["device_id"] == "inst-001" and shown["healthy"] is True

    # A second install on top is refused before the token is spent.
    again, again_rec = hub.service.issue_token(device_class="x86-cpu")
    with pytest.raises(InstallError, match="already installed"):
        install(
            InstallOptions(
                hub_url=hub.url,
                token=again,
                layout=layout,
                ca_cert=hub.ca_file,
                systemd=False,
            )
        )
    assert hub.service.repository.get_token(again_rec.token_hash).used_at is None

    # Files the agent writes at run time go too.
    (layout.state_dir / "slots" / "a" / "model.onnx").write_bytes(b"model")
    assert agent_main(["uninstall", "--prefix", str(prefix), "--no-systemd"]) == 0
    assert _files(prefix) == set()


def test_uninstall_keep_state_keeps_models_and_samples(hub: Any, tmp_path: Path) -> None:
    layout = InstallLayout(tmp_path / "root")
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    (tmp_path / "token").write_text(secret + "\n")
    rc = agent_main(
        [
            "install",
            "--hub",
            hub.url,
            "--token-file",
            str(tmp_path / "token"),
            "--ca-cert",
            str(hub.ca_file),
            "--prefix",
            str(layout.prefix),
            "--no-systemd",
        ]
    )
    assert rc == 0
    (layout.state_dir / "slots" / "a" / "model.onnx").write_bytes(b"model")
    assert (
        agent_main(["uninstall", "--prefix", str(layout.prefix), "--no-systemd", "--keep-state"])
        == 0
    )
    assert (layout.state_dir / "slots" / "a" / "model.onnx").read_bytes() == b"model"
    assert not layout.config_dir.exists() and not layout.unit_path.exists()


def test_wrong_ca_pin_leaves_nothing_and_keeps_the_token(hub: Any, tmp_path: Path) -> None:
    layout = InstallLayout(tmp_path / "root")
    secret, record = hub.service.issue_token(device_class="x86-cpu")
    with pytest.raises(EnrollmentError, match="does not match"):
        install(
            InstallOptions(
                hub_url=hub.url,
                token=secret,
                layout=layout,
                ca_fingerprint="sha256:" + "0" * 64,
                systemd=False,
            )
        )
    assert _files(layout.prefix) == set()
    assert hub.service.repository.get_token(record.token_hash).used_at is None


def test_refused_enrollment_rolls_back_created_files(hub: Any, tmp_path: Path) -> None:
    layout = InstallLayout(tmp_path / "root")
    secret, _ = hub.service.issue_token(device_class="rpi4")
    with pytest.raises(EnrollmentError, match="HTTP 409"):
        install(
            InstallOptions(
                hub_url=hub.url,
                token=secret,
                layout=layout,
                ca_cert=hub.ca_file,
                device_class="jetson-orin",
                systemd=False,
            )
        )
    assert _files(layout.prefix) == set()


def test_status_of_a_missing_install(tmp_path: Path) -> None:
    status = collect_status(InstallLayout(tmp_path), connect=False)
    assert not status.installed and not status.healthy
    assert agent_main(["status", "--prefix", str(tmp_path), "--no-connect"]) == 1


def test_jetson_without_gpu_backend_refuses_before_spending_the_token(
    hub: Any, tmp_path: Path
) -> None:
    """A Jetson (simulated by its release file) where no CUDA backend loads — true on this
    CPU machine — is refused unless --allow-cpu; the probe itself is real."""
    release = tmp_path / "nv_tegra_release"
    release.write_text(
        "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
        "DATE: Wed Jan  8 01:49:37 UTC 2025\n"
    )
    layout = InstallLayout(tmp_path / "root")
    secret, record = hub.service.issue_token(device_class="jetson-orin")
    opts = dict(
        hub_url=hub.url,
        token=secret,
        layout=layout,
        ca_cert=hub.ca_file,
        systemd=False,
        jetson_release_file=release,
    )
    with pytest.raises(InstallError, match="no GPU inference backend loads") as info:
        install(InstallOptions(**opts))  # type: ignore[arg-type]
    assert "--allow-cpu" in str(info.value) and "jetson-ai-lab" in str(info.value)
    assert _files(layout.prefix) == set()
    assert hub.service.repository.get_token(record.token_hash).used_at is None
    report = install(InstallOptions(**opts, require_gpu=False))  # type: ignore[arg-type]
    text = "\n".join(report.messages)
    assert "L4T 36.4.3, JetPack 6.2" in text
    assert "jetson-ai-lab" in text and "WARNING: no GPU backend loads" in text
    assert json.loads(layout.identity_path.read_text())["jetson"] == {
        "l4t": "36.4.3",
        "jetpack": "6.2",
    }


def test_installed_agent_reaches_the_hub_over_mtls(
    hub: Any, broker: Any, mqtt_client: Any, tmp_path: Path
) -> None:
    """End to end: install writes a config with which the real ``EdgeAgent`` connects to the
    mTLS broker, and the ACL lets its own hello/status through to the hub."""
    from edge_agent.agent import EdgeAgent

    files = broker.files
    hub_client = mqtt_client(
        "hub-e2e", ca=files.ca_cert, cert=files.hub_cert, key=files.hub_key, port=broker.hub_port
    )
    hub_client.connect()
    hub_client.subscribe(broker.scheme.all_devices("status"))
    hub_client.subscribe(broker.scheme.all_devices("hello"))
    layout = InstallLayout(tmp_path / "root")
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    report = install(
        InstallOptions(
            hub_url=hub.url, token=secret, layout=layout, ca_cert=hub.ca_file, systemd=False
        )
    )
    agent = EdgeAgent(
        load_config(layout.config_path), runtimes=["onnxruntime:CPUExecutionProvider"]
    )
    agent.start()
    try:
        hello = broker.scheme.device(report.device_id, "hello")
        status = broker.scheme.device(report.device_id, "status")
        assert hub_client.wait_for(
            lambda: {t for t, _ in hub_client.messages} >= {hello, status}, timeout=15
        ), hub_client.messages
    finally:
        agent.stop(drain_s=1.0)


def test_failure_after_enrollment_cleans_up_and_says_how_to_retry(
    hub: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemctl is a plain function parameter: one that fails on ``enable`` stands in for a
    host whose systemd refuses the unit."""
    calls: list[list[str]] = []

    def systemctl(args: Any) -> None:
        calls.append(list(args))
        if args[0] == "enable":
            raise InstallError("systemctl enable failed: unit is masked")

    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")
    layout = InstallLayout(tmp_path / "root")
    secret, _ = hub.service.issue_token(device_class="x86-cpu")
    with pytest.raises(InstallError, match=r"after enrolling as (\S+) .*--device-id") as info:
        install(
            InstallOptions(hub_url=hub.url, token=secret, layout=layout, ca_cert=hub.ca_file),
            systemctl=systemctl,
        )
    assert calls == [["daemon-reload"], ["enable", "--now", str(layout.unit_path)]]
    assert _files(layout.prefix) == set()
    assert "unit is masked" in str(info.value)
