"""Where the model to compress comes from: a registered model name plus an fp32 state_dict.

``load_state_dict_file`` reads a ``.pt`` state_dict safely (``weights_only=True``) and turns
anything else — a text file, a pickled object, a truncated file — into ``CompressionError``.
``build_fp32_model`` instantiates the registry model and loads the weights strictly.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from cloud_hub.errors import CompressionError
from shared.errors import ConfigError
from shared.models import build_model

__all__ = ["MAX_WEIGHTS_BYTES", "build_fp32_model", "load_state_dict_file"]

MAX_WEIGHTS_BYTES = 512 * 1024 * 1024


def load_state_dict_file(path: Path) -> dict[str, torch.Tensor]:
    """Read a torch ``state_dict`` saved with ``torch.save``."""
    if not path.is_file():
        raise CompressionError(f"weights file {path} does not exist")
    if path.stat().st_size > MAX_WEIGHTS_BYTES:
        raise CompressionError(f"weights file {path} is larger than {MAX_WEIGHTS_BYTES} bytes")
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # UnpicklingError, RuntimeError (zip), EOFError, ...
        raise CompressionError(
            f"{path} is not a torch state_dict ({type(exc).__name__}: {exc})"
        ) from exc
    if (
        not isinstance(data, dict)
        or not data
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in data.items())
    ):
        raise CompressionError(f"{path} does not hold a state_dict (a mapping name -> tensor)")
    return data


def build_fp32_model(model_name: str, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """The registry model with ``state_dict`` loaded strictly, in eval mode."""
    try:
        model = build_model(model_name)
    except ConfigError as exc:
        raise CompressionError(str(exc)) from exc
    try:
        model.load_state_dict(state_dict, strict=True)
    except (RuntimeError, KeyError, TypeError) as exc:
        first = str(exc).strip().splitlines()[:3]
        raise CompressionError(
            f"the weights do not fit model {model_name!r}: {' '.join(first)}"
        ) from exc
    return model.float().eval()
