"""Every refusal, end to end: crafted bad bundles delivered by the hub to a real agent process.
The agent refuses each one with the matching reason and keeps serving its committed model."""

from __future__ import annotations

import json
import struct
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.keys import KeyStore
from shared.broker_endpoint import BrokerEndpoint
from shared.bundle import BundleManifest, artifact_info, build_bundle, parse_bundle
from shared.messages import new_id
from shared.signing import SigningKey, format_time
from simulations.harness.agents import LocalAgentFleet
from tests.onnx_models import tiny_onnx_model

from .ota_support import make_model_bundle

pytestmark = pytest.mark.integration
UTC = timezone.utc
MODEL = tiny_onnx_model()


def craft(
    keys: KeyStore,
    version: int,
    *,
    key: SigningKey | None = None,
    keyring: dict[str, Any] | None = None,
    device_class: str = "x86-cpu",
    created: datetime | None = None,
    days: float = 1.0,
    model: bytes = MODEL,
) -> bytes:
    now = created or datetime.now(UTC)
    manifest = BundleManifest(
        model_name="digits",
        version=version,
        device_class=device_class,
        created=format_time(now),
        expires=format_time(now + timedelta(days=days)),
        artifacts=[artifact_info("model.onnx", model, "model", "application/onnx")],
    )
    return build_bundle(
        manifest,
        {"model.onnx": model},
        signing_keys=[key] if key else keys.signing_keys(),
        keyring_envelope=keyring or keys.keyring_envelope(),
    )


def rewrite_header(data: bytes, mutate: Callable[[dict[str, Any]], None]) -> bytes:
    parsed = parse_bundle(data)
    header = {"manifest": parsed.manifest_envelope, "keyring": parsed.keyring_envelope}
    mutate(header)
    raw = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    return struct.pack(">8sBI", b"FFBUNDLE", 1, len(raw)) + raw + parsed.payload


def test_agent_refuses_every_bad_bundle_and_keeps_its_model(tmp_path: Path) -> None:
    keys = KeyStore.init(tmp_path / "hub")
    prefix = f"ref-{new_id()[:8]}"
    with (
        LocalAgentFleet(
            root=tmp_path / "fleet",
            trust_root=keys.trust_root().to_dict(),
            mqtt_url="mqtt://127.0.0.1:1883",
            prefix=prefix,
            n=1,
            tables={"timeouts": {"chunk_retry_s": 0.5}, "limits": {"fsync_chunks": False}},
        ) as fleet,
        FleetPublisher(
            PublisherConfig(broker=BrokerEndpoint(port=1883), prefix=prefix, start_grace_s=2)
        ) as pub,
    ):
        (dev,) = fleet.device_ids
        assert not pub.wait_for_devices([dev], timeout=60), fleet.logs(dev)

        def deliver(data: bytes, timeout: float = 30) -> tuple[DeliveryState, str]:
            result = pub.deploy(data, [dev]).wait(timeout=timeout)
            progress = result.devices[dev]
            return progress.state, progress.detail

        v1 = make_model_bundle(keys, version=1)
        assert deliver(v1.data)[0] is DeliveryState.COMMITTED, fleet.logs(dev)
        old_key, old_ring = keys.signing_keys()[0], keys.keyring_envelope()

        def bad_sig(h: dict[str, Any]) -> None:
            h["manifest"]["signed"]["metrics"] = {"accuracy": 1.0}

        good_v2 = craft(keys, 2)
        wrong_payload = craft(keys, 5, model=MODEL[:-4] + b"\x00\x00\x00\x00")
        cases: list[tuple[str, bytes, str]] = [
            ("bad signature", rewrite_header(good_v2, bad_sig), "signature"),
            ("unknown key", craft(keys, 2, key=SigningKey.generate()), "trusted key"),
            ("wrong class", craft(keys, 2, device_class="rpi4"), "device class"),
            (
                "expired manifest",
                craft(keys, 2, created=datetime.now(UTC) - timedelta(days=3)),
                "expired",
            ),
            ("not newer (same version, other bytes)", craft(keys, 1), "not newer"),
        ]
        # (re-offering the installed bundle itself is idempotent: "committed, already installed")
        assert deliver(v1.data) == (DeliveryState.COMMITTED, "already installed")
        for name, data, reason in cases:
            state, detail = deliver(data)
            assert state is DeliveryState.REJECTED, (name, state, detail, fleet.logs(dev))
            assert reason in detail, (name, detail)

        # hash mismatch: the signed manifest is fine, the delivered bytes are not
        header_len = len(wrong_payload) - len(parse_bundle(wrong_payload).payload)
        tampered = bytearray(wrong_payload)
        tampered[header_len + 10] ^= 0xFF
        state, detail = deliver(bytes(tampered))
        assert state is DeliveryState.FAILED, (state, detail)
        # mix-and-match: the header of one signed bundle with the artifacts of another
        other = craft(keys, 6, model=MODEL[:-4] + b"\x01\x02\x03\x04")
        mixed = other[:header_len] + parse_bundle(wrong_payload).payload
        state, detail = deliver(mixed)
        assert state is DeliveryState.FAILED, (state, detail)

        # rotation: the old (now revoked) key is refused once the agent saw keyring v2
        keys.rotate()
        v7 = craft(keys, 7)
        assert deliver(v7)[0] is DeliveryState.COMMITTED
        state, detail = deliver(craft(keys, 8, key=old_key))
        assert state is DeliveryState.REJECTED and "revoked" in detail, detail
        # keyring rollback: an old keyring (v1) with the old key, after keyring v2 was seen
        state, detail = deliver(craft(keys, 9, key=old_key, keyring=old_ring))
        assert state is DeliveryState.REJECTED and "keyring" in detail, detail

        # the agent still serves v7 (the last committed bundle) and reports it
        deadline = time.monotonic() + 10
        while pub.devices()[dev].installed_version != 7:
            assert time.monotonic() < deadline, pub.devices()
            time.sleep(0.1)
        assert fleet.agent(dev).running
