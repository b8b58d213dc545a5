"""The one broker endpoint type (``shared.broker_endpoint``): parsed from a URL the same way by
the hub's config, ``cloud-hub publish`` and the agent's config."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_hub.config import HubConfig
from cloud_hub.delivery import PublisherConfig
from cloud_hub.errors import HubConfigError
from edge_agent.config import parse_config
from edge_agent.errors import AgentConfigError
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import ConfigError

_hosts = st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)


@given(host=_hosts, port=st.integers(1, 65535), tls=st.booleans())
def test_url_round_trips(host: str, port: int, tls: bool) -> None:
    url = f"{'mqtts' if tls else 'mqtt'}://{host}:{port}"
    endpoint = BrokerEndpoint.from_url(url)
    assert (endpoint.host, endpoint.port, endpoint.tls, endpoint.url) == (host, port, tls, url)


def test_url_carries_credentials_tls_files_and_protocol() -> None:
    e = BrokerEndpoint.from_url(
        "mqtts://hub%40x:s%3Acret@broker:8884?ca=/etc/ca.crt&cert=/h.crt&key=/h.key&protocol=3.1.1"
    )
    assert (e.username, e.password) == ("hub@x", "s:cret")
    assert (e.ca_file, e.cert_file, e.key_file, e.protocol) == (
        "/etc/ca.crt",
        "/h.crt",
        "/h.key",
        "3.1.1",
    )
    assert e.url == "mqtts://broker:8884" and e.mutual_tls  # no secret in what is logged
    assert BrokerEndpoint.from_url("mqtts://b", ca_file="/x").ca_file == "/x"  # keyword wins
    assert BrokerEndpoint.from_url("broker").port == 1883
    assert BrokerEndpoint.from_url("mqtts://broker").port == 8883


@pytest.mark.parametrize(
    "url",
    [
        "http://broker:1883",
        "mqtt://broker:0",
        "mqtt://broker:99999",
        "mqtt://:1883",
        "mqtt://broker/path",
        "mqtt://broker?ca=/ca.crt",  # TLS files on plain TCP
        "mqtts://broker?cert=/h.crt",  # a certificate without its key
        "mqtts://broker?protocol=4",
        "mqtts://broker?bogus=1",
        "mqtts://broker?ca=a&ca=b",
        "mqtt://:secret@broker",  # a password without a user name
    ],
)
def test_bad_urls_are_refused(url: str) -> None:
    with pytest.raises(ConfigError):
        BrokerEndpoint.from_url(url)


def test_hub_publisher_and_agent_parse_the_same_way(tmp_path: Path) -> None:
    url = "mqtts://broker.example:8884?protocol=3.1.1"
    hub = HubConfig().with_overrides(mqtt_url=url, mqtt_ca_file="ca.crt")
    assert hub.mqtt == BrokerEndpoint.from_url(url, ca_file="ca.crt")
    assert PublisherConfig.from_url(url).broker == BrokerEndpoint.from_url(url)
    agent = parse_config(
        {
            "device_id": "cam-1",
            "device_class": "x86-cpu",
            "state_dir": str(tmp_path),
            "trust_root": str(tmp_path / "trust.json"),
            "mqtt": {"url": url + "&ca=ca.crt"},
        },
        base_dir=tmp_path,
    )
    assert agent.mqtt.endpoint.url == hub.mqtt.url
    assert agent.mqtt.endpoint.protocol == "3.1.1"
    assert agent.mqtt.endpoint.ca_file == str(tmp_path / "ca.crt")  # relative to the config
    with pytest.raises(HubConfigError):
        HubConfig().with_overrides(mqtt_url="mqtt://b", mqtt_cert_file="h.crt")
    with pytest.raises(HubConfigError):
        PublisherConfig.from_url("ftp://b")
    with pytest.raises(AgentConfigError):
        parse_config(
            {
                "device_id": "cam-1",
                "device_class": "x86-cpu",
                "state_dir": str(tmp_path),
                "trust_root": str(tmp_path / "trust.json"),
                "mqtt": {"url": "mqtt://b?protocol=9"},
            },
            base_dir=tmp_path,
        )


def test_serve_takes_the_broker_tls_settings_and_instance_as_flags() -> None:
    import argparse

    from cloud_hub.commands import serve

    parser = argparse.ArgumentParser()
    serve.register(parser.add_subparsers())
    flags = ["--mqtt-url", "mqtts://b:8884", "--mqtt-ca-file", "ca.crt"]
    flags += ["--mqtt-cert-file", "hub.crt", "--mqtt-key-file", "hub.key"]
    flags += ["--device-mqtt-url", "mqtts://b:8883", "--instance-id", "replica-2"]
    config = serve.load_config(parser.parse_args(["serve", *flags]))
    assert config.mqtt == BrokerEndpoint.from_url(
        "mqtts://b:8884?ca=ca.crt&cert=hub.crt&key=hub.key"
    )
    assert (config.device_mqtt_url, config.instance_id) == ("mqtts://b:8883", "replica-2")
    with pytest.raises(HubConfigError):  # TLS files for a plain broker
        serve.load_config(parser.parse_args(["serve", "--mqtt-ca-file", "ca.crt"]))
