"""Test support for the OTA tests: key store + bundle fixtures and a scripted protocol peer.

``ScriptedDevice`` speaks the device side of the wire protocol with plain paho (it is the
*other* side of the hub's publisher, used to test the publisher's protocol behaviour in
isolation: dropped fan-out chunks, late joiners). End-to-end tests use the real agent.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.bundles import BundleSpec, build_bundle_from_file, default_store
from cloud_hub.keys import KeyStore
from shared.bundle import VerifyPolicy, verify_bundle
from shared.chunks import ChunkAssembly, decode_chunk
from shared.errors import FedfleetError
from shared.messages import (
    ChunkRequest,
    DeployCommand,
    Event,
    RollbackCommand,
    decode_message,
    new_id,
)
from shared.topics import TopicScheme
from tests.onnx_models import tiny_onnx_model

__all__ = ["BuiltFixture", "ScriptedDevice", "make_bundle"]


@dataclass(frozen=True)
class BuiltFixture:
    keys: KeyStore
    data: bytes
    bundle_id: str


def make_bundle(
    tmp: Path,
    *,
    size: int = 600_000,
    version: int = 1,
    device_class: str = "x86-cpu",
    keys: KeyStore | None = None,
    name: str = "digits",
) -> BuiltFixture:
    import os

    keys = keys or KeyStore.init(tmp / "hub")
    model = tmp / f"model-{version}.bin"
    model.write_bytes(os.urandom(size))
    built = build_bundle_from_file(
        keys,
        default_store(keys),
        BundleSpec(model_name=name, device_class=device_class, version=version),
        model_path=model,
    )
    return BuiltFixture(keys, built.data, built.bundle_id)


class ScriptedDevice:
    """A minimal device peer: subscribe on offer, collect chunks, ask for gaps, verify, commit."""

    def __init__(
        self,
        device_id: str,
        *,
        port: int,
        prefix: str,
        keys: KeyStore,
        drop: frozenset[int] = frozenset(),
        ignore_fanout: bool = False,
        device_class: str = "x86-cpu",
    ) -> None:
        self.device_id = device_id
        self.topics = TopicScheme(prefix)
        self.keys = keys
        self.drop = set(drop)
        self.ignore_fanout = ignore_fanout
        self.device_class = device_class
        self.fanout_chunks = 0
        self.repair_chunks = 0
        self.requests: list[list[int]] = []
        self.outcome: str | None = None
        self._lock = threading.Lock()
        self._cmd: DeployCommand | None = None
        self._asm: ChunkAssembly | None = None
        self._buf = bytearray()
        self._last_chunk = time.monotonic()
        self._client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"dev-{device_id}-{new_id()[:6]}",
            protocol=mqtt.MQTTv5,
        )
        self._client.on_message = self._on_message
        self._client.on_subscribe = self._on_subscribe
        self._sub_mid: int | None = None
        self._stop = threading.Event()
        self._listening = threading.Event()  # the broker acknowledged cmd + chunks
        self._client.connect("127.0.0.1", port)
        self._listen_mid = self._client.subscribe(
            [
                (self.topics.device(device_id, "cmd"), 1),
                (self.topics.device(device_id, "chunks"), 1),
            ]
        )[1]
        self._client.loop_start()
        # commands are not retained: one sent before the broker has the subscription is lost
        if not self._listening.wait(5.0):
            self.close()
            raise TimeoutError(f"{device_id}: the broker did not acknowledge the subscription")
        self._ticker = threading.Thread(target=self._tick, daemon=True)
        self._ticker.start()

    def _event(self, kind: str, detail: str = "") -> None:
        assert self._cmd is not None
        ev = Event(
            device_id=self.device_id,
            event_id=new_id(),
            kind=kind,
            deployment_id=self._cmd.deployment_id,
            detail=detail,
        )
        self._client.publish(self.topics.device(self.device_id, "events"), ev.encode(), qos=1)

    def _on_subscribe(self, client: mqtt.Client, userdata: object, mid: int, *rest: object) -> None:
        if mid == self._listen_mid:
            self._listening.set()
        elif mid == self._sub_mid:
            self._event("download_started")

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/cmd"):
            cmd = decode_message(msg.payload)
            if isinstance(cmd, RollbackCommand):
                self._cmd = DeployCommand(
                    command_id="",
                    deployment_id=cmd.deployment_id,
                    bundle_id="",
                    manifest={},
                    keyring={},
                    total_size=0,
                    chunk_size=1,
                    chunk_count=1,
                    chunk_topic="",
                )
                self._event("rolled_back")
                return
            assert isinstance(cmd, DeployCommand)
            with self._lock:
                self._cmd = cmd
                self._asm = ChunkAssembly(
                    bundle_id=cmd.bundle_id, total_size=cmd.total_size, chunk_size=cmd.chunk_size
                )
                self._buf = bytearray(cmd.total_size)
            if self.ignore_fanout:
                self._event("download_started")
            else:
                self._sub_mid = client.subscribe(cmd.chunk_topic, qos=1)[1]
            return
        chunk = decode_chunk(bytes(msg.payload))
        fanout = "/bundles/" in msg.topic
        with self._lock:
            self._last_chunk = time.monotonic()
            if fanout:
                if self.ignore_fanout or chunk.index in self.drop:
                    self.drop.discard(chunk.index)
                    return
                self.fanout_chunks += 1
            else:
                self.repair_chunks += 1
            assert self._asm is not None
            if self._asm.accept(chunk):
                off = self._asm.offset(chunk.index)
                self._buf[off : off + len(chunk.data)] = chunk.data
            complete = self._asm.complete and self.outcome is None
            if complete:
                self.outcome = "verifying"
        if complete:
            self._finish()

    def _finish(self) -> None:
        assert self._cmd is not None
        policy = VerifyPolicy(
            trust=self.keys.trust_root(),
            device_class=self.device_class,
            now=datetime.now(timezone.utc),
        )
        try:
            verify_bundle(bytes(self._buf), policy, expected_bundle_id=self._cmd.bundle_id)
        except FedfleetError as exc:
            self.outcome = "failed"
            self._event("failed", str(exc))
            return
        self._event("download_complete")
        self._event("verified")
        self.outcome = "committed"
        self._event("committed")

    def _tick(self) -> None:
        while not self._stop.wait(0.2):
            with self._lock:
                asm, cmd = self._asm, self._cmd
                quiet = time.monotonic() - self._last_chunk > 0.6
                if asm is None or cmd is None or asm.complete or not quiet:
                    continue
                missing = asm.missing()
                self._last_chunk = time.monotonic()
            self.requests.append(missing)
            req = ChunkRequest(device_id=self.device_id, bundle_id=cmd.bundle_id, indices=missing)
            self._client.publish(
                self.topics.device(self.device_id, "chunk-req"), req.encode(), qos=1
            )

    def close(self) -> None:
        self._stop.set()
        self._client.disconnect()
        self._client.loop_stop()


def make_model_bundle(
    keys: KeyStore,
    *,
    version: int,
    padding: int = 0,
    device_class: str = "x86-cpu",
    name: str = "digits",
    model: bytes | None = None,
) -> BuiltFixture:
    """A bundle with a real ONNX model (+ ``padding`` random bytes as an extra artifact)."""
    import os

    from cloud_hub.bundles import build_signed_bundle
    from shared.bundle import artifact_info

    onnx_bytes = model if model is not None else tiny_onnx_model()
    arts = [(artifact_info("model.onnx", onnx_bytes, "model", "application/onnx"), onnx_bytes)]
    if padding:
        pad = os.urandom(padding)
        arts.append((artifact_info("padding.bin", pad, "other"), pad))
    built = build_signed_bundle(
        keys,
        default_store(keys),
        BundleSpec(model_name=name, device_class=device_class, version=version),
        arts,
    )
    return BuiltFixture(keys, built.data, built.bundle_id)
