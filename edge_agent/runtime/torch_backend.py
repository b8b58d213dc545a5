"""torch backend: a ``shared.models`` architecture plus a ``state_dict`` artifact.

torch is imported lazily, only when this backend is tried, so ``fedfleet[agent]`` (torch-free)
can import the runtime package.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import RuntimeBackendError
from edge_agent.runtime.base import InferenceBackend

__all__ = ["TorchBackend"]


class TorchBackend(InferenceBackend):
    """Eager torch inference on ``cuda`` or ``cpu``."""

    backend = "torch"

    def __init__(self, state_dict: Path, *, model_name: str, device: str) -> None:
        try:
            import torch

            from shared.models import build_model, get_spec
        except ImportError as exc:
            raise RuntimeBackendError(f"torch is not installed: {exc}") from exc
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeBackendError("torch reports no CUDA device")
        try:
            model = build_model(model_name)
            model.load_state_dict(torch.load(state_dict, map_location="cpu", weights_only=True))
        except Exception as exc:  # unknown model name, wrong keys/shapes, corrupt file
            raise RuntimeBackendError(f"torch cannot load {state_dict.name}: {exc}") from exc
        self._torch = torch
        self._model = model.to(device).eval()
        self._device = torch.device(device)
        self._lock = threading.Lock()  # eager modules are not documented thread-safe
        self.provider = device
        self.is_gpu = device == "cuda"
        self.input_shape = tuple(get_spec(model_name).input_shape)
        self.input_dtype = np.dtype(np.float32)

    def run(self, x: NDArray[Any]) -> NDArray[np.float32]:
        torch = self._torch
        with self._lock, torch.inference_mode():
            out = self._model(torch.from_numpy(np.ascontiguousarray(x)).to(self._device))
            return np.asarray(out.float().cpu().numpy(), dtype=np.float32)

    def close(self) -> None:
        del self._model
        if self.is_gpu:
            self._torch.cuda.empty_cache()
