"""A README shell walkthrough, run command by command on the lab's hosts.

The walkthrough is written for one machine; here each of its commands runs in the namespace
of the host it belongs to, as an operator with three machines would type it:
``mosquitto`` on the broker, ``edge-agent`` on the device, everything else on the hub. The
commands are the README's own, unchanged: the hosts share the walkthrough's folder (the files
an operator would copy: the token file and the hub CA), and what one command exports is
there for the next, on whichever host (``set -a``: every assignment is exported).

The walkthrough names one host, ``$HUB``, for the hub and the broker alike. On the lab that
name is ``127.0.0.1`` in every namespace (its ``/etc/hosts``), and a relay there forwards
each port to the host that serves it across the lab's bridge: the API to the hub, the MQTT
listeners to the broker. So every connection crosses hosts, with the TLS names the README
issued. :func:`split_steps` is pure; :class:`LabWalkthrough` is the shell.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from simulations.lab import netns
from simulations.lab.plan import HostRole, LabHost, LabPlan
from simulations.lab.probes import listen_probe

__all__ = ["LabWalkthrough", "WalkStep", "host_role_of", "split_steps"]

_ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=\S*$")


@dataclass(frozen=True)
class WalkStep:
    role: HostRole
    command: str  # one logical shell line (continuations joined)


def host_role_of(command: str) -> HostRole:
    """Which host runs ``command``: its program, after any leading assignments."""
    for word in shlex.split(command, comments=True):
        if _ASSIGNMENT.match(word) or word == "export":
            continue
        if word == "mosquitto":
            return HostRole.BROKER
        if word == "edge-agent":
            return HostRole.DEVICE
        return HostRole.HUB
    return HostRole.HUB


def split_steps(block: str) -> list[WalkStep]:
    """The block's logical lines (``\\`` continuations joined), comments and blanks dropped."""
    steps: list[WalkStep] = []
    pending = ""
    for raw in block.splitlines():
        line = pending + raw
        if line.rstrip().endswith("\\"):
            pending = line.rstrip()[:-1] + " "
            continue
        pending = ""
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        steps.append(WalkStep(host_role_of(line), line.strip()))
    if pending.strip():
        steps.append(WalkStep(host_role_of(pending), pending.strip()))
    return steps


class LabWalkthrough:
    """Runs steps in the namespaces of ``plan`` (already built), in ``root``, output in
    ``log``; ``hub_name`` is what the walkthrough's ``$HUB`` is set to."""

    def __init__(self, plan: LabPlan, root: Path, *, ports: dict[str, int], log: Path) -> None:
        self.plan = plan
        self.root = root
        self.ports = ports  # HUB_PORT, DEVICE_PORT, HUB_MQTT_PORT
        self.log = log
        self.state = root / ".walkthrough.env"
        self.hub_name = plan.hub.hostname
        self._bin = Path(sys.executable).parent

    def host(self, role: HostRole) -> LabHost:
        return {HostRole.HUB: self.plan.hub, HostRole.BROKER: self.plan.broker}.get(
            role, self.plan.devices[0]
        )

    def base_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEDFLEET_")}
        return {
            **env,
            "PATH": f"{self._bin}{os.pathsep}{env.get('PATH', '')}",
            "HUB": self.hub_name,
            "FEDFLEET_API_HOST": "0.0.0.0",  # the API on the hub's lab address too
            **{name: str(port) for name, port in self.ports.items()},
        }

    def route(self) -> None:
        """``$HUB`` is loopback on the hub and the device; relays carry each port across."""
        hub, broker, device = self.plan.hub, self.plan.broker, self.plan.devices[0]
        api, dev_mqtt = self.ports["HUB_PORT"], self.ports["DEVICE_PORT"]
        hub_mqtt = self.ports["HUB_MQTT_PORT"]
        self._relay(hub, [(dev_mqtt, broker), (hub_mqtt, broker)])  # the hub's MQTT, its admin
        self._relay(device, [(api, hub), (dev_mqtt, broker)])
        for host in (hub, device):
            netns.write_hosts(self.plan, host, via_loopback=(hub,))

    def _relay(self, host: LabHost, pairs: list[tuple[int, LabHost]]) -> None:
        argv = [sys.executable, "-m", "simulations.lab.relay"]
        for port, target in pairs:
            argv += ["--listen", f"127.0.0.1:{port}", "--to", f"{target.address}:{port}"]
        with self.log.open("ab") as out:
            subprocess.Popen(
                ["ip", "netns", "exec", host.netns, *argv],
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=Path(__file__).resolve().parents[2],  # `-m simulations.lab.relay`
                start_new_session=True,
            )
        for port, _ in pairs:
            subprocess.run(
                ["ip", "netns", "exec", host.netns, *listen_probe("127.0.0.1", port, 30)],
                check=True,
                timeout=40,
                capture_output=True,
            )

    def shell(self, role: HostRole, command: str, *, timeout: float = 60.0) -> str:
        """``command`` on ``role``'s host with what the walkthrough exported; its stdout."""
        script = f"set -ea\nsource {shlex.quote(str(self.state))}\n{command}\n"
        proc = subprocess.run(
            ["ip", "netns", "exec", self.host(role).netns, "bash", "-c", script],
            cwd=self.root, env=self.base_env(), capture_output=True, text=True,
            timeout=timeout, check=False,
        )  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"{command!r} exited {proc.returncode}: {proc.stderr[-800:]}")
        return proc.stdout

    def run(self, steps: list[WalkStep], *, deadline_s: float) -> int:
        """Each step in its host's namespace; the exit status of the first that fails."""
        self.state.write_text("")
        deadline = time.monotonic() + deadline_s
        for step in steps:
            script = (
                f"set -ea\nsource {shlex.quote(str(self.state))}\n{step.command}\n"
                f"export -p > {shlex.quote(str(self.state))}\n"
            )
            host = self.host(step.role)
            with self.log.open("ab") as out:
                out.write(f"[{host.name}]$ {step.command}\n".encode())
                out.flush()
                proc = subprocess.Popen(
                    ["ip", "netns", "exec", host.netns, "bash", "-c", script],
                    cwd=self.root,
                    env=self.base_env(),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            try:
                rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                return 124
            if rc != 0:
                return rc
        return 0
