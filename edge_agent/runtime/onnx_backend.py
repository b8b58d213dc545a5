"""onnxruntime backend: TensorRT, CUDA or CPU execution provider.

A requested GPU provider that onnxruntime silently replaces by CPU (missing CUDA libraries,
driver mismatch) is detected from ``session.get_providers()`` and raised as a failure, so the
selector reports it instead of running on CPU unnoticed.

TensorRT engines are specific to the GPU model and TensorRT version: the engine cache lives
in ``<cache_dir>/<gpu>-trt<version>/`` and the time of a cold build is reported.
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import RuntimeBackendError
from edge_agent.runtime._memory import release_free_memory
from edge_agent.runtime.base import InferenceBackend

__all__ = ["ORT_DTYPES", "OnnxRuntimeBackend", "tensorrt_cache_key"]

ORT_DTYPES: dict[str, type[np.generic]] = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
}
_GPU_PROVIDERS = {"TensorrtExecutionProvider", "CUDAExecutionProvider"}


def tensorrt_cache_key(gpu_name: str | None, tensorrt_version: str | None) -> str:
    """A file-system-safe key: engines are reusable only on the same GPU and TensorRT."""
    raw = f"{gpu_name or 'unknown-gpu'}-trt{tensorrt_version or 'unknown'}"
    return re.sub(r"[^A-Za-z0-9._-]+", "_", raw).strip("_")


class OnnxRuntimeBackend(InferenceBackend):
    """An ``onnxruntime.InferenceSession`` on one primary execution provider."""

    backend = "onnxruntime"

    def __init__(
        self,
        model_path: Path,
        *,
        provider: str,
        intra_op_threads: int = 0,
        engine_cache_dir: Path | None = None,
        gpu_name: str | None = None,
        tensorrt_version: str | None = None,
        trt_fp16: bool = False,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.log_severity_level = 3  # our own report says what happened
        providers: list[Any] = []
        cold_build = False
        if provider == "TensorrtExecutionProvider":
            key = tensorrt_cache_key(gpu_name, tensorrt_version)
            if engine_cache_dir is None:
                raise RuntimeBackendError("TensorRT needs an engine cache directory")
            cache = engine_cache_dir / key
            cache.mkdir(parents=True, exist_ok=True)
            cold_build = not any(cache.glob("*.engine"))
            self.engine_cache_key = key
            self.engine_cache_hit = not cold_build
            providers.append(
                (
                    provider,
                    {
                        "trt_engine_cache_enable": True,
                        "trt_engine_cache_path": str(cache),
                        "trt_timing_cache_enable": True,
                        "trt_timing_cache_path": str(cache),
                        "trt_fp16_enable": trt_fp16,
                    },
                )
            )
            providers.append("CUDAExecutionProvider")
        elif provider != "CPUExecutionProvider":
            providers.append(provider)
        providers.append("CPUExecutionProvider")
        started = time.perf_counter()
        try:
            with warnings.catch_warnings():
                # "provider not available" warnings: the check below turns them into a report
                warnings.simplefilter("ignore")
                self._session = ort.InferenceSession(
                    str(model_path), sess_options=options, providers=providers
                )
        except Exception as exc:  # ORT raises its own (Fail, InvalidGraph, ...) and RuntimeError
            raise RuntimeBackendError(f"onnxruntime cannot load {model_path.name}: {exc}") from exc
        active = self._session.get_providers()
        if not active or active[0] != provider:
            raise RuntimeBackendError(
                f"onnxruntime fell back from {provider} to {active[0] if active else 'nothing'}"
            )
        self.provider = provider
        self.is_gpu = provider in _GPU_PROVIDERS
        inp = self._session.get_inputs()[0]
        self._input_name = inp.name
        self._output_name = self._session.get_outputs()[0].name
        dims = list(inp.shape)
        self._fixed_batch = dims[0] if isinstance(dims[0], int) else None
        if not all(isinstance(d, int) for d in dims[1:]):
            raise RuntimeBackendError(f"model input {inp.name} has dynamic non-batch dims {dims}")
        self.input_shape = tuple(int(d) for d in dims[1:])
        if inp.type not in ORT_DTYPES:
            raise RuntimeBackendError(f"unsupported model input type {inp.type}")
        self.input_dtype = np.dtype(ORT_DTYPES[inp.type])
        if cold_build:
            # TensorRT builds engines on the first run: time it here, not on a user request
            self.run(np.zeros((1, *self.input_shape), dtype=self.input_dtype))
            self.engine_build_seconds = time.perf_counter() - started

    def run(self, x: NDArray[Any]) -> NDArray[np.float32]:
        if self._fixed_batch == 1 and x.shape[0] != 1:
            parts = [self._run_one(x[i : i + 1]) for i in range(x.shape[0])]
            return np.concatenate(parts, axis=0)
        return self._run_one(x)

    def _run_one(self, x: NDArray[Any]) -> NDArray[np.float32]:
        out = self._session.run([self._output_name], {self._input_name: x})[0]
        return np.asarray(out, dtype=np.float32)

    def close(self) -> None:
        # the C++ session is freed with its last Python reference
        del self._session
        release_free_memory()
