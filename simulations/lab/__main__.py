"""``python -m simulations.lab up|down|clean|status`` (root, Linux network namespaces).

- ``up``: build the lab and keep it running in the foreground; Ctrl-C (or SIGTERM, or
  ``down`` from another shell) stops every process and removes every namespace and link.
  ``--cut DEV`` / ``--cap DEV=KBIT`` / ``--shape DEV=MS[/LOSS]`` start with link faults.
- ``down``: stop the running ``up`` (SIGTERM to the pid it recorded), then remove leftovers.
- ``clean``: remove what a crashed lab left (processes in its namespaces, namespaces, links).
- ``status``: list the lab's namespaces and links that exist now.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from simulations.lab import netns
from simulations.lab.fleet import FleetLab, LabConfig, LabError
from simulations.lab.plan import DEFAULT_PREFIX, DEFAULT_SUBNET, MAX_DEVICES, LabPlanError
from simulations.lab.relay import LinkShape


def _pid_file(prefix: str) -> Path:
    return Path("/run") / f"fedfleet-lab-{prefix}.pid"


def _on_stop_signal(_sig: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # the same orderly teardown as Ctrl-C


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    try:
        os.kill(pid, 0)
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (ProcessLookupError, FileNotFoundError):
        return False
    return state != "Z"


def cmd_up(args: argparse.Namespace) -> int:
    # installed explicitly: a shell starts background jobs with SIGINT ignored, and Python
    # then never turns Ctrl-C into KeyboardInterrupt
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _on_stop_signal)
    shaped = {}
    for spec in args.shape:  # DEV=DELAY_MS[/LOSS]
        device, _, rest = spec.partition("=")
        delay, _, loss = rest.partition("/")
        shaped[device] = LinkShape(delay_ms=float(delay), loss=float(loss or 0))
    config = LabConfig(
        root=Path(args.root),
        devices=args.devices,
        prefix=args.prefix,
        subnet=args.subnet,
        shaped=shaped,
    )
    pid_file = _pid_file(args.prefix)
    pid_file.write_text(str(os.getpid()), encoding="utf-8")  # `down` may stop a start-up too
    try:
        with FleetLab(config) as lab:
            for device in args.cut:
                lab.cut(device)
            for spec in args.cap:
                device, _, kbit = spec.partition("=")
                lab.cap(device, int(kbit))
            print(f"lab up: {len(lab.plan.devices)} devices on {lab.plan.subnet}", flush=True)
            for h in lab.plan.hosts:
                print(f"  {h.name:<10} {h.address:<15} ip netns exec {h.netns} ...")
            print(f"  hub API    {lab.api_url} (CA {lab.ca_file})")
            token_file = lab.root / "operator.token"
            token_file.touch(mode=0o600)
            token_file.write_text(lab.operator_token + "\n", encoding="utf-8")
            print(f"  operator API token in {token_file}")
            print("Ctrl-C (or `python -m simulations.lab down`) stops it", flush=True)
            while all(p.alive() for p in lab.processes):
                time.sleep(1)
            dead = [p.name for p in lab.processes if not p.alive()]
            print(f"lab: {', '.join(dead)} exited; stopping (logs in {lab.logs})")
            return 1
    except KeyboardInterrupt:
        print("lab stopped and removed")
        return 0
    finally:
        pid_file.unlink(missing_ok=True)


def cmd_down(args: argparse.Namespace) -> int:
    pid_file = _pid_file(args.prefix)
    if pid_file.exists():
        pid = int(pid_file.read_text().strip())
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)  # `up` tears down in order, as on Ctrl-C
        deadline = time.monotonic() + 90
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
    return cmd_clean(args)


def cmd_clean(args: argparse.Namespace) -> int:
    found = netns.clean(args.prefix)
    print(f"removed {found.describe()}" if found else "nothing to clean")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    found = netns.find_leftovers(args.prefix)
    print(found.describe() if found else "no lab")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m simulations.lab",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prefix", default=DEFAULT_PREFIX, help="name prefix of everything")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="build the lab and run it until Ctrl-C")
    up.add_argument("--devices", type=int, default=6, help=f"1..{MAX_DEVICES}")
    up.add_argument("--root", default="lab-run", help="folder for the lab's files and logs")
    up.add_argument("--subnet", default=DEFAULT_SUBNET, help="the lab bridge's private /24")
    up.add_argument("--cut", action="append", default=[], metavar="DEV")
    up.add_argument("--cap", action="append", default=[], metavar="DEV=KBIT")
    up.add_argument(
        "--shape",
        action="append",
        default=[],
        metavar="DEV=MS[/LOSS]",
        help="latency each way (ms) and loss (0..1) through a relay, e.g. dev-004=150/0.02",
    )
    up.set_defaults(func=cmd_up)
    for name, func, text in (
        ("down", cmd_down, "stop the running lab and remove it"),
        ("clean", cmd_clean, "remove a crashed lab's processes, namespaces and links"),
        ("status", cmd_status, "what of the lab exists now"),
    ):
        sub.add_parser(name, help=text).set_defaults(func=func)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except (LabError, LabPlanError, netns.LabCommandError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
