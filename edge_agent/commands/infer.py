"""``edge-agent infer``: one prediction from the command line.

``--url`` sends the input to a running agent's local API; ``--model`` loads the model file
in-process (same backend selection and validation as the agent). The input file holds a
request body (``{"inputs": ...}`` or ``{"inputs_b64", "shape", "dtype"}``) or a bare array.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from edge_agent.errors import AgentConfigError, InferenceInputError

__all__ = ["register"]

MAX_INPUT_BYTES = 64 * 1024 * 1024


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("infer", help="run one prediction (local API or a model file)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--url", help="a running agent's local API, e.g. http://127.0.0.1:8787")
    src.add_argument("--model", type=Path, help="an .onnx or .tflite model file")
    p.add_argument(
        "--providers",
        default="onnxruntime:tensorrt,onnxruntime:cuda,onnxruntime:cpu",
        help="runtime preference for --model (comma-separated)",
    )
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("input", type=Path, help="JSON file with the input batch")
    p.set_defaults(func=run)


def _read_body(path: Path) -> dict[str, Any]:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise AgentConfigError(f"cannot read {path}: {exc}") from exc
    if len(raw) > MAX_INPUT_BYTES:
        raise AgentConfigError(f"{path} is larger than {MAX_INPUT_BYTES} bytes")
    try:
        data = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InferenceInputError(f"{path} is not JSON: {exc}") from exc
    return data if isinstance(data, dict) else {"inputs": data}


def _via_url(url: str, body: dict[str, Any], timeout: float) -> tuple[int, dict[str, Any]]:
    from edge_agent.serving.client import LocalApiClient, LocalApiClientConfig, LocalApiError

    with LocalApiClient(LocalApiClientConfig(url=url.rstrip("/"), timeout_s=timeout)) as client:
        try:
            return 200, client.predict_json(body)
        except LocalApiError as exc:  # the agent's JSON error body is the message
            return exc.status, exc.to_dict()


def _via_model(model: Path, providers: str, body: dict[str, Any]) -> dict[str, Any]:
    from edge_agent.runtime import ModelArtifacts, RuntimeProfile, select_backend
    from edge_agent.serving import ModelServer

    if not model.is_file():
        raise AgentConfigError(f"model file {model} not found")
    tflite = model.suffix.lower() == ".tflite"
    artifacts = ModelArtifacts.from_model_file(model, version=0)
    profile = RuntimeProfile.from_providers(["tflite:cpu"] if tflite else providers.split(","))
    server = ModelServer()
    loaded = select_backend(artifacts, profile)
    server.swap(loaded)
    try:
        result = server.predict_request(body).to_dict()
    finally:
        server.close()
    result["runtime"] = {
        "backend": loaded.report.backend,
        "provider": loaded.report.provider,
        "warnings": list(loaded.report.warnings),
    }
    return result


def run(args: argparse.Namespace) -> int:
    body = _read_body(args.input)
    if args.url:
        status, result = _via_url(args.url, body, args.timeout)
        print(json.dumps(result, indent=2))
        if status >= 400:
            message = result.get("error", {}).get("message", f"HTTP {status}")
            print(f"error: {message}", file=sys.stderr)
            return 1
        return 0
    print(json.dumps(_via_model(args.model, args.providers, body), indent=2))
    return 0
