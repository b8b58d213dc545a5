"""The shell under the lab's plan: runs ``ip``/``tc``, finds what a lab left behind and removes it.

Leftovers are found by name (every namespace, link and ``/etc/netns`` folder of a lab starts
with its prefix) and processes by namespace (``ip netns pids``): nothing outside the lab is
looked at or signalled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from simulations.lab.plan import LabHost, LabPlan, build_commands, teardown_commands

__all__ = [
    "ETC_NETNS",
    "LabCommandError",
    "Leftovers",
    "apply",
    "build",
    "clean",
    "find_leftovers",
    "namespaces_unavailable",
    "netns_pids",
    "write_hosts",
]

ETC_NETNS = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc


class LabCommandError(RuntimeError):
    """An ``ip``/``tc`` command of the lab failed."""


@dataclass(frozen=True)
class Leftovers:
    namespaces: tuple[str, ...]
    links: tuple[str, ...]
    etc_dirs: tuple[str, ...]

    def __bool__(self) -> bool:
        return bool(self.namespaces or self.links or self.etc_dirs)

    def describe(self) -> str:
        parts = [
            f"{label}: {', '.join(items)}"
            for label, items in (
                ("namespaces", self.namespaces),
                ("links", self.links),
                ("/etc/netns", self.etc_dirs),
            )
            if items
        ]
        return "; ".join(parts)


def _run(cmd: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if check and proc.returncode != 0:
        raise LabCommandError(f"{' '.join(cmd)}: {proc.stderr.strip() or proc.returncode}")
    return proc


def apply(cmds: list[list[str]], *, check: bool = True) -> None:
    for cmd in cmds:
        _run(cmd, check=check)


def namespaces_unavailable() -> str | None:
    """Why this machine cannot build a lab (``None`` when it can): root, ``ip`` and a
    namespace that can really be made and removed."""
    if os.geteuid() != 0:
        return "the lab needs root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"`{tool}` is not installed (iproute2)"
    probe = f"fflprobe{os.getpid()}"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _run(["ip", "netns", "delete", probe], check=False)
    return None


def _names(cmd: list[str]) -> list[str]:
    out = _run(cmd, check=False).stdout
    return [line.split()[0].split("@")[0] for line in out.splitlines() if line.strip()]


def find_leftovers(prefix: str) -> Leftovers:
    mark = f"{prefix}-"
    etc = sorted(p.name for p in ETC_NETNS.glob(f"{mark}*")) if ETC_NETNS.is_dir() else []
    return Leftovers(
        namespaces=tuple(sorted(n for n in _names(["ip", "netns", "list"]) if n.startswith(mark))),
        links=tuple(sorted(n for n in _names(["ip", "-br", "link"]) if n.startswith(mark))),
        etc_dirs=tuple(etc),
    )


def netns_pids(netns: str) -> list[int]:
    out = _run(["ip", "netns", "pids", netns], check=False).stdout
    return [int(tok) for tok in out.split() if tok.isdigit()]


def _stop_namespace_processes(namespaces: tuple[str, ...], grace_s: float) -> None:
    """SIGTERM every process inside the lab's namespaces, SIGKILL what is left after the grace."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        pids = [pid for ns in namespaces for pid in netns_pids(ns)]
        if not pids:
            return
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and any(netns_pids(ns) for ns in namespaces):
            time.sleep(0.1)


def clean(prefix: str, *, grace_s: float = 5.0) -> Leftovers:
    """Stop every process in the lab's namespaces, delete its namespaces, links and
    ``/etc/netns`` folders. Returns what it found; raises if something stayed."""
    found = find_leftovers(prefix)
    _stop_namespace_processes(found.namespaces, grace_s)
    apply(teardown_commands(list(found.namespaces), []), check=False)
    links = find_leftovers(prefix).links  # a namespace's deletion took its veth pair with it
    apply(teardown_commands([], list(links)), check=False)
    for name in found.etc_dirs:
        shutil.rmtree(ETC_NETNS / name, ignore_errors=True)
    _rmdir_if_empty(ETC_NETNS)
    still = find_leftovers(prefix)
    if still:
        raise LabCommandError(f"could not remove {still.describe()}")
    return found


def _rmdir_if_empty(path: Path) -> None:
    """Remove ``/etc/netns`` when the lab emptied it (it did not exist before)."""
    with contextlib.suppress(OSError):
        path.rmdir()


def build(plan: LabPlan) -> None:
    """Make the plan's bridge, namespaces, veth pairs and per-namespace ``/etc/hosts``."""
    apply(build_commands(plan))
    for h in plan.hosts:
        write_hosts(plan, h)


def write_hosts(plan: LabPlan, host: LabHost, *, via_loopback: tuple[LabHost, ...] = ()) -> None:
    """The ``/etc/hosts`` that ``ip netns exec`` shows inside ``host``'s namespace; the hosts
    in ``via_loopback`` resolve to ``127.0.0.1`` there (a relay listens for them)."""
    folder = ETC_NETNS / host.netns
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "hosts").write_text(plan.hosts_file(via_loopback), encoding="utf-8")
