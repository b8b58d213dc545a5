"""Delta bundles: ship only what changed since the version a device has."""

from cloud_hub.delta.builder import DeltaBuild, build_delta_artifact, delta_manifest
from cloud_hub.delta.plan import (
    DeliveryGroup,
    DeliveryPlan,
    DeltaCache,
    make_delta_bundle,
    plan_delivery,
)
from cloud_hub.delta.spans import onnx_tensor_spans

__all__ = [
    "DeliveryGroup",
    "DeliveryPlan",
    "DeltaBuild",
    "DeltaCache",
    "build_delta_artifact",
    "delta_manifest",
    "make_delta_bundle",
    "onnx_tensor_spans",
    "plan_delivery",
]
