"""The golden batch: its wire form inside the manifest, the device-side check on a real
installed slot and onnxruntime, the rollout gate's count and the pre-start warnings."""

from __future__ import annotations

import base64
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cloud_hub.rollout.compat import target_warnings
from cloud_hub.rollout.config import AbortRule, GateThresholds
from cloud_hub.rollout.gates import (
    Baseline,
    DeviceReport,
    GateVerdict,
    InstallOutcome,
    evaluate_gate,
)
from edge_agent.errors import InstallError
from edge_agent.ota.health import default_health_check
from edge_agent.ota.slots import SlotMeta, SlotStore
from edge_agent.runtime.golden import GoldenBatchCheck, GoldenBatchRefusedError
from shared.bundle import BundleManifest, artifact_info, parse_manifest
from shared.device_facts import DeviceFacts
from shared.errors import MalformedBundleError
from shared.golden import GOLDEN_CHECK, GoldenBatch, compare_golden
from shared.messages import Hello, decode_message
from tests.golden.golden_support import GoldenArtifacts, build_artifacts


@pytest.fixture(scope="module")
def arts() -> GoldenArtifacts:
    return build_artifacts()


def _manifest(model: bytes, golden: GoldenBatch | None) -> BundleManifest:
    return BundleManifest(
        model_name="m",
        version=2,
        device_class="x86-cpu",
        created="2026-01-01T00:00:00Z",
        expires="2036-01-01T00:00:00Z",
        artifacts=[artifact_info("model.onnx", model, "model", "application/onnx")],
        targets=["x86-avx2", "x86-vnni"],
        golden=golden,
    )


def _slot(tmp_path: Path, model: bytes, golden: GoldenBatch | None) -> Any:
    store = SlotStore(tmp_path)
    manifest = _manifest(model, golden)
    meta = SlotMeta(
        model_name="m",
        version=2,
        bundle_id="b" * 64,
        deployment_id="dep-1",
        installed_at=time.time(),
        artifacts=[{"name": "model.onnx", "role": "model", "sha256": "", "size": len(model)}],
    )
    envelope = {"signed": manifest.to_signed(), "signatures": []}
    return store.write("b", {"model.onnx": model}, meta, envelope)


def test_the_device_check_passes_the_artifact_the_hub_measured(
    arts: GoldenArtifacts, tmp_path: Path
) -> None:
    slot = _slot(tmp_path, arts.good_int8, arts.good_golden)
    GoldenBatchCheck()(slot)
    default_health_check()(slot)  # smoke + golden, as the agent runs it


def test_the_device_check_refuses_a_misquantized_artifact_with_measured_figures(
    arts: GoldenArtifacts, tmp_path: Path
) -> None:
    slot = _slot(tmp_path, arts.misquantized_int8, arts.good_golden)
    with pytest.raises(GoldenBatchRefusedError) as err:
        GoldenBatchCheck()(slot)
    figures = err.value.figures
    assert figures["check"] == GOLDEN_CHECK and figures["passed"] is False
    assert figures["runtime"].startswith("onnxruntime:CPUExecutionProvider")
    assert figures["max_abs_logit_error"] > figures["max_abs_logit_error_allowed"]
    assert figures["samples"] == arts.good_golden.samples and figures["ms"] > 0
    assert "golden batch of 16: top-1 agreement" in str(err.value)
    with pytest.raises(InstallError, match="golden batch"):
        default_health_check()(slot)


def test_a_bundle_without_golden_batch_is_only_smoke_checked(
    arts: GoldenArtifacts, tmp_path: Path
) -> None:
    GoldenBatchCheck()(_slot(tmp_path, arts.misquantized_int8, None))


def test_golden_batch_travels_in_the_manifest_and_bad_ones_are_refused(
    arts: GoldenArtifacts,
) -> None:
    manifest = _manifest(arts.good_int8, arts.good_golden)
    again = parse_manifest({"signed": manifest.to_signed()})
    assert again.golden == arts.good_golden and again.targets == ["x86-avx2", "x86-vnni"]
    good = manifest.to_signed()["golden"]
    n = len(good["top1"])
    bad_cases: list[tuple[dict[str, Any], str]] = [
        ({**good, "top1": [7] * n}, "top-1 class out of range"),
        ({**good, "inputs": "***"}, "not base64"),
        ({**good, "inputs": base64.b64encode(b"\0" * 12).decode()}, "bytes for shape"),
        ({**good, "input_shape": [100_000]}, "bytes >"),
        ({**good, "schema_version": 2}, "not supported"),
        (
            {**good, "logits": base64.b64encode(np.full(n * 3, np.nan, "<f4").tobytes()).decode()},
            "NaN",
        ),
        ({**good, "tolerance": {"min_top1_agreement": 2.0, "max_abs_logit_error": 1}}, "tolerance"),
    ]
    for bad, message in bad_cases:
        signed = {**manifest.to_signed(), "golden": bad}
        with pytest.raises(MalformedBundleError, match=message):
            parsed = parse_manifest({"signed": signed})
            assert parsed.golden is not None
            parsed.golden.input_array(), parsed.golden.logits_array()
    with pytest.raises(MalformedBundleError, match="unknown targets"):
        parse_manifest({"signed": {**manifest.to_signed(), "targets": ["x86-sse2"]}})


def test_a_wrong_shape_or_non_finite_output_is_a_failed_comparison(
    arts: GoldenArtifacts,
) -> None:
    golden = arts.good_golden
    verdict = compare_golden(golden, np.zeros((golden.samples, 5), np.float32))
    assert not verdict.passed and math.isinf(verdict.max_abs_logit_error)
    assert verdict.to_dict()["max_abs_logit_error"] is None  # JSON has no infinity
    nan = golden.logits_array().copy()
    nan[0, 0] = np.nan
    assert not compare_golden(golden, nan).passed


def test_hello_carries_the_device_facts_and_old_hellos_still_decode() -> None:
    facts = DeviceFacts(arch="x86_64", cpu_model="AMD EPYC 7763", isa_flags=["avx2"], gpu_model="")
    hello = Hello("d-1", "x86-cpu", "0.1", [], 1, 1, facts=facts)
    decoded = decode_message(hello.encode())
    assert isinstance(decoded, Hello) and decoded.facts == facts
    old = hello.to_dict()
    del old["facts"]
    decoded_old = decode_message(__import__("json").dumps(old).encode())
    assert isinstance(decoded_old, Hello) and decoded_old.facts is None


def _gate(reports: list[DeviceReport]) -> Any:
    return evaluate_gate(
        reports,
        Baseline(),
        thresholds=GateThresholds(),
        abort=AbortRule(min_finished=1),
        stage_started=0.0,
        now=100.0,
        window_s=1.0,
        offline_timeout_s=60.0,
    )


def test_the_gate_counts_golden_batch_refusals() -> None:
    refused = DeviceReport("d-1", InstallOutcome.FAILED, 1.0, golden_refused=True)
    other = DeviceReport("d-2", InstallOutcome.FAILED, 1.0)
    ok = DeviceReport("d-3", InstallOutcome.SUCCEEDED, 1.0)
    result = _gate([refused, other, ok])
    assert result.verdict is GateVerdict.FAIL and result.golden_batch_refusals == 1
    assert "(1 refused by the device's golden-batch check)" in result.reason
    assert result.to_dict()["golden_batch_refusals"] == 1
    assert _gate([other, ok]).golden_batch_refusals == 0


def test_pre_start_warnings_name_devices_the_artifact_was_not_built_for() -> None:
    devices = {"a": "x86-vnni", "b": "x86-avx2", "c": None, "d": "arm64-neon"}
    warnings = target_warnings(["x86-vnni"], devices)
    assert warnings == (
        "1 device(s) run arm64-neon, which the artifact was not built for (built for x86-vnni): d",
        "1 device(s) run x86-avx2, which the artifact was not built for (built for x86-vnni): b",
        "1 device(s) have not reported their CPU/GPU facts, so whether the artifact was "
        "built for them is unknown: c",
    )
    assert target_warnings(["x86-avx2", "x86-vnni"], {"a": "x86-vnni", "b": "x86-avx2"}) == ()
    assert target_warnings([], devices) == ()  # a hand-built bundle names no targets
