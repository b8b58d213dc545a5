"""#15: every hub setting as flag and environment variable, one name for the hub's folders,
TLS options where an operator reaches the broker or the API from the command line."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from cloud_hub.cli import build_parser
from cloud_hub.cli import main as hub_main
from cloud_hub.commands.options import HUB_OPTIONS, hub_config_from_args
from cloud_hub.commands.rollout import ApiClient, bundle_id_argument
from cloud_hub.config import HubConfig
from cloud_hub.errors import HubConfigError


def _args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_serve_takes_every_hub_option_as_flag_and_environment_variable() -> None:
    parser = build_parser()
    assert parser._subparsers is not None
    commands = next(a for a in parser._subparsers._group_actions if a.dest == "command")
    assert isinstance(commands.choices, dict)
    serve = commands.choices["serve"]
    flags = set(serve._option_string_actions)
    help_text = serve.format_help()
    for option in HUB_OPTIONS:
        assert option.flag in flags, option
        assert option.env in help_text, option
        assert option.key in {f.name for f in HubConfig.__dataclass_fields__.values()} or (
            option.key.startswith("mqtt_")
        ), option


def test_environment_then_flags_over_the_file(tmp_path: Path) -> None:
    config = tmp_path / "hub.toml"
    config.write_text('mqtt_url = "mqtt://file-broker:1883"\napi_port = 7000\n')
    env = {
        "FEDFLEET_MQTT_URL": "mqtts://env-broker:8884",
        "FEDFLEET_MQTT_CA_FILE": "ca.crt",
        "FEDFLEET_MQTT_CERT_FILE": "hub.crt",
        "FEDFLEET_MQTT_KEY_FILE": "hub.key",
        "FEDFLEET_API_PORT": "7100",
        "FEDFLEET_API_TLS": "true",
        "FEDFLEET_DATA_DIR": str(tmp_path / "data"),
    }
    hub = hub_config_from_args(_args("serve", "--config", str(config)), env)
    assert (hub.mqtt.host, hub.mqtt.port, hub.mqtt.tls) == ("env-broker", 8884, True)
    assert (hub.mqtt.ca_file, hub.mqtt.cert_file, hub.mqtt.key_file) == (
        "ca.crt",
        "hub.crt",
        "hub.key",
    )
    assert hub.api_port == 7100 and hub.api_tls is True
    assert hub.keys_path == tmp_path / "data" / "keys"
    flagged = hub_config_from_args(
        _args("serve", "--config", str(config), "--port", "7200", "--mqtt-ca-file", "other.crt"),
        env,
    )
    assert flagged.api_port == 7200 and flagged.mqtt.ca_file == "other.crt"
    assert hub_config_from_args(_args("serve", "--config", str(config)), {}).api_port == 7000


def test_a_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(HubConfigError, match="FEDFLEET_API_PORT"):
        hub_config_from_args(_args("serve"), {"FEDFLEET_API_PORT": "eighty"})
    with pytest.raises(HubConfigError, match="FEDFLEET_API_TLS"):
        hub_config_from_args(_args("serve"), {"FEDFLEET_API_TLS": "maybe"})
    with pytest.raises(HubConfigError, match="TLS files given for a plain-TCP broker"):
        hub_config_from_args(_args("serve", "--mqtt-ca-file", "ca.crt"), {})


def test_publish_reaches_a_tls_broker_as_serve_does() -> None:
    args = _args(
        "publish",
        "v1.ffb",
        "--class",
        "x86-cpu",
        "--mqtt-url",
        "mqtts://broker:8884",
        "--mqtt-ca-file",
        "ca.crt",
        "--mqtt-cert-file",
        "hub.crt",
        "--mqtt-key-file",
        "hub.key",
        "--prefix",
        "acme",
    )
    hub = hub_config_from_args(args, {})
    assert hub.mqtt.tls and hub.mqtt.mutual_tls and hub.topic_prefix == "acme"


def test_keys_take_data_dir_and_keys_dir_and_dir_is_a_deprecated_alias(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert hub_main(["keys", "init", "--data-dir", str(tmp_path / "hub")]) == 0
    assert (tmp_path / "hub" / "keys" / "trust_root.json").is_file()
    assert hub_main(["keys", "init", "--keys-dir", str(tmp_path / "offline")]) == 0
    assert (tmp_path / "offline" / "trust_root.json").is_file()
    capsys.readouterr()
    assert hub_main(["keys", "status", "--dir", str(tmp_path / "offline")]) == 0
    captured = capsys.readouterr()
    assert "--dir is deprecated; use --keys-dir" in captured.err
    assert "keyring      version 1" in captured.out


def test_compress_takes_o_as_the_readme_says() -> None:
    assert _args("compress", "models/run", "-o", "artifacts").out == Path("artifacts")
    assert _args("compress", "models/run", "--out", "artifacts").out == Path("artifacts")


def test_rollout_ca_file_is_read_and_a_bad_one_refused(tmp_path: Path) -> None:
    with pytest.raises(HubConfigError, match="cannot read the CA file"):
        ApiClient("https://hub:8443", "t", ca_file=str(tmp_path / "missing.crt"))
    with pytest.raises(HubConfigError, match="is not a bundle file"):
        (tmp_path / "junk.ffb").write_bytes(b"not a bundle")
        bundle_id_argument(str(tmp_path / "junk.ffb"))
    assert bundle_id_argument("abc123") == "abc123"


def test_enroll_token_file_keeps_the_secret_off_the_terminal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = str(tmp_path / "hub")
    assert hub_main(["enroll-init", "--data-dir", data]) == 0
    init_out = capsys.readouterr().out
    assert f"cloud-hub serve --tls --data-dir {data}" in init_out  # not "run uvicorn"
    assert "uvicorn" not in init_out
    monkeypatch.setenv("FEDFLEET_API", "https://hub.example:8443")
    token_file = tmp_path / "device.token"
    argv = ["enroll-token", "--data-dir", data, "--class", "x86-cpu", "--token-file"]
    assert hub_main([*argv, str(token_file)]) == 0
    out = capsys.readouterr().out
    secret = token_file.read_text().strip()
    assert secret and secret not in out
    assert token_file.stat().st_mode & 0o777 == 0o600
    assert f"edge-agent install --hub https://hub.example:8443 --token-file {token_file}" in out
