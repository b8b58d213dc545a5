"""``cloud-hub token create|list|revoke``: API tokens in the registry (no server needed)."""

from __future__ import annotations

import argparse
import time

from cloud_hub.commands.serve import add_config_arguments, load_config
from cloud_hub.registry import admin, open_registry

__all__ = ["register"]


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("token", help="manage API tokens (viewer < operator < admin)")
    actions = parser.add_subparsers(dest="token_command", required=True)

    create = actions.add_parser("create", help="create a token; prints the secret once")
    create.add_argument("--role", required=True, choices=admin.ROLES)
    create.add_argument("--name", default="", help="who or what uses it (default: ROLE-token)")
    add_config_arguments(create)
    create.set_defaults(func=_create)

    listing = actions.add_parser("list", help="list tokens (never their secrets)")
    add_config_arguments(listing)
    listing.set_defaults(func=_list)

    revoke = actions.add_parser("revoke", help="revoke a token by id")
    revoke.add_argument("token_id")
    add_config_arguments(revoke)
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    registry = open_registry(load_config(args).database_url)
    try:
        with registry.session() as s:
            record, secret = admin.create_token(
                s, name=args.name or f"{args.role}-token", role=args.role, now=time.time()
            )
            admin.record_audit(
                s,
                actor="cli",
                role="admin",
                action="CREATE",
                resource=f"token/{record.token_id}",
                status=0,
                detail={"name": record.name, "role": record.role},
                now=time.time(),
            )
    finally:
        registry.close()
    print(secret)
    return 0


def _list(args: argparse.Namespace) -> int:
    registry = open_registry(load_config(args).database_url)
    try:
        with registry.session() as s:
            for t in admin.list_tokens(s):
                state = "revoked" if t.revoked_at else "active"
                print(f"{t.token_id}  {t.role:<8}  {state:<7}  {t.name}")
    finally:
        registry.close()
    return 0


def _revoke(args: argparse.Namespace) -> int:
    registry = open_registry(load_config(args).database_url)
    try:
        with registry.session() as s:
            admin.revoke_token(s, args.token_id, now=time.time())
            admin.record_audit(
                s,
                actor="cli",
                role="admin",
                action="REVOKE",
                resource=f"token/{args.token_id}",
                status=0,
                now=time.time(),
            )
    finally:
        registry.close()
    print(f"revoked {args.token_id}")
    return 0
