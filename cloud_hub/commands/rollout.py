"""``cloud-hub rollout create|start|status|pause|resume|abort|rollback|resolve`` over the hub's REST API.

The hub URL, API token and the CA that verifies an HTTPS hub come from
``--api``/``--token``/``--ca-file`` or, at this CLI boundary only, ``FEDFLEET_API`` /
``FEDFLEET_TOKEN`` / ``FEDFLEET_CA_FILE`` (the hub CA, ``DATA_DIR/ca/ca.crt``). ``create`` validates the configuration locally
(:class:`cloud_hub.rollout.RolloutConfig`) before sending it.

Examples::

    cloud-hub rollout create --bundle B --device-class rpi4 --label site=plant-3 \\
        --canary 2 --waves 10,50,100 --window 300 --start
    cloud-hub rollout status r-1a2b3c --watch
    cloud-hub rollout rollback r-1a2b3c --reason "accuracy complaints"
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from cloud_hub.errors import HubConfigError, HubError
from cloud_hub.rollout.config import (
    AbortRule,
    GateThresholds,
    RolloutConfig,
    StageSpec,
    parse_labels,
)
from shared.bundle import bundle_id_of, parse_bundle
from shared.errors import FedfleetError

__all__ = ["ApiClient", "build_config", "register"]

TERMINAL = ("done", "aborted", "rolled_back", "rollback_failed", "resolved")
MAX_RESPONSE_BYTES = 16 * 1024 * 1024


class ApiClient:
    """A minimal JSON client of the hub API (stdlib only: the CLI needs no extra package)."""

    def __init__(
        self, base_url: str, token: str, *, timeout_s: float = 30.0, ca_file: str | None = None
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise HubConfigError(f"--api must be an http(s) URL, got {base_url!r}")
        if not token:
            raise HubConfigError("an API token is required (--token or FEDFLEET_TOKEN)")
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout_s = timeout_s
        self._tls: ssl.SSLContext | None = None
        if ca_file:  # the hub CA: `serve --tls` certificates are not in the system store
            try:
                self._tls = ssl.create_default_context(cafile=ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise HubConfigError(f"cannot read the CA file {ca_file}: {exc}") from exc

    def request(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            f"{self.base_url}{path}",
            data=data,
            method=method,
            headers={
                "Authorization": f"Bearer {self.token}",
                "Accept": "application/json",
                **({"Content-Type": "application/json"} if data is not None else {}),
            },
        )
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s, context=self._tls) as resp:
                raw = resp.read(MAX_RESPONSE_BYTES)
        except urllib.error.HTTPError as exc:
            raise HubError(f"{method} {path}: HTTP {exc.code}: {_error_text(exc)}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise HubError(f"cannot reach the hub at {self.base_url}: {exc}") from exc
        try:
            return json.loads(raw) if raw else None
        except ValueError as exc:
            raise HubError(f"{method} {path}: the hub answered non-JSON") from exc


def _error_text(exc: urllib.error.HTTPError) -> str:
    try:
        body = json.loads(exc.read(65536))
    except (ValueError, OSError):
        return exc.reason or ""
    if isinstance(body, dict):
        for key in ("detail", "message", "error"):
            if isinstance(body.get(key), str):
                return str(body[key])
        return json.dumps(body)[:500]
    return str(body)[:500]


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise HubConfigError(f"--waves: {exc}") from exc


def bundle_id_argument(value: str) -> str:
    """``--bundle``: a bundle id, or a bundle file (``bundle build -o FILE``) to take it from.

    The id is read without verifying the signatures: the hub verifies the bundle itself.
    """
    if not value.endswith(".ffb"):
        return value
    try:
        data = Path(value).read_bytes()
    except OSError as exc:
        raise HubConfigError(f"--bundle {value}: {exc}") from exc
    try:
        return bundle_id_of(parse_bundle(data).manifest_envelope)
    except FedfleetError as exc:
        raise HubConfigError(f"--bundle {value} is not a bundle file: {exc}") from exc


def build_config(args: argparse.Namespace) -> RolloutConfig:
    """The rollout configuration from ``--config FILE`` and/or the individual flags."""
    base: dict[str, Any] = {}
    if args.config:
        try:
            base = json.loads(Path(args.config).read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise HubConfigError(f"--config {args.config}: {exc}") from exc
        if not isinstance(base, dict):
            raise HubConfigError(f"--config {args.config}: expected a JSON object")
    if args.bundle:
        base["bundle_id"] = bundle_id_argument(args.bundle)
    if args.device_class or args.label or args.device:
        target = dict(base.get("target") or {})
        if args.device_class:
            target["device_class"] = args.device_class
        if args.label:
            target["labels"] = parse_labels(args.label)
        if args.device:
            target["device_ids"] = list(args.device)
        base["target"] = target
    if args.canary is not None or args.canary_percent is not None or args.waves is not None:
        canary = (
            StageSpec(percent=args.canary_percent)
            if args.canary_percent is not None
            else StageSpec(count=args.canary if args.canary is not None else 1)
        )
        waves = _floats(args.waves) if args.waves is not None else [10.0, 50.0, 100.0]
        base["stages"] = [canary.to_dict(), *(StageSpec(percent=p).to_dict() for p in waves)]
    gates = dict(base.get("gates") or {})
    for flag, key in (
        ("min_install_success", "min_install_success"),
        ("max_error_rate", "max_error_rate"),
        ("max_p95_ratio", "max_p95_ratio"),
        ("max_drift_score", "max_drift_score"),
        ("max_accuracy_drop", "max_accuracy_drop"),
        ("min_feedback", "min_feedback"),
    ):
        value = getattr(args, flag)
        if value is not None:
            gates[key] = value
    if gates:
        base["gates"] = {**_defaults(GateThresholds()), **gates}
    if args.abort_percent is not None or args.abort_min_finished is not None:
        abort = {**_defaults(AbortRule()), **dict(base.get("abort") or {})}
        if args.abort_percent is not None:
            abort["failure_percent"] = args.abort_percent
        if args.abort_min_finished is not None:
            abort["min_finished"] = args.abort_min_finished
        base["abort"] = abort
    for flag, key in (
        ("window", "gate_window_s"),
        ("offline_timeout", "offline_timeout_s"),
        ("seed", "seed"),
        ("name", "name"),
    ):
        value = getattr(args, flag)
        if value is not None:
            base[key] = value
    if "target" not in base:
        raise HubConfigError("give --device-class (and optionally --label/--device) or --config")
    return RolloutConfig.from_dict(base)


def _defaults(obj: GateThresholds | AbortRule) -> dict[str, Any]:
    return dict(vars(obj))


def _client(args: argparse.Namespace) -> ApiClient:
    return ApiClient(
        args.api or os.environ.get("FEDFLEET_API", "http://127.0.0.1:8080"),
        args.token or os.environ.get("FEDFLEET_TOKEN", ""),
        ca_file=args.ca_file or os.environ.get("FEDFLEET_CA_FILE") or None,
    )


def _print_status(status: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=2, sort_keys=True))
        return
    print(
        f"{status.get('rollout_id')}  {status.get('phase') or status.get('state')}  "
        f"bundle {status.get('bundle_id')} (previous {status.get('previous_bundle_id')})"
    )
    if status.get("reason"):
        print(f"  reason: {status['reason']}")
    for stage in status.get("stages", []):
        counts = ", ".join(f"{k}={v}" for k, v in sorted(stage.get("targets", {}).items()))
        gate = stage.get("gate") or {}
        verdict = f"  gate {gate.get('verdict')}: {gate.get('reason')}" if gate else ""
        print(f"  {stage['name']:<8} {stage['state']:<8} {counts}{verdict}")


def _create(args: argparse.Namespace) -> int:
    cfg = build_config(args)
    client = _client(args)
    body: dict[str, Any] = {"config": cfg.to_dict()}
    if args.previous_bundle:
        body["previous_bundle_id"] = args.previous_bundle
    if args.id:
        body["rollout_id"] = args.id
    status = client.request("POST", "/api/v1/rollouts", body)
    if args.start:
        status = client.request("POST", f"/api/v1/rollouts/{status['rollout_id']}/start")
    _print_status(status, as_json=args.json)
    return 0


def _action(args: argparse.Namespace) -> int:
    client = _client(args)
    body = {"reason": args.reason} if getattr(args, "reason", None) else None
    status = client.request("POST", f"/api/v1/rollouts/{args.rollout_id}/{args.action}", body)
    _print_status(status, as_json=args.json)
    return 0


def _status(args: argparse.Namespace) -> int:
    client = _client(args)
    if not args.rollout_id:
        page = client.request("GET", "/api/v1/rollouts?limit=100")
        items = page.get("items", []) if isinstance(page, dict) else []
        if args.json:
            print(json.dumps(items, indent=2, sort_keys=True))
        for r in items if not args.json else []:
            print(f"{r['rollout_id']}  {r['state']:<12} bundle {r['bundle_id']}  {r['reason']}")
        return 0
    deadline = time.monotonic() + args.timeout
    while True:
        status = client.request("GET", f"/api/v1/rollouts/{args.rollout_id}")
        if not args.watch or status.get("state") in TERMINAL or time.monotonic() > deadline:
            break
        time.sleep(args.interval)
    _print_status(status, as_json=args.json)
    if args.watch and status.get("state") not in TERMINAL:
        print(f"still {status.get('state')} after {args.timeout:g} s", file=sys.stderr)
        return 1
    return 0


def _history(args: argparse.Namespace) -> int:
    moves = _client(args).request("GET", f"/api/v1/rollouts/{args.rollout_id}/history")
    if args.json:
        print(json.dumps(moves, indent=2, sort_keys=True))
        return 0
    for m in moves:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(m["ts"]))
        why = f"  {m['reason']}" if m["reason"] else ""
        print(f"{when}  {m['by']:<16} {m['from']} -> {m['to']}{why}")
    return 0


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--api", help="hub API base URL (default $FEDFLEET_API or :8080)")
    p.add_argument("--token", help="API token (default $FEDFLEET_TOKEN)")
    p.add_argument(
        "--ca-file",
        help="CA that verifies an HTTPS hub, e.g. hub-data/ca/ca.crt (default $FEDFLEET_CA_FILE)",
    )
    p.add_argument("--json", action="store_true", help="print the full JSON answer")


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("rollout", help="staged rollouts (over the hub's REST API)")
    sub = parser.add_subparsers(dest="rollout_command", required=True)

    create = sub.add_parser("create", help="create a rollout (draft); --start to start it")
    _common(create)
    create.add_argument("--config", help="JSON file with a full rollout configuration")
    create.add_argument("--bundle", help="bundle id, or the .ffb file, to roll out")
    create.add_argument("--device-class", help="target device class")
    create.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    create.add_argument("--device", action="append", default=[], help="explicit device id")
    create.add_argument("--canary", type=int, help="canary device count (default 1)")
    create.add_argument("--canary-percent", type=float, help="canary as a percentage")
    create.add_argument("--waves", help="cumulative wave percentages, e.g. 10,50,100")
    create.add_argument("--window", type=float, help="gate window in seconds")
    create.add_argument("--offline-timeout", type=float, help="seconds before offline counts")
    create.add_argument("--seed", type=int, help="seed of the wave draw")
    create.add_argument("--name", help="a name for humans")
    create.add_argument("--min-install-success", type=float)
    create.add_argument("--max-error-rate", type=float)
    create.add_argument("--max-p95-ratio", type=float)
    create.add_argument("--max-drift-score", type=float)
    create.add_argument("--max-accuracy-drop", type=float)
    create.add_argument("--min-feedback", type=int)
    create.add_argument("--abort-percent", type=float, help="abort rule: failure percentage")
    create.add_argument("--abort-min-finished", type=int, help="abort rule: minimum finished")
    create.add_argument("--previous-bundle", help="rollback target (default: newest older)")
    create.add_argument("--id", help="rollout id (default: generated)")
    create.add_argument("--start", action="store_true", help="start it right away")
    create.set_defaults(func=_create)

    for action, text in (
        ("start", "draw the waves and start the canary"),
        ("pause", "stop deploying (in-flight devices finish)"),
        ("resume", "continue a paused rollout"),
        ("abort", "stop for good; devices stay where they are"),
        ("rollback", "roll every device that got the bundle back (again, after a failure)"),
        ("resolve", "close a rollout whose rollback failed (you took care of its devices)"),
    ):
        p = sub.add_parser(action, help=text)
        _common(p)
        p.add_argument("rollout_id")
        if action in ("pause", "abort", "rollback", "resolve"):
            p.add_argument("--reason", default="")
        p.set_defaults(func=_action, action=action)

    status = sub.add_parser("status", help="one rollout (or list them all)")
    _common(status)
    status.add_argument("rollout_id", nargs="?")
    status.add_argument("--watch", action="store_true", help="poll until it finishes")
    status.add_argument("--interval", type=float, default=2.0)
    status.add_argument("--timeout", type=float, default=3600.0)
    status.set_defaults(func=_status)

    history = sub.add_parser("history", help="every move of one rollout: when, who, why")
    _common(history)
    history.add_argument("rollout_id")
    history.set_defaults(func=_history)
