"""#15: the configuration reference is generated from the config types and committed as
generated; every key it lists is one the loaders accept."""

from __future__ import annotations

import importlib
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from cloud_hub.commands.config_reference import hub_reference
from cloud_hub.config import HubConfig
from cloud_hub.errors import HubConfigError
from edge_agent.commands.config_reference import agent_reference
from edge_agent.config import load_config
from shared.config_reference import rows_of
from shared.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "regenerate: cloud-hub config-reference && edge-agent config-reference"


def _keys(markdown: str, section: str) -> set[str]:
    """The keys listed under one ``## …`` heading of a reference."""
    body = markdown.split(f"## {section}\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `([a-z_0-9]+)` \|", body, re.MULTILINE))


def test_the_committed_references_are_the_generated_ones() -> None:
    assert (ROOT / "docs/configuration-hub.md").read_text("utf-8") == hub_reference(), REGENERATE
    assert (ROOT / "docs/configuration-agent.md").read_text("utf-8") == agent_reference(), (
        REGENERATE
    )


def test_every_hub_key_listed_is_accepted(tmp_path: Path) -> None:
    doc = hub_reference()
    values = {
        "data_dir": '"/var/lib/hub"',
        "db_url": '"sqlite:////var/lib/hub/hub.db"',
        "mqtt_url": '"mqtts://broker:8884"',
        "mqtt_ca_file": '"ca.crt"',
        "mqtt_cert_file": '"hub.crt"',
        "mqtt_key_file": '"hub.key"',
        "mqtt_protocol": '"3.1.1"',
        "topic_prefix": '"acme"',
        "api_host": '"0.0.0.0"',
        "api_port": "8443",
        "keys_dir": '"/secure/keys"',
        "instance_id": '"hub-a"',
        "enable_ingest": "false",
        "offline_after_s": "600",
        "device_mqtt_url": '"mqtts://broker:8883"',
        "api_tls": "true",
        "api_tls_hostnames": '["hub.example"]',
    }
    assert _keys(doc, "Top level") == set(values)
    ingest = {k: "1" for k in _keys(doc, "`[ingest]`")}
    toml = "\n".join(f"{k} = {v}" for k, v in values.items())
    toml += "\n[ingest]\n" + "\n".join(f"{k} = {v}" for k, v in ingest.items()) + "\n"
    (tmp_path / "hub.toml").write_text(toml)
    config = HubConfig.from_file(tmp_path / "hub.toml")
    assert config.mqtt.protocol == "3.1.1" and config.mqtt.mutual_tls
    assert config.api_tls_hostnames == ("hub.example",) and config.ingest.batch_max == 1
    (tmp_path / "bad.toml").write_text("api_prot = 8443\n")
    with pytest.raises(HubConfigError, match="unknown hub setting"):
        HubConfig.from_file(tmp_path / "bad.toml")


def test_every_agent_key_listed_is_accepted(tmp_path: Path) -> None:
    doc = agent_reference()
    top = _keys(doc, "Top level")
    assert top == {
        "device_id",
        "device_class",
        "state_dir",
        "trust_root",
        "labels",
        "status_interval_s",
    }
    mqtt = _keys(doc, "`[mqtt]`") - {"host", "port"}  # url given instead
    text = (
        'device_id = "d1"\ndevice_class = "x86-cpu"\nstate_dir = "s"\ntrust_root = "t.json"\n'
        'labels = { site = "lab" }\nstatus_interval_s = 30\n[mqtt]\n'
    )
    samples = {
        "url": '"mqtts://broker:8883"',
        "protocol": '"5"',
        "keepalive_s": "30",
        "session_expiry_s": "60",
        "reconnect_min_s": "1",
        "reconnect_max_s": "2",
    }
    text += "\n".join(f"{k} = {samples.get(k, f'{chr(34)}x{chr(34)}')}" for k in sorted(mqtt))
    text += '\n[mqtt.tls]\nca = "ca.crt"\ncert = "d.crt"\nkey = "d.key"\n'
    text += "[timeouts]\n" + "".join(f"{k} = 5\n" for k in _keys(doc, "`[timeouts]`"))
    text += "[limits]\n" + "".join(
        f"{k} = {'true' if k == 'fsync_chunks' else 100}\n" for k in _keys(doc, "`[limits]`")
    )
    text += '[training]\nsuperlink_ca = "ca.crt"\nrequire_secure_aggregation = true\n'
    (tmp_path / "agent.toml").write_text(text)
    config = load_config(tmp_path / "agent.toml")
    assert config.mqtt.endpoint.url == "mqtts://broker:8883" and config.training.superlink_ca


def test_an_undocumented_setting_fails_the_reference() -> None:
    @dataclass(frozen=True)
    class Settings:
        documented: int = 1
        forgotten: int = 2

    with pytest.raises(ConfigError, match=r"undocumented \['forgotten'\]"):
        rows_of(Settings, {"documented": "is documented"})
    with pytest.raises(ConfigError, match=r"absent \['gone'\]"):
        rows_of(Settings, {"documented": "a", "forgotten": "b", "gone": "c"})


@pytest.mark.parametrize(
    ("program", "committed"),
    [
        ("cloud_hub.cli", "docs/configuration-hub.md"),
        ("edge_agent.cli", "docs/configuration-agent.md"),
    ],
)
def test_the_command_writes_the_reference(
    program: str, committed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``config-reference -o FILE`` writes the document (creating its folder); ``-o -``
    prints it."""
    main = importlib.import_module(program).main
    out = tmp_path / "docs" / "reference.md"
    assert main(["config-reference", "-o", str(out)]) == 0
    expected = (ROOT / committed).read_text("utf-8")
    assert out.read_text("utf-8") == expected
    capsys.readouterr()
    assert main(["config-reference", "-o", "-"]) == 0
    assert capsys.readouterr().out == expected
