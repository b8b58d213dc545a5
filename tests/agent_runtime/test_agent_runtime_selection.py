"""Backend selection, fallback reporting, and ORT vs torch parity on the same model."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from edge_agent.errors import AgentConfigError, RuntimeBackendError
from edge_agent.runtime import (
    DeviceCapabilities,
    ModelArtifacts,
    RuntimeConfig,
    RuntimeProfile,
    detect_capabilities,
    select_backend,
)
from edge_agent.runtime.onnx_backend import tensorrt_cache_key

CAPS = detect_capabilities()
HAS_CUDA_ORT = "CUDAExecutionProvider" in CAPS.ort_providers
HAS_TORCH_CUDA = False
if CAPS.gpu_name is not None:
    import torch

    HAS_TORCH_CUDA = torch.cuda.is_available()


def test_cpu_profile_selects_ort_cpu_without_warning(sensor_model) -> None:
    loaded = select_backend(
        sensor_model.artifacts(version=7), RuntimeProfile(preferred=("onnxruntime:cpu",))
    )
    r = loaded.report
    assert (r.backend, r.provider, r.is_gpu, r.device) == (
        "onnxruntime",
        "CPUExecutionProvider",
        False,
        "cpu",
    )
    assert r.model_version == 7 and r.warnings == ()
    assert loaded.backend.input_shape == (12,)
    assert loaded.backend.run(sensor_model.batch(5)).shape == (5, 3)


@pytest.mark.skipif(HAS_CUDA_ORT, reason="hardware present: this device really has CUDA")
def test_gpu_profile_on_cpu_device_reports_fallback_warning(sensor_model) -> None:
    loaded = select_backend(sensor_model.artifacts(), RuntimeProfile())
    r = loaded.report
    assert r.provider == "CPUExecutionProvider"
    assert [a.outcome for a in r.attempts] == ["unavailable", "unavailable", "selected"]
    assert len(r.warnings) == 1 and r.warnings[0].startswith("GPU fallback")
    assert "CUDAExecutionProvider not available" in r.warnings[0]


@pytest.mark.skipif(HAS_CUDA_ORT, reason="hardware present: this device really has CUDA")
def test_ort_silently_dropping_cuda_is_caught_and_reported(sensor_model) -> None:
    # Claim CUDA is there: onnxruntime itself then falls back to CPU without raising; the
    # backend must notice from the session's active providers, not trust the request.
    caps = dataclasses.replace(
        CAPS, ort_providers=("CUDAExecutionProvider", "CPUExecutionProvider")
    )
    profile = RuntimeProfile(preferred=("onnxruntime:cuda", "onnxruntime:cpu"))
    r = select_backend(sensor_model.artifacts(), profile, capabilities=caps).report
    assert r.attempts[0].outcome == "failed"
    assert "fell back from CUDAExecutionProvider" in r.attempts[0].reason
    assert r.provider == "CPUExecutionProvider"
    assert r.warnings and "GPU fallback" in r.warnings[0]


def test_cpu_fallback_can_be_forbidden(sensor_model) -> None:
    caps = DeviceCapabilities(ort_providers=("CPUExecutionProvider",))
    with pytest.raises(RuntimeBackendError, match="CPU fallback disabled"):
        select_backend(
            sensor_model.artifacts(),
            RuntimeProfile(preferred=("onnxruntime:cuda", "onnxruntime:cpu")),
            capabilities=caps,
            config=RuntimeConfig(allow_cpu_fallback=False),
        )


def test_broken_model_file_fails_over_to_next_candidate(sensor_model, tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx model")
    artifacts = ModelArtifacts(
        version=1, onnx=bad, state_dict=sensor_model.state_dict, model_name="sensor-mlp"
    )
    r = select_backend(artifacts, RuntimeProfile(preferred=("onnxruntime:cpu", "torch:cpu"))).report
    assert r.backend == "torch" and r.provider == "cpu"
    assert r.attempts[0].outcome == "failed" and "cannot load bad.onnx" in r.attempts[0].reason
    assert r.warnings and r.warnings[0].startswith("runtime fallback to torch:cpu")


def test_nothing_loadable_raises_with_every_reason(tmp_path: Path) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x00")
    with pytest.raises(RuntimeBackendError) as info:
        select_backend(
            ModelArtifacts(version=1, onnx=bad),
            RuntimeProfile(preferred=("onnxruntime:cpu", "torch:cpu", "tflite:cpu")),
        )
    text = str(info.value)
    assert "no state_dict artifact" in text and "no TFLite artifact" in text


def test_profile_validation_and_aliases() -> None:
    p = RuntimeProfile.from_providers(["TensorrtExecutionProvider", "cuda", "cpu", "tflite"])
    assert p.preferred == (
        "onnxruntime:tensorrt",
        "onnxruntime:cuda",
        "onnxruntime:cpu",
        "tflite:cpu",
    )
    with pytest.raises(AgentConfigError):
        RuntimeProfile(preferred=("onnxruntime:npu",))
    with pytest.raises(AgentConfigError):
        ModelArtifacts(version=1)


def test_tensorrt_needs_cache_dir_and_cache_key_names_gpu_and_version(sensor_model) -> None:
    key = tensorrt_cache_key("NVIDIA Orin (nvgpu)", "10.3.0")
    assert key == "NVIDIA_Orin_nvgpu_-trt10.3.0"
    assert tensorrt_cache_key("NVIDIA H200", "10.3.0") != tensorrt_cache_key(
        "NVIDIA H200", "10.4.0"
    )
    caps = DeviceCapabilities(
        ort_providers=("TensorrtExecutionProvider", "CPUExecutionProvider"), gpu_name="X"
    )
    r = select_backend(
        sensor_model.artifacts(),
        RuntimeProfile(preferred=("onnxruntime:tensorrt", "onnxruntime:cpu")),
        capabilities=caps,
    ).report
    assert r.attempts[0].reason == "no TensorRT engine cache directory configured"


@pytest.mark.parametrize("fixture", ["sensor_model", "digits_model"])
def test_inference_parity_onnxruntime_vs_torch(fixture: str, request) -> None:
    model = request.getfixturevalue(fixture)
    x = model.batch(16, seed=3)
    ort_out = select_backend(
        model.artifacts(), RuntimeProfile(preferred=("onnxruntime:cpu",))
    ).backend.run(x)
    torch_loaded = select_backend(model.artifacts(), RuntimeProfile(preferred=("torch:cpu",)))
    assert torch_loaded.report.backend == "torch"
    torch_out = torch_loaded.backend.run(x)
    np.testing.assert_allclose(ort_out, torch_out, rtol=1e-4, atol=1e-5)
    assert (ort_out.argmax(1) == torch_out.argmax(1)).all()


def test_runtime_package_does_not_import_torch() -> None:
    import subprocess
    import sys

    code = (
        "import sys, edge_agent.runtime, edge_agent.serving.stack, edge_agent.commands.infer;"
        "sys.exit(1 if 'torch' in sys.modules or 'flwr' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA_ORT, reason="no GPU: needs onnxruntime with CUDA")
def test_gpu_onnxruntime_cuda_selected_and_matches_cpu(sensor_model) -> None:
    x = sensor_model.batch(8)
    gpu = select_backend(sensor_model.artifacts(), RuntimeProfile(preferred=("onnxruntime:cuda",)))
    assert gpu.report.is_gpu and gpu.report.provider == "CUDAExecutionProvider"
    assert gpu.report.device == CAPS.gpu_name
    cpu = select_backend(sensor_model.artifacts(), RuntimeProfile(preferred=("onnxruntime:cpu",)))
    np.testing.assert_allclose(gpu.backend.run(x), cpu.backend.run(x), rtol=1e-3, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_TORCH_CUDA, reason="no GPU: needs torch with CUDA")
def test_gpu_torch_cuda_selected(sensor_model) -> None:
    loaded = select_backend(sensor_model.artifacts(), RuntimeProfile(preferred=("torch:cuda",)))
    assert loaded.report.is_gpu and loaded.report.provider == "cuda"
    assert loaded.backend.run(sensor_model.batch(4)).shape == (4, 3)


def test_profiles_from_the_repository_build_profiles() -> None:
    import tomllib

    root = Path(__file__).resolve().parents[2] / "firmware_bundles"
    loaded = {
        p.stem: RuntimeProfile.from_build_profile(tomllib.loads(p.read_text()))
        for p in sorted(root.glob("*.toml"))
    }
    if "jetson-orin" in loaded:
        assert loaded["jetson-orin"].preferred[:2] == ("onnxruntime:tensorrt", "onnxruntime:cuda")
        assert loaded["jetson-orin"].trt_fp16
    if "rpi4" in loaded:
        assert loaded["rpi4"].preferred == ("tflite:cpu",)
    if "x86-cpu" in loaded:
        assert loaded["x86-cpu"].preferred == ("onnxruntime:cpu",)
    with pytest.raises(AgentConfigError):
        RuntimeProfile.from_build_profile({"runtime": {}})


def test_smoke_check_passes_a_good_model_and_refuses_a_broken_one(
    sensor_model, tmp_path: Path
) -> None:
    from edge_agent.runtime import smoke_check

    report = smoke_check(
        ModelArtifacts.from_model_file(sensor_model.onnx, version=2),
        RuntimeProfile(preferred=("onnxruntime:cpu",)),
    )
    assert report.provider == "CPUExecutionProvider" and report.model_version == 2
    bad = tmp_path / "model.onnx"
    bad.write_bytes(sensor_model.onnx.read_bytes()[:200])  # truncated download
    with pytest.raises(RuntimeBackendError):
        smoke_check(ModelArtifacts.from_model_file(bad, version=3))
