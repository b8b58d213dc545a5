"""Build delta artifacts and the signed manifest that carries them."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from cloud_hub.delta.spans import onnx_tensor_spans
from cloud_hub.errors import CompressionError
from shared.bundle import ArtifactInfo, BundleManifest, DeltaInfo
from shared.delta import delta_method, make_smallest_delta


@dataclass(frozen=True)
class DeltaBuild:
    """A delta for one artifact, with what it saves."""

    name: str
    delta: bytes
    method: str
    full_size: int

    @property
    def ratio(self) -> float:
        return len(self.delta) / max(1, self.full_size)


def build_delta_artifact(name: str, base: bytes, target: bytes) -> DeltaBuild:
    """The smaller of a model-aware (ONNX tensors) delta and bsdiff4, both zstd-compressed."""
    base_spans = target_spans = None
    if name.endswith(".onnx"):
        try:
            base_spans, target_spans = onnx_tensor_spans(base), onnx_tensor_spans(target)
        except CompressionError:
            base_spans = target_spans = None  # not parseable: the generic method still works
    delta = make_smallest_delta(base, target, base_spans, target_spans)
    return DeltaBuild(name=name, delta=delta, method=delta_method(delta), full_size=len(target))


def delta_manifest(
    full: BundleManifest,
    full_artifacts: Mapping[str, bytes],
    base: BundleManifest,
    base_artifacts: Mapping[str, bytes],
    *,
    min_saving: float = 0.1,
) -> tuple[BundleManifest, dict[str, bytes]] | None:
    """Derive a delta bundle's manifest and wire artifacts from a full bundle and its base.

    Each artifact that exists in the base under the same name and shrinks by at least
    ``min_saving`` travels as a delta; the others travel in full. Returns ``None`` when no
    artifact benefits (ship the full bundle).
    """
    if base.model_name != full.model_name or base.device_class != full.device_class:
        raise CompressionError("delta base must be the same model and device class")
    if base.version >= full.version:
        raise CompressionError("delta base must be an older version")
    artifacts: list[ArtifactInfo] = []
    wire: dict[str, bytes] = {}
    any_delta = False
    for info in full.artifacts:
        target = full_artifacts[info.name]
        base_bytes = base_artifacts.get(info.name)
        built = build_delta_artifact(info.name, base_bytes, target) if base_bytes else None
        if built is not None and built.ratio <= 1.0 - min_saving:
            assert base_bytes is not None
            any_delta = True
            artifacts.append(
                dataclasses.replace(
                    info,
                    delta=DeltaInfo(
                        base_version=base.version,
                        base_sha256=hashlib.sha256(base_bytes).hexdigest(),
                        method=built.method,
                        sha256=hashlib.sha256(built.delta).hexdigest(),
                        size=len(built.delta),
                    ),
                )
            )
            wire[info.name] = built.delta
        else:
            artifacts.append(info)
            wire[info.name] = target
    if not any_delta:
        return None
    manifest = dataclasses.replace(
        full, artifacts=artifacts, extra={**full.extra, "delta_base_version": base.version}
    )
    return manifest, wire
