"""int8 recipes per target, following onnxruntime's quantization guidance (pure).

onnxruntime's docs ("Quantize ONNX models": data type selection, reduce_range, TensorRT
execution provider) and what we measured (an AVX2-only EPYC lost 3.3-3.9 points with the
plain U8S8 recipe, none with ``reduce_range``) give one recipe per target:

============  ==========  =======  ============  ==========================================
target        act/weight  reduce   symmetric     why
============  ==========  =======  ============  ==========================================
x86-avx2      U8 / S8     yes      no            ``VPMADDUBSW`` adds two u8*s8 products in a
                                                 saturating int16: 2*255*128 = 65280 > 32767.
                                                 7-bit weights bound it by 2*255*64 = 32640.
x86-vnni      U8 / S8     no       no            ``VPDPBUSD`` accumulates in int32: exact.
arm64-neon    S8 / S8     no       no            NEON/``sdot`` kernels are exact; S8S8 QDQ is
                                                 onnxruntime's first choice.
tensorrt      S8 / S8     no       both          TensorRT explicit quantization needs
                                                 symmetric Q/DQ on Conv/MatMul/Gemm inputs.
============  ==========  =======  ============  ==========================================

An artifact serving several targets takes the recipe all of them run exactly:
``x86-avx2`` + ``x86-vnni`` -> the ``x86-avx2`` recipe (reduce_range is exact on VNNI too and
measured no worse there). Targets with different weight/activation types (x86 vs TensorRT)
cannot share one artifact: the profile must be split (one profile per target).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cloud_hub.errors import HubConfigError
from shared.device_facts import TARGETS, DeviceFacts

__all__ = [
    "INT16_MAX",
    "Int8Recipe",
    "TargetEvaluation",
    "max_u8s8_pair_sum",
    "plan_target_evaluation",
    "recipe_for",
    "recipe_for_targets",
]

INT16_MAX = 32767
_FLOAT_SIDE_OPS = frozenset({"Relu", "MaxPool", "Flatten", "Reshape", "AveragePool"})


@dataclass(frozen=True)
class Int8Recipe:
    """The quantizer settings for one target (``quantize_static`` arguments)."""

    name: str
    activation_type: str  # "uint8" | "int8"
    weight_type: str  # "int8"
    reduce_range: bool
    per_channel: bool = True
    symmetric_activations: bool = False
    symmetric_weights: bool = False
    quantize_passthrough_ops: bool = True  # also Q/DQ around Relu/MaxPool/Flatten/Reshape

    def op_types(self, weighted_ops: Iterable[str]) -> list[str]:
        """Operator types to quantize: the weighted ops plus pass-through ops if allowed."""
        ops = set(weighted_ops) | (_FLOAT_SIDE_OPS if self.quantize_passthrough_ops else set())
        return sorted(ops)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "activation_type": self.activation_type,
            "weight_type": self.weight_type,
            "reduce_range": self.reduce_range,
            "per_channel": self.per_channel,
            "symmetric_activations": self.symmetric_activations,
            "symmetric_weights": self.symmetric_weights,
            "quantize_passthrough_ops": self.quantize_passthrough_ops,
        }


_RECIPES = {
    "x86-avx2": Int8Recipe("x86-avx2", "uint8", "int8", reduce_range=True),
    "x86-vnni": Int8Recipe("x86-vnni", "uint8", "int8", reduce_range=False),
    "arm64-neon": Int8Recipe("arm64-neon", "int8", "int8", reduce_range=False),
    "tensorrt": Int8Recipe(
        "tensorrt",
        "int8",
        "int8",
        reduce_range=False,
        symmetric_activations=True,
        symmetric_weights=True,
        quantize_passthrough_ops=False,
    ),
}
# Which single-target recipe serves a set of targets exactly (see the module docstring).
_SHARED = {
    frozenset({"x86-avx2", "x86-vnni"}): "x86-avx2",
}


def recipe_for(target: str) -> Int8Recipe:
    """The recipe for one target; ``HubConfigError`` for an unknown one."""
    try:
        return _RECIPES[target]
    except KeyError:
        raise HubConfigError(f"unknown target {target!r}; known: {list(TARGETS)}") from None


def recipe_for_targets(targets: Iterable[str]) -> Int8Recipe:
    """The one recipe every target in ``targets`` runs without accuracy loss."""
    wanted = frozenset(targets)
    if not wanted:
        raise HubConfigError("an int8 artifact needs at least one target")
    for target in wanted:
        recipe_for(target)  # unknown names first
    if len(wanted) == 1:
        return recipe_for(next(iter(wanted)))
    shared = _SHARED.get(wanted)
    if shared is None:
        raise HubConfigError(
            f"targets {sorted(wanted)} need different int8 recipes: split the profile "
            "(one profile per target)"
        )
    return recipe_for(shared)


def max_u8s8_pair_sum(recipe: Int8Recipe) -> int:
    """The largest ``|a1*w1 + a2*w2|`` an x86 U8S8 kernel forms in int16 for this recipe.

    Activations span 0..255 (uint8) or -128..127 (int8, shifted to uint8 by onnxruntime on
    x86), weights -128..127, or -64..63 with ``reduce_range`` (7 bits).
    """
    weight_max = 64 if recipe.reduce_range else 128
    return 2 * 255 * weight_max


@dataclass(frozen=True)
class TargetEvaluation:
    """How the hub evaluates an artifact for one target."""

    target: str
    hub_kernels: bool  # the hub runs this target's kernels: its figures are the device's
    note: str

    def to_dict(self) -> dict[str, Any]:
        return {"target": self.target, "hub_kernels": self.hub_kernels, "note": self.note}


def plan_target_evaluation(
    targets: Iterable[str], hub: DeviceFacts, recipe: Int8Recipe | None
) -> tuple[TargetEvaluation, ...]:
    """Pure: for each target, whether the hub's own kernels are the target's, and if not,
    what the build report must say. A target the hub cannot run is judged by the exact
    Q/DQ reference numerics (the graph run without fused int8 kernels) in addition."""
    hub_targets = set(hub.targets())
    out = []
    for target in sorted(set(targets)):
        if target in hub_targets:
            out.append(TargetEvaluation(target, True, "evaluated with the target's kernels"))
            continue
        why = f"could not evaluate with target kernels (hub runs {sorted(hub_targets) or '?'})"
        if recipe is not None and target == "x86-avx2":
            bound = max_u8s8_pair_sum(recipe)
            why += f"; the recipe bounds U8S8 int16 pair sums by {bound}" + (
                " <= 32767 (no saturation)" if bound <= INT16_MAX else " > 32767 (SATURATES)"
            )
        out.append(TargetEvaluation(target, False, why + "; judged on exact Q/DQ numerics"))
    return tuple(out)
