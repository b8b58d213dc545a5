"""``cloud-hub publish BUNDLE --devices a,b | --class CLASS``: deliver a bundle to the fleet."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cloud_hub.bundles.trust import HubTrust, verify_hub_bundle
from cloud_hub.commands.options import (
    BROKER_KEYS,
    add_hub_options,
    add_key_store_options,
    hub_config_from_args,
    key_store_dir,
)
from cloud_hub.delivery import DeliveryState, FleetPublisher, PublisherConfig
from cloud_hub.errors import HubConfigError
from cloud_hub.keys import KeyStore
from shared.bundle import VerifiedBundle
from shared.chunks import DEFAULT_CHUNK_SIZE
from shared.errors import BundleError

__all__ = ["register"]


def _verified(data: bytes, path: Path, keys_dir: Path) -> VerifiedBundle:
    """The bundle as a device will check it, against this hub's trust root and the keyring
    it publishes now: a tampered, truncated or foreign bundle never reaches the broker."""
    try:
        trust = HubTrust.of(KeyStore(keys_dir))  # HubConfigError without a key store
    except OSError as exc:
        raise HubConfigError(f"cannot read the hub's keys in {keys_dir}: {exc}") from exc
    try:
        return verify_hub_bundle(data, trust)
    except BundleError as exc:
        raise HubConfigError(
            f"refusing to publish {path}: it does not verify against the hub's trust in "
            f"{keys_dir} ({type(exc).__name__}: {exc})"
        ) from exc


def _registry_devices(url: str, device_class: str) -> list[str]:
    """Every device of ``device_class`` the hub registry knows (online or not: offline ones
    catch up through their outbox and chunk requests when they return)."""
    from cloud_hub.registry import devices, open_registry

    registry = open_registry(url)
    try:
        with registry.session() as session:
            return devices.select_device_ids(session, device_class=device_class)
    finally:
        registry.close()


def _publish(args: argparse.Namespace) -> int:
    path: Path = args.bundle
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HubConfigError(f"cannot read bundle {path}: {exc}") from exc
    bundle_class = _verified(data, path, key_store_dir(args)).manifest.device_class
    if args.devices is None and args.device_class is None:
        raise HubConfigError("give --devices a,b,... or --class CLASS")
    if args.device_class is not None and args.device_class != bundle_class:
        raise HubConfigError(
            f"the bundle targets class {bundle_class!r}, not {args.device_class!r}"
        )
    hub = hub_config_from_args(args)
    config = PublisherConfig(
        broker=hub.mqtt,
        prefix=hub.topic_prefix,
        chunk_size=args.chunk_size,
        start_grace_s=args.start_grace,
    )
    with FleetPublisher(config) as pub:
        if args.devices is not None:
            devices = [d.strip() for d in args.devices.split(",") if d.strip()]
        elif args.registry_url:
            devices = _registry_devices(args.registry_url, args.device_class)
            print(f"registry lists {len(devices)} device(s) of class {args.device_class}")
            if not devices:
                return 1
        else:
            found = pub.discover(device_class=args.device_class, wait_s=args.discover_s)
            devices = [d.device_id for d in found]
            print(
                f"discovered {len(devices)} online device(s) of class {args.device_class}: "
                f"{', '.join(devices) or '-'}"
            )
            if not devices:
                return 1
        started = time.monotonic()
        dep = pub.deploy(data, devices, deployment_id=args.deployment_id)
        print(
            f"deployment {dep.deployment_id}: bundle {dep.bundle_id[:16]} "
            f"({len(data)} bytes) offered to {len(devices)} device(s); chunks published"
        )
        if args.wait is None:
            print("not waiting (--wait SECONDS to track devices and answer their repair requests)")
            return 0
        result = dep.wait(timeout=args.wait)
        elapsed = time.monotonic() - started
    summary = {
        "deployment_id": result.deployment_id,
        "bundle_id": result.bundle_id,
        "devices": {d: p.state.value for d, p in sorted(result.devices.items())},
        "counts": result.summary(),
        "chunks_published": result.chunks_published,
        "repairs_sent": result.repairs_sent,
        "elapsed_s": round(elapsed, 3),
    }
    for device_id, progress in sorted(result.devices.items()):
        detail = (
            f" ({progress.detail})"
            if progress.detail and progress.state is not DeliveryState.COMMITTED
            else ""
        )
        print(f"  {device_id}: {progress.state.value}{detail}")
    print(json.dumps(summary, sort_keys=True), file=sys.stdout)
    return 0 if result.all_committed else 1


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("publish", help="deliver a signed bundle to devices over MQTT")
    p.add_argument("bundle", type=Path, help="bundle file (.ffb) from `cloud-hub bundle build`")
    add_key_store_options(p)  # the key store whose trust the bundle must verify against
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("--devices", help="comma-separated device ids")
    target.add_argument(
        "--class", dest="device_class", help="every online device of this class (discovered)"
    )
    add_hub_options(p, BROKER_KEYS)  # the broker as `serve` reaches it (TLS files included)
    p.add_argument(
        "--registry-url",
        default=None,
        help="with --class: take the devices from the hub registry (sqlite:///PATH or "
        "postgresql+psycopg://...) instead of discovering them on the broker",
    )
    p.add_argument("--deployment-id", default=None)
    p.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE)
    p.add_argument(
        "--start-grace",
        type=float,
        default=5.0,
        help="seconds to wait for devices to subscribe before chunks fly",
    )
    p.add_argument(
        "--discover-s", type=float, default=2.0, help="with --class: how long to listen for devices"
    )
    p.add_argument(
        "--wait",
        type=float,
        nargs="?",
        const=600.0,
        default=None,
        metavar="SECONDS",
        help="wait until every device committed/failed (default 600 s when given)",
    )
    p.set_defaults(func=_publish)
