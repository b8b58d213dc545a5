"""A whole device: ``EdgeAgent`` (OTA, reports) + ``InferenceStack`` (local prediction API).

``edge-agent run --serve`` runs this; plain ``edge-agent run`` runs the OTA/report loop alone
(e.g. a device whose applications embed their own runtime). The parts are composed through
the agent's documented plug-in points and nothing else:

- :meth:`EdgeAgent.on_model_changed` → load the committed slot's ONNX model and its drift
  reference (``reference_stats`` artifact) into the stack (hot swap);
- :meth:`EdgeAgent.add_reporter` → publish the stack's drift windows as ``DriftReport`` and
  its telemetry as ``Telemetry`` (the rollout gates read them);
- :meth:`EdgeAgent.add_status_fields` → runtime/provider of the loaded backend.

- a ``TrainCommand`` starts a Flower SuperNode on this device's sample store
  (``edge_agent.fl.train_command``).

Run as ``edge-agent run --serve --config agent.toml [--api-port N]`` (or
``python -m edge_agent.device``); prints one JSON line ``{"api_url": ...}`` once serving.
SIGTERM/SIGINT stop it cleanly, and it stops when its parent dies (``--exit-with-parent``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

__all__ = ["EdgeDevice", "main", "run_device"]

log = logging.getLogger(__name__)


class EdgeDevice:
    """One agent plus its inference stack, sharing the agent's state directory."""

    def __init__(
        self,
        config_path: Path,
        *,
        api_port: int = 0,
        drift_window: int = 200,
        report_interval_s: float = 1.0,
        allow_insecure_training: bool = False,
    ) -> None:
        from edge_agent.agent import EdgeAgent
        from edge_agent.config import load_config
        from edge_agent.drift.detector import DriftConfig
        from edge_agent.fl.train_command import OrderTrust, TrainCommandHandler, TrainingLimits
        from edge_agent.samples.store import SampleStoreConfig
        from edge_agent.serving.http_api import HttpApiConfig
        from edge_agent.serving.observers import ObserverConfig
        from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
        from edge_agent.telemetry.collector import TelemetryConfig
        from shared.messages import TrainCommand

        self.config = load_config(config_path)
        self.agent = EdgeAgent(self.config)
        state = self.config.state_dir
        self.stack = InferenceStack(
            InferenceStackConfig(
                drift=DriftConfig(window_size=drift_window),
                observers=ObserverConfig(sample_rate=0.0, flush_interval_s=0.05),
                telemetry=TelemetryConfig(interval_s=max(1.0, report_interval_s)),
                api=HttpApiConfig(port=api_port),
                samples=SampleStoreConfig(path=state / "samples.db"),
            )
        )
        self._model_name = ""
        self._seq = 0
        # Flower's Deployment Engine path: a signed training order starts a SuperNode on
        # this device's sample store, over TLS verified against the hub CA pinned at
        # enrollment (a plain-text SuperLink only when explicitly allowed) (R4)
        updater = self.agent.updater
        self.trainer = TrainCommandHandler(
            state_dir=state,
            load_samples=self._training_arrays,
            trust=OrderTrust(
                device_id=self.config.device_id,
                trust=self.config.load_trust_root(),
                keyring_floor=lambda: updater.trusted.keyring_floor,
            ),
            limits=TrainingLimits(
                allow_insecure=allow_insecure_training,
                root_certificates=self.config.superlink_ca,
                require_secure_aggregation=self.config.training.require_secure_aggregation,
            ),
            report=self.agent.report,
        )
        self.agent.add_command_handler(TrainCommand, self.trainer)
        self.agent.on_model_changed(self._install)
        self.agent.add_reporter(report_interval_s, self._reports)
        self.agent.add_status_fields(self._status_fields)

    def _training_arrays(self, limit: int) -> tuple[Any, Any]:
        store = self.stack.store
        if store is None:
            raise RuntimeError("no sample store")
        return store.load_training_arrays(limit=limit)

    def _install(self, slot: Any) -> None:
        from edge_agent.runtime.base import ModelArtifacts
        from shared.drift_reference import ReferenceStats

        if slot is None:
            return
        model = slot.artifact_path("model")
        if model is None:
            log.warning("slot %s has no model artifact", slot.name)
            return
        ref_path = slot.artifact_path("reference_stats")
        reference = None if ref_path is None else ReferenceStats.from_json(ref_path.read_bytes())
        report = self.stack.install(
            ModelArtifacts.from_model_file(model, version=slot.meta.version), reference=reference
        )
        self._model_name = slot.meta.model_name
        log.info("serving %s v%d on %s", self._model_name, slot.meta.version, report.to_dict())

    def _reports(self) -> Iterable[Any]:
        out: list[Any] = []
        for window in self.stack.drain_drift_reports():
            out.append(
                window.to_message(device_id=self.config.device_id, model_name=self._model_name)
            )
        if self.stack.server.report is not None:
            self._seq += 1
            out.append(
                self.stack.telemetry().to_message(device_id=self.config.device_id, seq=self._seq)
            )
        return out

    def _status_fields(self) -> Mapping[str, Any]:
        report = self.stack.server.report
        if report is None:
            return {}
        return {"runtime": report.backend, "provider": report.provider}

    def start(self) -> str:
        self.stack.start()
        self.agent.start()
        return self.stack.api_url or ""

    def stop(self) -> None:
        self.trainer.stop()
        self.agent.stop()
        self.stack.stop()


def run_device(
    config: Path,
    *,
    api_port: int = 0,
    drift_window: int = 200,
    report_interval_s: float = 1.0,
    allow_insecure_training: bool = False,
    exit_with_parent: bool = False,
) -> int:
    """Run one device until SIGTERM/SIGINT (or its parent's death, if asked)."""
    device = EdgeDevice(
        config,
        api_port=api_port,
        drift_window=drift_window,
        report_interval_s=report_interval_s,
        allow_insecure_training=allow_insecure_training,
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    parent = os.getppid()

    def orphaned() -> None:  # a demo/test harness was killed (SIGKILL): do not outlive it
        while not stop.wait(1.0):
            if os.getppid() != parent:
                log.warning("parent process %d gone: stopping", parent)
                stop.set()

    if exit_with_parent:
        threading.Thread(target=orphaned, name="parent-watch", daemon=True).start()
    url = device.start()
    print(json.dumps({"api_url": url, "device_id": device.config.device_id}), flush=True)
    try:
        stop.wait()
    finally:
        device.stop()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_agent.device")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--api-port", type=int, default=0)
    p.add_argument("--drift-window", type=int, default=200)
    p.add_argument("--report-interval", type=float, default=1.0)
    p.add_argument("--allow-insecure-training", action="store_true")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    return run_device(
        args.config,
        api_port=args.api_port,
        drift_window=args.drift_window,
        report_interval_s=args.report_interval,
        allow_insecure_training=args.allow_insecure_training,
        exit_with_parent=True,
    )


if __name__ == "__main__":
    sys.exit(main())
