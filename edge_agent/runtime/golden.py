"""The golden-batch check: before commit, run the bundle's golden batch on this device's
own runtime and refuse the install if it disagrees with what the hub measured.

The model is loaded exactly the way serving loads it (:func:`select_backend`: TensorRT,
CUDA, CPU kernels or LiteRT, whichever this device lands on), so a numerics difference the
hub could not see -- int8 kernels that saturate on a CPU without VNNI, a mis-quantized
artifact, a TensorRT engine built differently -- is caught here, on the device, and the
OTA updater rolls back and reports the measured figures (:class:`GoldenBatchRefusedError`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from edge_agent.errors import InstallError, RuntimeBackendError
from edge_agent.ota.slots import InstalledSlot
from edge_agent.runtime.base import InferenceBackend, ModelArtifacts
from edge_agent.runtime.capabilities import DeviceCapabilities
from edge_agent.runtime.selection import RuntimeConfig, RuntimeProfile, select_backend
from shared.bundle import parse_manifest
from shared.errors import FedfleetError
from shared.golden import GOLDEN_CHECK, GoldenBatch, GoldenVerdict, compare_golden

__all__ = ["GoldenBatchCheck", "GoldenBatchRefusedError", "golden_batch_of", "run_golden_batch"]

log = logging.getLogger(__name__)


class GoldenBatchRefusedError(InstallError):
    """The device's runtime disagrees with the golden batch; ``figures`` are the measurements
    (they go into the ``health_failed`` event)."""

    def __init__(self, verdict: GoldenVerdict, runtime: str) -> None:
        super().__init__(f"{verdict.describe()} on {runtime}")
        self.figures: dict[str, Any] = {
            "check": GOLDEN_CHECK,
            "runtime": runtime,
            **verdict.to_dict(),
        }


def golden_batch_of(slot: InstalledSlot) -> GoldenBatch | None:
    """The golden batch inside the slot's (already verified) signed manifest, if any."""
    try:
        return parse_manifest(slot.manifest_envelope).golden
    except (OSError, ValueError, FedfleetError) as exc:
        raise InstallError(f"installed manifest unreadable: {exc}") from exc


def run_golden_batch(backend: InferenceBackend, golden: GoldenBatch) -> GoldenVerdict:
    """Infer the golden inputs on ``backend`` one by one and compare (``ms``: inference +
    comparison)."""
    x = golden.input_array()
    if tuple(x.shape[1:]) != tuple(backend.input_shape):
        raise InstallError(
            f"golden batch inputs {list(x.shape[1:])} do not fit the model's "
            f"{list(backend.input_shape)}"
        )
    started = time.perf_counter()
    x = x.astype(backend.input_dtype, copy=False)
    try:
        # one sample per call, as requests arrive: models with a fixed batch of 1 (LiteRT
        # XNNPACK cannot resize them) run the golden batch too
        out = np.concatenate([backend.run(x[i : i + 1]) for i in range(len(x))])
    except Exception as exc:  # native runtimes raise their own types
        raise InstallError(f"golden batch inference failed: {exc}") from exc
    verdict = compare_golden(golden, np.asarray(out), ms=0.0)
    ms = (time.perf_counter() - started) * 1000.0
    return GoldenVerdict(
        verdict.samples, verdict.top1_agreement, verdict.max_abs_logit_error, verdict.tolerance, ms
    )


@dataclass
class GoldenBatchCheck:
    """Health check (see ``edge_agent.ota.health``): the golden batch on the serving runtime.

    A bundle without a golden batch (built by hand from a model file) passes with a log line:
    the hub's compression pipeline always adds one.
    """

    profile: RuntimeProfile | None = None
    capabilities: DeviceCapabilities | None = None
    config: RuntimeConfig | None = None

    def __call__(self, slot: InstalledSlot) -> None:
        golden = golden_batch_of(slot)
        if golden is None:
            log.info("bundle %s has no golden batch: not checked", slot.meta.bundle_id[:12])
            return
        model = slot.model_path
        if model is None or not model.is_file():
            raise InstallError("installed slot has no model file")
        artifacts = ModelArtifacts.from_model_file(model, version=slot.meta.version)
        try:
            loaded = select_backend(
                artifacts, self.profile, capabilities=self.capabilities, config=self.config
            )
        except RuntimeBackendError as exc:
            raise InstallError(f"golden batch: {exc}") from exc
        try:
            verdict = run_golden_batch(loaded.backend, golden)
        finally:
            loaded.backend.close()
        runtime = f"{loaded.report.candidate} ({loaded.report.device})"
        if not verdict.passed:
            raise GoldenBatchRefusedError(verdict, runtime)
        log.info("%s on %s in %.1f ms", verdict.describe(), runtime, verdict.ms)
