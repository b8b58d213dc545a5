"""``cloud-hub bundle build|list``: pack and sign model bundles."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from cloud_hub.bundles import (
    BundleSpec,
    build_bundle_from_dir,
    build_bundle_from_file,
    default_store,
)
from cloud_hub.commands.options import add_key_store_options, key_store_dir
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.files import atomic_write

__all__ = ["register"]


def _json_object(text: str | None, what: str) -> dict[str, Any]:
    if text is None:
        return {}
    source = text
    if not text.lstrip().startswith("{") and Path(text).is_file():
        source = Path(text).read_text("utf-8")
    try:
        value = json.loads(source)
    except ValueError as exc:
        raise HubConfigError(
            f"--{what} must be a JSON object or a file holding one: {exc}"
        ) from exc
    if not isinstance(value, dict):
        raise HubConfigError(f"--{what} must be a JSON object")
    return value


def _build(args: argparse.Namespace) -> int:
    if (args.model is None) == (args.from_dir is None):
        raise HubConfigError("give exactly one of --model FILE or --from-dir DIR")
    keys = KeyStore(key_store_dir(args))
    if args.output.resolve().is_relative_to(keys.directory.resolve()):
        raise HubConfigError(
            f"-o {args.output} is inside the key folder {keys.directory}, which holds secrets "
            "only; write the bundle elsewhere"
        )
    store = default_store(keys)
    spec = BundleSpec(
        model_name=args.name,
        device_class=args.device_class,
        version=args.version,
        expires_days=args.expires_days,
        metrics=_json_object(args.metrics, "metrics"),
        lineage=_json_object(args.lineage, "lineage"),
        profile=args.profile or "",
    )
    if args.model is not None:
        built = build_bundle_from_file(keys, store, spec, model_path=args.model)
    else:
        built = build_bundle_from_dir(keys, store, spec, directory=args.from_dir)
    out: Path = args.output
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, built.data)  # R15
    m = built.manifest
    print(
        f"built {out} ({len(built.data)} bytes): {m.model_name} v{m.version} for "
        f"{m.device_class}, {len(m.artifacts)} artifact(s), expires {m.expires}, "
        f"bundle id {built.bundle_id}; kept in {store.directory}"
    )
    return 0


def _list(args: argparse.Namespace) -> int:
    for e in default_store(KeyStore(key_store_dir(args))).entries():
        print(
            f"{e.model_name}\t{e.device_class}\tv{e.version}\t{e.size}\t{e.created}\t{e.bundle_id}"
        )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    bundle = subparsers.add_parser("bundle", help="build and list signed model bundles")
    sub = bundle.add_subparsers(dest="bundle_command", required=True)

    build = sub.add_parser("build", help="pack and sign a model bundle")
    add_key_store_options(build)
    build.add_argument("--model", type=Path, help="model file (ONNX; any file works)")
    build.add_argument("--from-dir", type=Path, help="a compression output folder")
    build.add_argument("--name", required=True, help="model name")
    build.add_argument("--version", type=int, required=True, help="must increase per model/class")
    build.add_argument("--class", dest="device_class", required=True, help="target device class")
    build.add_argument("--profile", help="build profile name (recorded in the manifest)")
    build.add_argument("--expires-days", type=float, default=30.0)
    build.add_argument("--metrics", help="JSON object (or a file) recorded in the manifest")
    build.add_argument("--lineage", help="JSON object (or a file): Flower run, rounds, data")
    build.add_argument("-o", "--output", type=Path, required=True, help="output .ffb file")
    build.set_defaults(func=_build)

    lst = sub.add_parser("list", help="list the bundles built so far")
    add_key_store_options(lst)
    lst.set_defaults(func=_list)
