"""Bundles for the R1/R12/R15 attack tests: the hub's own (built through the real bundle
store) and an attacker's (signed by a root and keys the attacker made up)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

import numpy as np

from cloud_hub.bundles import BundleSpec, BundleStore, build_signed_bundle
from cloud_hub.keys import KeyStore
from shared.bundle import BundleManifest, artifact_info, build_bundle, bundle_id_of, parse_bundle
from shared.signing import KeyEntry, Keyring, SigningKey, TrustRoot, format_time, sign_envelope
from tests.onnx_models import linear_onnx

UTC = timezone.utc
MODEL = "digits"
CLASS = "x86-cpu"
MAX_VERSION = 2**31 - 1


def weights(version: int) -> np.ndarray:
    """Weights of ``version``: each version changes a few rows (deltas between them are small)."""
    w = np.random.default_rng(0).normal(size=(256, 128)).astype(np.float32)
    w[: 8 * version] += 0.01
    return w


def model_bytes(version: int) -> bytes:
    return linear_onnx(weights(version))


def hub_bundle(keys: KeyStore, store: BundleStore, version: int) -> tuple[str, bytes]:
    """A bundle the hub signs, kept in its store: ``(bundle_id, bytes)``."""
    onnx = model_bytes(version)
    built = build_signed_bundle(
        keys,
        store,
        BundleSpec(model_name=MODEL, device_class=CLASS, version=version),
        [(artifact_info("model.onnx", onnx, "model", "application/onnx"), onnx)],
    )
    return built.bundle_id, built.data


@dataclass
class Attacker:
    """Someone with an operator token, a broker account or write access to the bundle folder,
    but not the hub's keys: they sign with a root of their own."""

    root: SigningKey = field(default_factory=SigningKey.generate)
    signer: SigningKey = field(default_factory=SigningKey.generate)

    @property
    def trust(self) -> TrustRoot:
        return TrustRoot(root_keys={self.root.keyid: self.root.public_hex})

    def keyring(self, *, version: int = 1) -> dict[str, Any]:
        now = datetime.now(UTC)
        ring = Keyring(
            version=version,
            expires=format_time(now + timedelta(days=3650)),
            signing_keys={
                self.signer.keyid: KeyEntry(
                    public=self.signer.public_hex, expires=format_time(now + timedelta(days=3650))
                )
            },
        )
        return sign_envelope(ring.to_signed(), [self.root])

    def bundle(
        self,
        version: int,
        *,
        expires_days: float = 30,
        keyring: dict[str, Any] | None = None,
        keyring_version: int = 1,
    ) -> tuple[str, bytes]:
        """A well-formed bundle signed by the attacker; ``keyring``: the envelope to ship
        (e.g. the hub's own public keyring, copied)."""
        now = datetime.now(UTC)
        onnx = model_bytes(min(version, 20))
        manifest = BundleManifest(
            model_name=MODEL,
            version=version,
            device_class=CLASS,
            created=format_time(now),
            expires=format_time(now + timedelta(days=expires_days)),
            artifacts=[artifact_info("model.onnx", onnx, "model", "application/onnx")],
        )
        data = build_bundle(
            manifest,
            {"model.onnx": onnx},
            signing_keys=[self.signer],
            keyring_envelope=keyring or self.keyring(version=keyring_version),
        )
        return bundle_id_of(parse_bundle(data).manifest_envelope), data
