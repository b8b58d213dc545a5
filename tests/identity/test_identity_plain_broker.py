"""#15: the operator path against a plain-TCP broker and an unreachable one.

- ``edge-agent install`` against a hub that names an ``mqtt://`` broker writes a config the
  agent can use with it (no ``[mqtt.tls]``); ``status`` shows ``mqtt://`` and connects.
- A config that says ``mqtt://`` and carries ``[mqtt.tls]`` is refused with the fix.
- ``edge-agent run`` against a broker nobody listens on logs at once, with the endpoint and
  the error (a real agent process, not a mock).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cloud_hub.keys import KeyStore
from edge_agent.cli import main as agent_main
from edge_agent.config import load_config, parse_config
from edge_agent.errors import AgentConfigError
from edge_agent.service import InstallLayout
from edge_agent.service.status import collect_status
from shared.net import free_port
from simulations.harness.mosquitto import LocalMosquitto
from tests.identity.conftest import running_hub

pytestmark = pytest.mark.integration


def test_install_against_a_plain_broker_gives_a_config_the_agent_can_use(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    prefix = tmp_path / "device"
    with (
        LocalMosquitto(persistence=False) as broker,
        running_hub(tmp_path / "hub", mqtt_url=broker.url, prefix="plain15") as hub,
    ):
        secret, _ = hub.service.issue_token(device_class="x86-cpu", labels={})
        argv = ["install", "--hub", hub.url, "--token", secret, "--ca-cert", str(hub.ca_file)]
        argv += ["--prefix", str(prefix), "--no-systemd", "--class", "x86-cpu"]
        assert agent_main(argv) == 0
        assert "plain-TCP broker" in capsys.readouterr().out  # said, not silently dropped
        layout = InstallLayout(prefix.resolve())
        text = layout.config_path.read_text()
        assert not any(line.startswith("[mqtt.tls]") for line in text.splitlines()), text
        config = load_config(layout.config_path)
        assert config.mqtt.tls is None
        assert config.mqtt.endpoint.url == broker.url
        status = collect_status(layout, config_path=None, connect=True, timeout_s=10)
    assert status.connection["broker"] == broker.url  # mqtt://, as the config says
    assert status.connection["connected"] is True, status.connection


def test_a_plain_url_with_tls_files_is_refused_with_the_fix(tmp_path: Path) -> None:
    raw = {
        "device_id": "d1",
        "device_class": "x86-cpu",
        "state_dir": "state",
        "trust_root": "trust.json",
        "mqtt": {"url": "mqtt://127.0.0.1:1883", "tls": {"ca": "ca.crt"}},
    }
    with pytest.raises(AgentConfigError, match=r"plain TCP.*use mqtts://"):
        parse_config(raw, base_dir=tmp_path)
    raw["mqtt"] = {"url": "mqtts://127.0.0.1:8883", "tls": {"ca": "ca.crt"}}
    assert parse_config(raw, base_dir=tmp_path).mqtt.endpoint.url == "mqtts://127.0.0.1:8883"


def test_run_logs_an_unreachable_broker_at_once(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    port = free_port()  # nobody listens here
    config = tmp_path / "agent.toml"
    config.write_text(
        f'device_id = "lonely-1"\ndevice_class = "x86-cpu"\nstate_dir = "state"\n'
        f'trust_root = "{keys.trust_root_path}"\n\n[mqtt]\nurl = "mqtt://127.0.0.1:{port}"\n'
        "reconnect_min_s = 1\nreconnect_max_s = 2\n"
    )
    log = tmp_path / "agent.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    try:
        expected = f"cannot reach the MQTT broker at mqtt://127.0.0.1:{port}"
        deadline = time.monotonic() + 60  # a loaded 2-core box; the agent says it at once
        while expected not in log.read_text() and time.monotonic() < deadline:
            assert proc.poll() is None, log.read_text()
            time.sleep(0.2)
        text = log.read_text()
        assert expected in text, text
        assert "ConnectionRefusedError" in text, text
        started = text.index("starting; broker mqtt://")
        # nothing between the start line and the complaint but the first attempt: one
        # warning per distinct error, not one per retry
        time.sleep(5)  # two or three retries (every 1-2 s)
        assert log.read_text().count(expected) == 1, log.read_text()[started:]
    finally:
        proc.terminate()
        proc.wait(20)
