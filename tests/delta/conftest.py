"""Real models for delta tests: train the digits CNN briefly, fine-tune, export fp32 and int8."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from shared.data import load_digits_dataset
from shared.models import build_model


def export_onnx(model: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(
        model,
        torch.zeros(1, 1, 8, 8),
        buf,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return buf.getvalue()


def quantize_int8(fp32: bytes, calib: np.ndarray) -> bytes:
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter([{"input": calib[i : i + 16]} for i in range(0, len(calib), 16)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._it, None)

    with tempfile.TemporaryDirectory() as d:
        src, dst = Path(d, "in.onnx"), Path(d, "out.onnx")
        src.write_bytes(fp32)
        quantize_static(
            str(src),
            str(dst),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            weight_type=QuantType.QInt8,
            activation_type=QuantType.QUInt8,
        )
        return dst.read_bytes()


def train(
    model: torch.nn.Module, x: np.ndarray, y: np.ndarray, *, steps: int, lr: float, seed: int
) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for _ in range(steps):
        idx = torch.randint(0, len(xt), (64,), generator=gen)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx]).backward()
        opt.step()


@dataclass(frozen=True)
class ModelVersions:
    base_fp32: bytes
    finetuned_fp32: bytes
    retrained_fp32: bytes
    base_int8: bytes
    finetuned_int8: bytes


def make_versions(*, base_steps: int = 150, finetune_steps: int = 10) -> ModelVersions:
    x, y = load_digits_dataset()
    model = build_model("digits-cnn", seed=0)
    train(model, x, y, steps=base_steps, lr=0.05, seed=1)
    base = export_onnx(model)
    # One federated round of fine-tuning: a few local steps at a small learning rate.
    train(model, x[:400], y[:400], steps=finetune_steps, lr=0.005, seed=2)
    finetuned = export_onnx(model)
    # A full retraining from the same initialisation on other data order.
    fresh = build_model("digits-cnn", seed=0)
    train(fresh, x, y, steps=base_steps, lr=0.05, seed=3)
    retrained = export_onnx(fresh)
    calib = x[:128]
    return ModelVersions(
        base_fp32=base,
        finetuned_fp32=finetuned,
        retrained_fp32=retrained,
        base_int8=quantize_int8(base, calib),
        finetuned_int8=quantize_int8(finetuned, calib),
    )


@pytest.fixture(scope="session")
def versions() -> ModelVersions:
    return make_versions()
