"""``cloud-hub publish`` verifies a bundle against the hub's trust before sending a byte (#15):
a tampered, truncated or foreign bundle is refused with the reason and nothing reaches the
broker (a subscriber on the whole topic tree of the fleet hears nothing)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.cli import main as hub_main
from cloud_hub.keys import KeyStore
from shared.bundle import parse_bundle
from shared.messages import new_id

from .ota_support import BuiltFixture, make_bundle

pytestmark = pytest.mark.integration
PORT = 1883


class TopicTree:
    """Every message published under one fleet prefix on the real Mosquitto."""

    def __init__(self, prefix: str) -> None:
        self.messages: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sniff-{new_id()[:8]}")
        self.client.on_message = lambda _c, _u, msg: self.messages.append(msg.topic)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", PORT)
        self.client.loop_start()
        self.client.subscribe(f"{prefix}/#", qos=1)
        assert self._subscribed.wait(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture()
def prefix() -> str:
    return f"pv-{new_id()[:10]}"


@pytest.fixture()
def tree(prefix: str) -> Iterator[TopicTree]:
    sniffer = TopicTree(prefix)
    yield sniffer
    sniffer.close()


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> BuiltFixture:
    return make_bundle(tmp_path_factory.mktemp("pv"), size=50_000)


def _publish(path: Path, keys_dir: Path, prefix: str) -> int:
    return hub_main(
        [
            "publish",
            str(path),
            "--dir",
            str(keys_dir),
            "--devices",
            "pv-dev",
            "--prefix",
            prefix,
            "--mqtt-url",
            f"mqtt://127.0.0.1:{PORT}",
            "--start-grace",
            "0",
        ]
    )


def _refused(
    data: bytes,
    keys_dir: Path,
    tmp_path: Path,
    prefix: str,
    tree: TopicTree,
    capsys: pytest.CaptureFixture[str],
) -> str:
    path = tmp_path / "bad.ffb"
    path.write_bytes(data)
    assert _publish(path, keys_dir, prefix) == 2
    err = capsys.readouterr().err
    assert f"refusing to publish {path}" in err
    time.sleep(0.3)  # a stray publish would have arrived by now
    assert tree.messages == []
    return err


def test_tampered_artifact_is_refused(
    built: BuiltFixture,
    tmp_path: Path,
    prefix: str,
    tree: TopicTree,
    capsys: pytest.CaptureFixture[str],
) -> None:
    data = bytearray(built.data)
    data[-10] ^= 0xFF  # one bit-flip inside the model
    err = _refused(bytes(data), built.keys.directory, tmp_path, prefix, tree, capsys)
    assert "HashMismatchError" in err


def test_truncated_bundle_is_refused(
    built: BuiltFixture,
    tmp_path: Path,
    prefix: str,
    tree: TopicTree,
    capsys: pytest.CaptureFixture[str],
) -> None:
    err = _refused(built.data[:-100], built.keys.directory, tmp_path, prefix, tree, capsys)
    assert "HashMismatchError" in err or "Malformed" in err


def test_bundle_signed_under_another_root_is_refused(
    built: BuiltFixture,
    tmp_path: Path,
    prefix: str,
    tree: TopicTree,
    capsys: pytest.CaptureFixture[str],
) -> None:
    other = KeyStore.init(tmp_path / "other-hub")
    err = _refused(built.data, other.directory, tmp_path, prefix, tree, capsys)
    assert "does not verify against the hub's trust" in err


def test_missing_key_store_is_a_clear_error(
    built: BuiltFixture, tmp_path: Path, prefix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "b.ffb"
    path.write_bytes(built.data)
    assert _publish(path, tmp_path / "nowhere", prefix) == 2
    assert "no key store in" in capsys.readouterr().err


def test_intact_bundle_is_offered(
    built: BuiltFixture,
    tmp_path: Path,
    prefix: str,
    tree: TopicTree,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "good.ffb"
    path.write_bytes(built.data)
    assert parse_bundle(built.data)  # the same bytes the refusals started from
    assert _publish(path, built.keys.directory, prefix) == 0, capsys.readouterr().err
    deadline = time.monotonic() + 10
    while not any(t.endswith("/pv-dev/cmd") for t in tree.messages):
        assert time.monotonic() < deadline, tree.messages
        time.sleep(0.05)
