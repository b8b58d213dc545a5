"""``cloud-hub keys init|rotate|trust-root|status``: the hub's signing keys."""

from __future__ import annotations

import argparse
import json
from datetime import datetime, timezone

from cloud_hub.commands.options import add_key_store_options, key_store_dir
from cloud_hub.keys import KeyStore, KeyStoreConfig
from shared.errors import FedfleetError
from shared.freshness import parse_freshness

__all__ = ["register"]


def _init(args: argparse.Namespace) -> int:
    config = KeyStoreConfig(keyring_days=args.keyring_days, signing_key_days=args.key_days)
    store = KeyStore.init(key_store_dir(args), config=config, force=args.force)
    keyring = store.keyring()
    print(f"created key store in {store.directory}")
    print(f"  root key     {store.root_path} (keep it offline; it only signs keyrings)")
    print(f"  signing key  {', '.join(k[:16] for k in keyring.signing_keys)}")
    print(f"  keyring      version {keyring.version}, expires {keyring.expires}")
    print(f"  trust root   {store.trust_root_path} (pin it on devices)")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    store = KeyStore(key_store_dir(args))
    config = KeyStoreConfig(keyring_days=args.keyring_days, signing_key_days=args.key_days)
    new = store.rotate(config=config)
    keyring = store.keyring()
    print(
        f"new signing key {new.keyid[:16]}; revoked {len(keyring.revoked)} key(s); "
        f"keyring version {keyring.version}, expires {keyring.expires}"
    )
    return 0


def _status(args: argparse.Namespace) -> int:
    """What devices are told (R10): keyring version and expiry, last freshness document."""
    store = KeyStore(key_store_dir(args))
    keyring = store.keyring()  # HubConfigError (exit 2) if missing, expired or not verifying
    active = keyring.active_keys(datetime.now(timezone.utc))
    print(f"keyring      version {keyring.version}, expires {keyring.expires}")
    print(f"  active     {', '.join(k[:16] for k in active) or 'none'}")
    print(f"  revoked    {len(keyring.revoked)} key(s)")
    print(f"  root key   {'present (take it offline)' if store.root_path.exists() else 'offline'}")
    try:
        doc = parse_freshness(json.loads(store.freshness_path.read_text("utf-8")))
    except FileNotFoundError:
        print("freshness    none signed yet (`cloud-hub serve` signs and publishes it)")
        return 0
    except (ValueError, FedfleetError) as exc:
        print(f"freshness    {store.freshness_path} unreadable: {exc}")
        return 1
    print(f"freshness    version {doc.version}, issued {doc.issued}, expires {doc.expires}")
    for device_class, bundle in sorted(doc.released.items()):
        print(f"  released   {device_class}: {bundle.model_name} v{bundle.version}")
    return 0


def _trust_root(args: argparse.Namespace) -> int:
    print(
        json.dumps(KeyStore(key_store_dir(args)).trust_root().to_dict(), indent=2, sort_keys=True)
    )
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="manage the hub's signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    init = sub.add_parser("init", help="create root key, signing key and keyring v1")
    add_key_store_options(init)
    init.add_argument("--keyring-days", type=int, default=365, help="keyring expiry (days)")
    init.add_argument("--key-days", type=int, default=365, help="signing key expiry (days)")
    init.add_argument("--force", action="store_true", help="overwrite an existing key store")
    init.set_defaults(func=_init)

    rotate = sub.add_parser("rotate", help="new signing key, revoke the old, keyring version+1")
    add_key_store_options(rotate)
    rotate.add_argument("--keyring-days", type=int, default=365)
    rotate.add_argument("--key-days", type=int, default=365)
    rotate.set_defaults(func=_rotate)

    status = sub.add_parser("status", help="keyring expiry and the last freshness document")
    add_key_store_options(status)
    status.set_defaults(func=_status)

    trust = sub.add_parser("trust-root", help="print the TrustRoot JSON that devices pin")
    add_key_store_options(trust)
    trust.set_defaults(func=_trust_root)
