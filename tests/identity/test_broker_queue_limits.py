"""The broker configuration that `cloud-hub broker-config` writes queues enough QoS 1
messages per client for the hub's persistent session to outlive a hub restart under a large
fleet (Mosquitto's default of 1,000 drops must-keep reports silently), bounded in bytes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cloud_hub.enrollment import BrokerTlsConfig, render_mosquitto_config
from cloud_hub.errors import HubConfigError
from shared.net import free_port
from simulations.harness.mosquitto import spawn_listening, stop_process


def _config(tmp_path: Path, **overrides: int) -> BrokerTlsConfig:
    return BrokerTlsConfig(
        cafile=tmp_path / "ca.crt",
        hub_cafile=tmp_path / "hub-ca.crt",
        certfile=tmp_path / "s.crt",
        keyfile=tmp_path / "s.key",
        acl_file=tmp_path / "acl",
        hub_acl_file=tmp_path / "acl-hub",
        **overrides,  # type: ignore[arg-type]
    )


def _settings(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition(" ")
            out.setdefault(key, []).append(value)
    return out


def test_generated_config_queues_minutes_of_a_10k_fleet_for_the_hub(tmp_path: Path) -> None:
    text = render_mosquitto_config(_config(tmp_path))
    settings = _settings(text)
    # global options: written once, before the first listener
    assert settings["max_queued_messages"] == ["200000"]
    assert settings["max_queued_bytes"] == [str(64 * 1024 * 1024)]
    head = text.split("\nlistener ", 1)[0]
    assert "max_queued_messages 200000" in head and "max_queued_bytes 67108864" in head
    # a hub restart of 60 s under 10,000 devices (telemetry every 10 s, an event every 20 s,
    # ~1,500 messages/s) fits the message bound; a bundle chunk fits the byte bound
    assert int(settings["max_queued_messages"][0]) >= 1_500 * 60
    assert int(settings["max_queued_bytes"][0]) >= int(settings["max_packet_size"][0])


def test_queue_limits_are_configurable_and_validated(tmp_path: Path) -> None:
    text = render_mosquitto_config(
        _config(tmp_path, max_queued_messages=5000, max_queued_bytes=2 * 1024 * 1024)
    )
    assert _settings(text)["max_queued_messages"] == ["5000"]
    assert _settings(text)["max_queued_bytes"] == [str(2 * 1024 * 1024)]
    for bad in ({"max_queued_messages": 999}, {"max_queued_bytes": 1024}):
        with pytest.raises(HubConfigError, match="max_queued"):
            _config(tmp_path, **bad)


def test_mosquitto_accepts_the_generated_global_options(tmp_path: Path) -> None:
    """The installed Mosquitto starts with the generated global options (a plain loopback
    listener stands in for the TLS ones, whose certificate files this test does not issue)."""
    exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    head = render_mosquitto_config(_config(tmp_path)).split("\nlistener ", 1)[0]
    port = free_port()
    conf = tmp_path / "mosquitto.conf"
    conf.write_text(
        head.replace("per_listener_settings true", "per_listener_settings false")
        + f"\nuser root\nlistener {port} 127.0.0.1\nallow_anonymous true\n"
    )
    proc = spawn_listening(
        [exe, "-c", str(conf)], port=port, log_path=tmp_path / "log", name="mosquitto", timeout=10
    )
    stop_process(proc)
    assert "max_queued_messages 200000" in conf.read_text()
