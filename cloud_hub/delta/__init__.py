"""Delta bundles: ship only what changed since the version a device has."""

from cloud_hub.delta.builder import DeltaBuild, build_delta_artifact, delta_manifest
from cloud_hub.delta.spans import onnx_tensor_spans

__all__ = ["DeltaBuild", "build_delta_artifact", "delta_manifest", "onnx_tensor_spans"]
