"""``edge-agent install`` and ``edge-agent uninstall``."""

from __future__ import annotations

import argparse
from pathlib import Path

from edge_agent.errors import AgentConfigError
from edge_agent.service.installer import InstallOptions, install, uninstall
from edge_agent.service.layout import InstallLayout

__all__ = ["parse_labels", "register"]


def parse_labels(items: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise AgentConfigError(f"invalid label {item!r}: use key=value")
        out[key.strip()] = value.strip()
    return out


def _token(args: argparse.Namespace) -> str:
    if args.token is not None:
        return str(args.token)
    try:
        return str(args.token_file.read_text(encoding="utf-8")).strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise AgentConfigError(f"cannot read --token-file {args.token_file}: {exc}") from exc


def _install(args: argparse.Namespace) -> int:
    opts = InstallOptions(
        hub_url=args.hub,
        token=_token(args),
        layout=InstallLayout(Path(args.prefix).resolve()),
        device_class=args.device_class,
        device_id=args.device_id,
        labels=parse_labels(args.labels),
        ca_cert=args.ca_cert,
        ca_fingerprint=args.ca_fingerprint,
        trust_root=args.trust_root,
        systemd=not args.no_systemd,
        require_gpu=not args.allow_cpu,
        timeout_s=args.timeout,
    )
    report = install(opts)
    for line in report.messages:
        print(line)
    print(f"config: {report.layout.config_path}")
    return 0


def _uninstall(args: argparse.Namespace) -> int:
    removed = uninstall(
        InstallLayout(Path(args.prefix).resolve()),
        systemd=not args.no_systemd,
        keep_state=args.keep_state,
    )
    print(f"removed {len(removed)} path(s)")
    for p in removed:
        print(f"  {p}")
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = subparsers.add_parser("install", help="enroll with the hub and install the agent")
    p.add_argument("--hub", required=True, help="hub URL, https://host:port")
    tok = p.add_mutually_exclusive_group(required=True)
    tok.add_argument("--token", help="single-use enrollment token")
    tok.add_argument(
        "--token-file", type=Path, help="read the token from a file (keeps it out of `ps`)"
    )
    trust = p.add_mutually_exclusive_group(required=True)
    trust.add_argument("--ca-fingerprint", help="sha256:... of the hub CA (from enroll-token)")
    trust.add_argument("--ca-cert", type=Path, help="the hub CA certificate (PEM)")
    p.add_argument("--class", dest="device_class", default=None, help="device class")
    p.add_argument("--device-id", default=None, help="requested device id (default: hub picks)")
    p.add_argument("--labels", nargs="*", default=[], metavar="K=V")
    p.add_argument("--trust-root", type=Path, default=None, help="trust_root.json to pin")
    p.add_argument("--prefix", default="/", help="install root (default /)")
    p.add_argument("--no-systemd", action="store_true", help="write the unit, do not enable it")
    p.add_argument(
        "--allow-cpu", action="store_true", help="on a Jetson, install even if no GPU backend"
    )
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout (s)")
    p.set_defaults(func=_install)

    u = subparsers.add_parser("uninstall", help="stop and remove the agent")
    u.add_argument("--prefix", default="/", help="install root (default /)")
    u.add_argument("--no-systemd", action="store_true", help="do not call systemctl")
    u.add_argument("--keep-state", action="store_true", help="keep models and samples")
    u.set_defaults(func=_uninstall)
