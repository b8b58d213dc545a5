"""TFLite backend through LiteRT (``ai_edge_litert``) or the older ``tflite_runtime``."""

from __future__ import annotations

import importlib
import threading
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from edge_agent.errors import RuntimeBackendError
from edge_agent.runtime.base import InferenceBackend

__all__ = ["TFLiteBackend"]


class TFLiteBackend(InferenceBackend):
    """A TFLite interpreter on CPU (one request at a time: interpreters are not thread-safe)."""

    backend = "tflite"
    provider = "cpu"

    def __init__(self, model_path: Path, *, module: str, threads: int | None = None) -> None:
        try:
            interpreter_mod = importlib.import_module(f"{module}.interpreter")
            self._interp = interpreter_mod.Interpreter(
                model_path=str(model_path), num_threads=threads
            )
            self._interp.allocate_tensors()
        except Exception as exc:  # ImportError, ValueError on a bad flatbuffer, ...
            raise RuntimeBackendError(f"{module} cannot load {model_path.name}: {exc}") from exc
        inp = self._interp.get_input_details()[0]
        self._in_index = int(inp["index"])
        self._out_index = int(self._interp.get_output_details()[0]["index"])
        self._batch = int(inp["shape"][0])
        self.input_shape = tuple(int(d) for d in inp["shape"][1:])
        self.input_dtype = np.dtype(inp["dtype"])
        self._lock = threading.Lock()

    def run(self, x: NDArray[Any]) -> NDArray[np.float32]:
        with self._lock:
            if x.shape[0] != self._batch:
                self._interp.resize_tensor_input(self._in_index, list(x.shape))
                self._interp.allocate_tensors()
                self._batch = x.shape[0]
            self._interp.set_tensor(self._in_index, np.ascontiguousarray(x))
            self._interp.invoke()
            return np.array(self._interp.get_tensor(self._out_index), dtype=np.float32)
