"""Per-target int8 recipes, the device facts that pick them, and the hub's build report.

Nothing here depends on which int8 kernels this machine has: recipe selection is tested for
VNNI and non-VNNI flag sets directly, the U8S8 saturation is computed in numpy from the
quantizer's real output, and the hub is given explicit facts.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from cloud_hub.compress import CompressionConfig, compress_for_profile, load_profile
from cloud_hub.compress.export import check_onnx, export_onnx
from cloud_hub.compress.optimize import optimize_onnx
from cloud_hub.compress.quantize import quantize_int8
from cloud_hub.compress.recipes import (
    INT16_MAX,
    max_u8s8_pair_sum,
    plan_target_evaluation,
    recipe_for,
    recipe_for_targets,
)
from cloud_hub.errors import GateRefusedError, HubConfigError
from shared.device_facts import DeviceFacts, parse_cpuinfo, target_of
from shared.golden import GoldenBatch, compare_golden

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC 7763 64-Core Processor
flags\t\t: fpu sse sse2 avx avx2 fma bmi2 sha_ni
"""
XEON = """processor\t: 0
model name\t: Intel(R) Xeon(R) Platinum 8480+
flags\t\t: fpu sse avx2 avx512f avx512bw avx512_vnni amx_int8
"""
SKYLAKE_X = """model name\t: Intel(R) Xeon(R) Gold 6130
flags\t\t: avx2 avx512f avx512bw
"""
PI4 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU part\t: 0xd08
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""
ORIN = """Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp
"""


def test_cpuinfo_gives_the_flags_and_target_of_each_kind_of_cpu() -> None:
    epyc = parse_cpuinfo(EPYC, machine="x86_64")
    assert epyc.cpu_model == "AMD EPYC 7763 64-Core Processor"
    assert epyc.isa_flags == ["avx2"] and not epyc.has_vnni
    assert target_of(epyc) == "x86-avx2"
    xeon = parse_cpuinfo(XEON, machine="x86_64")
    assert xeon.isa_flags == ["avx2", "avx512_vnni", "avx512f"] and target_of(xeon) == "x86-vnni"
    # AVX-512 without VNNI still uses the saturating VPMADDUBSW path
    assert target_of(parse_cpuinfo(SKYLAKE_X, machine="x86_64")) == "x86-avx2"
    pi = parse_cpuinfo(PI4, machine="aarch64")
    assert (pi.cpu_model, pi.isa_flags, target_of(pi)) == (
        "Raspberry Pi 4 Model B Rev 1.4",
        ["neon"],
        "arm64-neon",
    )
    orin = DeviceFacts(
        **{
            **parse_cpuinfo(ORIN, machine="aarch64").to_dict(),
            "gpu_model": "Orin",
            "compute_capability": "8.7",
            "tensorrt_version": "10.3.0",
        }
    )
    assert orin.isa_flags == ["dotprod", "neon"]
    assert orin.targets() == ("tensorrt", "arm64-neon") and target_of(orin) == "tensorrt"
    assert DeviceFacts.from_dict(orin.to_dict()) == orin


def test_recipe_per_target_follows_onnxruntimes_guidance() -> None:
    avx2, vnni = recipe_for("x86-avx2"), recipe_for("x86-vnni")
    assert (avx2.activation_type, avx2.weight_type, avx2.reduce_range) == ("uint8", "int8", True)
    assert (vnni.activation_type, vnni.weight_type, vnni.reduce_range) == ("uint8", "int8", False)
    arm = recipe_for("arm64-neon")
    assert (arm.activation_type, arm.reduce_range) == ("int8", False)
    trt = recipe_for("tensorrt")
    assert trt.symmetric_activations and trt.symmetric_weights and trt.activation_type == "int8"
    assert trt.op_types({"Conv", "Gemm"}) == ["Conv", "Gemm"]  # TensorRT: Q/DQ on weighted ops
    # one artifact for both x86 targets takes the recipe both run exactly
    assert recipe_for_targets(["x86-vnni", "x86-avx2"]) == avx2
    assert recipe_for_targets(["x86-vnni"]) == vnni
    with pytest.raises(HubConfigError, match="split the profile"):
        recipe_for_targets(["x86-avx2", "tensorrt"])
    with pytest.raises(HubConfigError, match="unknown target"):
        recipe_for_targets(["x86-sse2"])


def test_only_the_reduce_range_recipe_bounds_the_int16_pair_sums() -> None:
    assert max_u8s8_pair_sum(recipe_for("x86-avx2")) == 32640 <= INT16_MAX
    assert max_u8s8_pair_sum(recipe_for("x86-vnni")) == 65280 > INT16_MAX


def _u8s8_avx2(a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """What VPMADDUBSW + VPMADDWD compute: u8*s8 products added in pairs into a saturating
    int16, then summed in int32. ``a`` (n, k) uint8, ``w`` (k, m) int8."""
    k = a.shape[1] + (a.shape[1] % 2)
    a = np.pad(a.astype(np.int32), ((0, 0), (0, k - a.shape[1])))
    w = np.pad(w.astype(np.int32), ((0, k - w.shape[0]), (0, 0)))
    pairs = a[:, 0::2, None] * w[None, 0::2, :] + a[:, 1::2, None] * w[None, 1::2, :]
    return np.asarray(np.clip(pairs, -32768, 32767).sum(axis=1))


class _Wide(torch.nn.Module):
    """One dense layer with large weights on inputs that fill the uint8 range."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(16, 4)
        with torch.no_grad():
            self.fc.weight.mul_(8.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.fc(x))


def _quantized_weight_and_input(recipe_target: str, tmp: Path, x: np.ndarray) -> Any:
    export_onnx(_Wide().eval(), (16,), tmp / "w.onnx")
    opt = optimize_onnx(tmp / "w.onnx", tmp / "w.opt.onnx")
    from cloud_hub.compress.calibration import LabelledSet

    out = tmp / f"{recipe_target}.onnx"
    quantize_int8(
        opt,
        out,
        op_types=check_onnx(opt).op_types,
        mode="static",
        input_name="input",
        calib=LabelledSet.of(x, np.zeros(len(x), dtype=np.int64), role="calibration"),
        work_dir=tmp,
        recipe=recipe_for(recipe_target),
    )
    model = onnx.load(str(out))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    weight = next(v for v in inits.values() if v.dtype == np.int8 and v.ndim == 2)
    dq_input = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
    scale, zero = inits[dq_input.input[1]], inits[dq_input.input[2]]
    a = np.clip(np.round(x / scale) + zero.astype(np.int32), 0, 255).astype(np.uint8)
    return weight, a


def test_the_quantizers_real_output_saturates_avx2_kernels_only_without_reduce_range(
    tmp_path: Path,
) -> None:
    """Emulate the AVX2 U8S8 kernel on the quantizer's real weights and activations."""
    x = np.random.default_rng(0).uniform(0, 4, size=(64, 16)).astype(np.float32)
    for target, saturates in (("x86-vnni", True), ("x86-avx2", False)):
        (tmp_path / target).mkdir()
        w, a = _quantized_weight_and_input(target, tmp_path / target, x)
        wt = w.T if w.shape[0] == 4 else w  # (k=16, m=4)
        exact = a.astype(np.int32) @ wt.astype(np.int32)
        emulated = _u8s8_avx2(a, wt)
        assert bool(np.any(exact != emulated)) is saturates, target
        if target == "x86-avx2":
            assert np.abs(wt.astype(np.int32)).max() <= 64  # 7-bit weights


AVX2_HUB = parse_cpuinfo(EPYC, machine="x86_64")
VNNI_HUB = parse_cpuinfo(XEON, machine="x86_64")


def test_the_evaluation_plan_says_which_targets_the_hub_cannot_run() -> None:
    both = ("x86-avx2", "x86-vnni")
    on_avx2 = plan_target_evaluation(both, AVX2_HUB, recipe_for("x86-vnni"))
    assert [(e.target, e.hub_kernels) for e in on_avx2] == [
        ("x86-avx2", True),
        ("x86-vnni", False),
    ]
    assert "could not evaluate with target kernels" in on_avx2[1].note
    on_vnni = plan_target_evaluation(both, VNNI_HUB, recipe_for("x86-avx2"))
    assert on_vnni[0].target == "x86-avx2" and not on_vnni[0].hub_kernels
    assert "32640 <= 32767 (no saturation)" in on_vnni[0].note
    bad = plan_target_evaluation(("x86-avx2",), VNNI_HUB, recipe_for("x86-vnni"))
    assert "SATURATES" in bad[0].note


@pytest.mark.parametrize(("hub", "missing"), [(AVX2_HUB, "x86-vnni"), (VNNI_HUB, "x86-avx2")])
def test_build_report_records_the_hub_and_what_it_could_not_run(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig, hub: DeviceFacts, missing: str
) -> None:
    config = CompressionConfig(latency=fast_config.latency, hub_facts=hub)
    artifact = compress_for_profile(
        "digits-cnn",
        digits.state_dict,
        load_profile("x86-cpu"),
        calib=digits.calib,
        eval=digits.eval,
        out_dir=tmp_path,
        config=config,
    )
    doc = json.loads((artifact.directory / "metrics.json").read_text())
    report = doc["build_report"]
    assert report["hub"]["cpu_model"] == hub.cpu_model and report["hub"]["flags"] == hub.isa_flags
    assert report["onnxruntime_version"]
    assert report["recipe"]["name"] == "x86-avx2" and report["recipe"]["reduce_range"]
    assert report["could_not_evaluate_with_target_kernels"] == [missing]
    assert set(report["accuracy_by_evaluation"]) == {"hub_kernels", "exact_qdq"}
    assert doc["targets"] == ["x86-avx2", "x86-vnni"]
    # the gate judged the worse of the two numerics
    assert artifact.metrics.accuracy == min(report["accuracy_by_evaluation"].values())
    golden = GoldenBatch.from_dict(json.loads((artifact.directory / "golden.json").read_text()))
    assert 1 <= golden.samples <= 16 and golden.tolerance.min_top1_agreement == 1.0
    # the golden batch is what the artifact computes: replaying it passes
    from cloud_hub.compress.evaluate import onnx_predictor

    replay = onnx_predictor(artifact.artifact_path)(golden.input_array())
    assert compare_golden(golden, replay).passed


def test_the_floor_refuses_the_fp16_artifact_of_a_chance_level_model(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    from shared.models import build_model

    untrained = {
        k: v.detach().clone() for k, v in build_model("digits-cnn", seed=3).state_dict().items()
    }
    with pytest.raises(GateRefusedError, match=r"accuracy \d+\.\d\d% < floor 60\.00%"):
        compress_for_profile(
            "digits-cnn",
            untrained,
            load_profile("jetson-orin"),
            calib=digits.calib,
            eval=digits.eval,
            out_dir=tmp_path,
            config=fast_config,
        )
    assert not (tmp_path / "jetson-orin").exists()


def test_the_champion_comparison_refuses_an_artifact_worse_than_the_champion(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    with pytest.raises(GateRefusedError, match=r"< champion 100\.00%"):
        compress_for_profile(
            "digits-cnn",
            digits.state_dict,
            load_profile("x86-cpu"),
            calib=digits.calib,
            eval=digits.eval,
            out_dir=tmp_path,
            config=fast_config,
            champion_accuracy=1.0,
        )


def test_the_jetson_int8_profile_builds_symmetric_qdq_judged_on_exact_numerics(
    digits: Any, tmp_path: Path, fast_config: CompressionConfig
) -> None:
    profile = load_profile("jetson-orin-int8")
    assert profile.device_class == "jetson-orin" and profile.int8_recipe == recipe_for("tensorrt")
    artifact = compress_for_profile(
        "digits-cnn",
        digits.state_dict,
        profile,
        calib=digits.calib,
        eval=digits.eval,
        out_dir=tmp_path,
        config=CompressionConfig(latency=fast_config.latency, hub_facts=AVX2_HUB),
    )
    report = json.loads((artifact.directory / "metrics.json").read_text())["build_report"]
    assert report["could_not_evaluate_with_target_kernels"] == ["tensorrt"]
    assert set(report["accuracy_by_evaluation"]) == {"exact_qdq"}  # the hub's kernels: no target's
    model = onnx.load(str(artifact.artifact_path))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    zero_points = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert zero_points and all(z.dtype == np.int8 and not z.any() for z in zero_points)
