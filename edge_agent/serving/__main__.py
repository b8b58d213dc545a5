"""Run the inference stack alone: ``python -m edge_agent.serving --model m.onnx``.

Prints one JSON line ``{"url": ..., "runtime": {...}}`` when ready, then serves until
SIGINT/SIGTERM; telemetry is collected every ``--telemetry-interval`` seconds (logged).
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from pathlib import Path

from edge_agent.runtime.base import ModelArtifacts
from edge_agent.runtime.selection import RuntimeConfig, RuntimeProfile
from edge_agent.serving.http_api import HttpApiConfig
from edge_agent.serving.observers import ObserverConfig
from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
from edge_agent.telemetry.collector import TelemetryConfig
from shared.drift_reference import ReferenceStats

log = logging.getLogger("edge_agent.serving")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m edge_agent.serving")
    p.add_argument("--model", type=Path, required=True, help="ONNX (or .tflite) model file")
    p.add_argument("--version", type=int, default=1)
    p.add_argument("--reference", type=Path, help="reference stats JSON for drift detection")
    p.add_argument("--state-dir", type=Path, help="sample store / audit log folder")
    p.add_argument("--port", type=int, default=8787)
    p.add_argument("--unix-socket", type=Path)
    p.add_argument(
        "--allow-host",
        action="append",
        default=[],
        metavar="NAME",
        help="a name callers may use in the Host header besides loopback (repeatable)",
    )
    p.add_argument("--providers", default="onnxruntime:tensorrt,onnxruntime:cuda,onnxruntime:cpu")
    p.add_argument("--threads", type=int, default=0, help="onnxruntime intra-op threads")
    p.add_argument("--telemetry-interval", type=float, default=30.0)
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    state = args.state_dir
    config = InferenceStackConfig(
        runtime=RuntimeConfig(
            intra_op_threads=args.threads,
            engine_cache_dir=None if state is None else state / "trt-cache",
        ),
        observers=ObserverConfig(audit_path=None if state is None else state / "audit.jsonl"),
        telemetry=TelemetryConfig(interval_s=args.telemetry_interval),
        api=HttpApiConfig(
            port=args.port, unix_socket=args.unix_socket, allowed_hosts=tuple(args.allow_host)
        ),
        samples=None if state is None else InferenceStack.default_sample_store(state),
    )
    artifacts = ModelArtifacts.from_model_file(args.model, version=args.version)
    suffix = args.model.suffix.lower()
    providers = ["tflite:cpu"] if suffix == ".tflite" else args.providers.split(",")
    profile = RuntimeProfile.from_providers(providers)
    reference = (
        None if args.reference is None else ReferenceStats.from_json(args.reference.read_bytes())
    )
    stack = InferenceStack(config)
    report = stack.install(artifacts, profile=profile, reference=reference)
    stack.start()
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    print(json.dumps({"url": stack.api_url, "runtime": report.to_dict()}), flush=True)
    while not stop.wait(args.telemetry_interval):
        stack.release_memory()
        snap = stack.telemetry()
        log.info("telemetry %s warnings=%s", json.dumps(snap.metrics), list(snap.warnings))
        for drift in stack.drain_drift_reports():
            log.info("drift %s", json.dumps(drift.to_dict()))
    stack.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
