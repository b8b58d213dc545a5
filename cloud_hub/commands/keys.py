"""``cloud-hub keys init|rotate|trust-root``: the hub's signing keys."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cloud_hub.config import DEFAULT_DATA_DIR
from cloud_hub.keys import KeyStore, KeyStoreConfig

__all__ = ["DEFAULT_HUB_DIR", "add_dir_argument", "register"]

# Where ``cloud-hub serve`` looks by default (HubConfig: DATA_DIR/keys), so the two agree.
DEFAULT_HUB_DIR = DEFAULT_DATA_DIR / "keys"


def add_dir_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dir",
        type=Path,
        default=DEFAULT_HUB_DIR,
        help=f"key store directory (default {DEFAULT_HUB_DIR})",
    )


def _init(args: argparse.Namespace) -> int:
    config = KeyStoreConfig(keyring_days=args.keyring_days, signing_key_days=args.key_days)
    store = KeyStore.init(args.dir, config=config, force=args.force)
    keyring = store.keyring()
    print(f"created key store in {store.directory}")
    print(f"  root key     {store.root_path} (keep it offline; it only signs keyrings)")
    print(f"  signing key  {', '.join(k[:16] for k in keyring.signing_keys)}")
    print(f"  keyring      version {keyring.version}, expires {keyring.expires}")
    print(f"  trust root   {store.trust_root_path} (pin it on devices)")
    return 0


def _rotate(args: argparse.Namespace) -> int:
    store = KeyStore(args.dir)
    config = KeyStoreConfig(keyring_days=args.keyring_days, signing_key_days=args.key_days)
    new = store.rotate(config=config)
    keyring = store.keyring()
    print(
        f"new signing key {new.keyid[:16]}; revoked {len(keyring.revoked)} key(s); "
        f"keyring version {keyring.version}, expires {keyring.expires}"
    )
    return 0


def _trust_root(args: argparse.Namespace) -> int:
    print(json.dumps(KeyStore(args.dir).trust_root().to_dict(), indent=2, sort_keys=True))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = subparsers.add_parser("keys", help="manage the hub's signing keys")
    sub = keys.add_subparsers(dest="keys_command", required=True)

    init = sub.add_parser("init", help="create root key, signing key and keyring v1")
    add_dir_argument(init)
    init.add_argument("--keyring-days", type=int, default=365, help="keyring expiry (days)")
    init.add_argument("--key-days", type=int, default=365, help="signing key expiry (days)")
    init.add_argument("--force", action="store_true", help="overwrite an existing key store")
    init.set_defaults(func=_init)

    rotate = sub.add_parser("rotate", help="new signing key, revoke the old, keyring version+1")
    add_dir_argument(rotate)
    rotate.add_argument("--keyring-days", type=int, default=365)
    rotate.add_argument("--key-days", type=int, default=365)
    rotate.set_defaults(func=_rotate)

    trust = sub.add_parser("trust-root", help="print the TrustRoot JSON that devices pin")
    add_dir_argument(trust)
    trust.set_defaults(func=_trust_root)
