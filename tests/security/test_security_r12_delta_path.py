"""R12: a bundle id a device reports never becomes a path before it is validated.

The attack (issue #13, finding 12): a compromised device reports that it runs bundle
``../../../outside/evil``; the delta cache used to build ``deltas/TARGET/<that>.ffb`` and, since
the file existed, ship it to the device as the "delta" — any ``.ffb`` on the hub, outside the
store. Now the id must be 64 lowercase hex digits before any path is built: the device gets
the full bundle, the refusal is logged, the other devices still get their delta, and nothing
outside the store is read or written.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.bundles import check_bundle_id, default_store
from cloud_hub.delivery import FleetPublisher, PublisherConfig
from cloud_hub.delta import DeltaCache
from cloud_hub.keys import KeyStore
from cloud_hub.registry import devices, open_registry
from cloud_hub.rollout.delivery import PublisherDelivery
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import BundleError
from shared.messages import Hello, InstalledModel, new_id
from tests.security._support_api import recording_logs
from tests.security._support_bundles import CLASS, MODEL, Attacker, hub_bundle

pytestmark = pytest.mark.integration


class Recorder:
    """Everything published under a topic prefix on the real broker."""

    def __init__(self, prefix: str) -> None:
        self.payloads: list[bytes] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"rec-{new_id()[:12]}")
        self.client.on_connect = lambda c, *_: c.subscribe(f"{prefix}/#", qos=1)
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", 1883)
        self.client.loop_start()
        assert self._subscribed.wait(20), "recorder never subscribed"

    def _on_message(self, client: object, userdata: object, msg: paho.MQTTMessage) -> None:
        with self._lock:
            self.payloads.append(bytes(msg.payload))

    def seen(self, needle: bytes) -> bool:
        with self._lock:
            return any(needle in p for p in self.payloads)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _hello(device_id: str, bundle_id: str) -> Hello:
    return Hello(
        device_id=device_id,
        device_class=CLASS,
        agent_version="1",
        runtimes=["onnx-cpu"],
        free_disk_bytes=1 << 30,
        free_mem_bytes=1 << 30,
        installed=InstalledModel(model_name=MODEL, version=1, bundle_id=bundle_id),
    )


def test_a_device_reported_bundle_id_never_becomes_a_path(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub" / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    v2_id, v2 = hub_bundle(keys, store, 2)

    # what the attacker wants the hub to read and ship: a bundle file outside the store
    outside = tmp_path / "outside"
    outside.mkdir()
    evil_id, evil = Attacker().bundle(3)
    (outside / "evil.ffb").write_bytes(evil)
    cache_dir = store.directory / "deltas" / v2_id
    traversal = os.path.relpath(outside / "evil", cache_dir)
    assert os.path.normpath(cache_dir / f"{traversal}.ffb") == str(outside / "evil.ffb")
    cache_dir.mkdir(parents=True)  # the old code would now find the planted file through it

    registry = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    with registry.session() as s:
        devices.record_hellos(s, [_hello("dev-evil", traversal), _hello("dev-ok", v1_id)], now=1.0)

    def installed(ids: Sequence[str]) -> dict[str, str | None]:  # as `cloud-hub serve` does
        with registry.session() as s:
            found = {d: devices.find_device(s, d) for d in ids}
        return {d: (r.installed_bundle_id if r else None) for d, r in found.items()}

    assert installed(["dev-evil"]) == {"dev-evil": traversal}  # the registry kept the claim
    prefix = f"r12-{new_id()[:10]}"
    recorder = Recorder(prefix)
    try:
        cfg = PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix)
        with recording_logs("cloud_hub.delta") as logs, FleetPublisher(cfg) as pub:
            delivery = PublisherDelivery(pub, keys, store, installed_lookup=installed)
            delivery.deploy(v2_id, ["dev-evil", "dev-ok"], deployment_id=f"{prefix}-v2")
            delta = store.cached_delta(v2_id, v1_id)
            assert delta is not None  # the honest device still gets its delta
            totals = delivery.shipped[f"{prefix}-v2"]
            assert totals.bytes_shipped == len(delta) + len(v2)  # the other one: full bundle
    finally:
        recorder.close()
        registry.close()
    assert any("invalid bundle id" in m for m in logs.messages()), logs.messages()
    assert not recorder.seen(evil_id.encode())  # the planted bundle never went out
    assert recorder.seen(v2_id.encode())
    assert (outside / "evil.ffb").read_bytes() == evil  # untouched
    assert sorted(p.name for p in outside.iterdir()) == ["evil.ffb"]
    assert sorted(p.name for p in cache_dir.iterdir()) == [f"{v1_id}.ffb"]


@pytest.mark.parametrize(
    "claimed",
    [
        "../../outside/evil",
        "..",
        "/etc/passwd",
        "A" * 64,  # upper case: not what a sha256 hex digest looks like
        "0" * 63,
        "0" * 64 + "\n",
        "0" * 64 + "/../x",
    ],
)
def test_malformed_ids_are_refused_before_any_path(tmp_path: Path, claimed: str) -> None:
    keys = KeyStore.init(tmp_path / "keys")
    store = default_store(keys)
    v1_id, _ = hub_bundle(keys, store, 1)
    with pytest.raises(BundleError, match="invalid bundle id"):
        check_bundle_id(claimed)
    for build_path in (
        lambda: store.path_of(claimed),
        lambda: store.delta_path(v1_id, claimed),
        lambda: store.delta_path(claimed, v1_id),
    ):
        with pytest.raises(BundleError):
            build_path()
    cache = DeltaCache(store)
    assert cache.delta(v1_id, claimed) is None
    assert cache.delta(claimed, v1_id) is None
    assert not (store.directory / "deltas").exists()
