"""AgentConfig: loading, defaults, validation."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import AgentConfig, load_config, parse_config
from edge_agent.errors import AgentConfigError
from tests.agent_ota.agent_ota_helpers import make_authority

MINIMAL = {
    "device_id": "cam-1",
    "device_class": "x86-cpu",
    "state_dir": "state",
    "trust_root": "trust.json",
}


def test_load_full_file(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_text(
        """
device_id = "cam-017"
device_class = "jetson-orin"
state_dir = "var/agent"
trust_root = "/etc/fedfleet/trust.json"
labels = { site = "lab", row = "3" }
status_interval_s = 30

[mqtt]
url = "mqtts://broker.example:8884"
topic_prefix = "acme"
session_expiry_s = 120

[mqtt.tls]
ca = "ca.pem"
cert = "dev.pem"
key = "dev.key"

[timeouts]
download_s = 300
chunk_retry_s = 1.5

[limits]
max_bundle_bytes = 1000000
fsync_chunks = false
"""
    )
    cfg = load_config(tmp_path / "c.toml")
    assert cfg.device_id == "cam-017" and cfg.client_id == "cam-017@acme"
    assert cfg.state_dir == tmp_path / "var" / "agent"
    assert cfg.trust_root == Path("/etc/fedfleet/trust.json")
    assert cfg.labels == {"site": "lab", "row": "3"}
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.topic_prefix) == ("broker.example", 8884, "acme")
    assert cfg.mqtt.tls is not None and cfg.mqtt.tls.ca == tmp_path / "ca.pem"
    assert cfg.timeouts.download_s == 300 and cfg.timeouts.chunk_retry_s == 1.5
    assert cfg.timeouts.verify_s == 120  # default kept
    assert cfg.limits.max_bundle_bytes == 1_000_000 and cfg.limits.fsync_chunks is False
    assert cfg.mqtt.topics.device("cam-017", "cmd") == "acme/v1/devices/cam-017/cmd"


def test_defaults(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, base_dir=tmp_path)
    assert isinstance(cfg, AgentConfig)
    assert (cfg.mqtt.host, cfg.mqtt.port, cfg.mqtt.tls) == ("127.0.0.1", 1883, None)
    assert cfg.state_dir == tmp_path / "state"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"device_id": "bad/id"}, "device_id"),
        ({"device_id": "+"}, "device_id"),
        ({"device_class": ""}, "device_class"),
        ({"extra_key": 1}, "unknown config keys"),
        ({"mqtt": {"port": 0}}, "port"),
        ({"mqtt": {"port": "1883"}}, "integer"),
        ({"mqtt": {"url": "http://x"}}, "mqtt.url"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "prefix"),
        ({"mqtt": {"tls": {"cert": "c.pem"}}}, "cert and key"),
        ({"mqtt": {"bogus": 1}}, "unknown keys"),
        ({"timeouts": {"download_s": 0}}, "download_s"),
        ({"timeouts": {"download_s": "x"}}, "number"),
        ({"limits": {"max_chunk_bytes": 0}}, "max_chunk_bytes"),
        ({"limits": {"max_chunk_bytes": 1.5}}, "integer"),
        ({"limits": {"fsync_chunks": 1}}, "true/false"),
        ({"labels": {"a": 1}}, "labels"),
        ({"status_interval_s": 0}, "status_interval_s"),
    ],
)
def test_invalid_values_are_refused(
    tmp_path: Path, change: dict[str, object], message: str
) -> None:
    with pytest.raises(AgentConfigError, match=message):
        parse_config({**MINIMAL, **change}, base_dir=tmp_path)


def test_missing_key_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(AgentConfigError, match="trust_root"):
        parse_config({k: v for k, v in MINIMAL.items() if k != "trust_root"}, base_dir=tmp_path)
    with pytest.raises(AgentConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("device_id = ")
    with pytest.raises(AgentConfigError, match="not valid TOML"):
        load_config(tmp_path / "bad.toml")


def test_trust_root_file(tmp_path: Path) -> None:
    cfg = parse_config(MINIMAL, base_dir=tmp_path)
    with pytest.raises(AgentConfigError, match="cannot read trust root"):
        cfg.load_trust_root()
    auth = make_authority()
    auth.write_trust(tmp_path / "trust.json")
    assert cfg.load_trust_root() == auth.trust
    (tmp_path / "trust.json").write_text('{"root_keys": {"abc": "00"}, "threshold": 1}')
    with pytest.raises(AgentConfigError, match="trust root"):
        cfg.load_trust_root()


def test_agent_stays_lean() -> None:
    """``fedfleet[agent]`` has no torch/Flower: the agent and its CLI must not import them."""
    import subprocess
    import sys

    code = (
        "import sys; from edge_agent.cli import build_parser; build_parser();"
        "import edge_agent.agent, edge_agent.commands.run;"
        "print(sorted(m for m in ('torch', 'flwr', 'onnx') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
