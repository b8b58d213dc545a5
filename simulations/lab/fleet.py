"""A fleet lab: one network namespace per host, the real programs inside, removed on exit.

``with FleetLab(LabConfig(root=..., devices=6)) as lab:`` builds the plan's namespaces, then
runs, each in its own host's namespace and exactly as an operator would:

1. hub: ``cloud-hub enroll-init``, ``keys init``, ``broker-config`` (mTLS, ACL);
2. broker: ``mosquitto -c broker/mosquitto.conf``;
3. hub: ``cloud-hub serve --tls`` (its MQTT client on the broker's hub listener; with
   ``LabConfig.hub_config``, that TOML as its ``--config``: e.g. the ``[retraining]`` table
   that starts its retraining controller);
4. per device: ``cloud-hub enroll-token --token-file`` on the hub; the token file and the
   hub CA are copied to the device's folder; ``edge-agent install`` enrolls over HTTPS;
   ``edge-agent run --serve``.

Leaving the ``with`` block — normally, on an exception or on Ctrl-C — stops every process
and deletes every namespace, link and ``/etc/netns`` folder the lab made. A lab refuses to
start while a crashed one's leftovers exist (:func:`simulations.lab.netns.clean` removes them).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from simulations.lab import netns
from simulations.lab.plan import (
    DEFAULT_PREFIX,
    DEFAULT_SUBNET,
    HostRole,
    LabHost,
    LabPlan,
    cap_commands,
    cut_commands,
    restore_commands,
)
from simulations.lab.probes import (
    connect_probe,
    https_get_probe,
    listen_probe,
    timed_https_get_probe,
)
from simulations.lab.relay import LinkShape

__all__ = ["FleetLab", "LabConfig", "LabError", "LabLeftoversError", "LabProcess"]

API_PORT = 8443
DEVICE_MQTT_PORT = 8883
HUB_MQTT_PORT = 8884
DEVICE_CLASS = "x86-cpu"


class LabError(RuntimeError):
    """The lab could not be built or a program in it failed."""


class LabLeftoversError(LabError):
    """A crashed lab's namespaces, links or folders are still there."""


@dataclass(frozen=True)
class LabConfig:
    root: Path  # every file of the lab: hub data, broker config, devices, logs
    devices: int = 6
    prefix: str = DEFAULT_PREFIX
    subnet: str = DEFAULT_SUBNET
    site: str = "lab"
    start_timeout_s: float = 120.0
    agent_args: tuple[str, ...] = ("--report-interval", "2")
    # devices whose link gets latency/loss from a relay in their namespace, from the start
    shaped: Mapping[str, LinkShape] = field(default_factory=dict)
    hub_config: str = ""  # TOML for ``cloud-hub serve --config`` (empty: none)
    hub_env: Mapping[str, str] = field(default_factory=dict)  # extra environment of serve


@dataclass
class LabProcess:
    name: str
    host: LabHost
    proc: subprocess.Popen[bytes]
    log: Path

    def alive(self) -> bool:
        return self.proc.poll() is None


@dataclass
class FleetLab:
    config: LabConfig
    plan: LabPlan = field(init=False)
    processes: list[LabProcess] = field(default_factory=list)
    operator_token: str = ""

    def __post_init__(self) -> None:
        self.plan = LabPlan.make(
            self.config.devices, prefix=self.config.prefix, subnet=self.config.subnet
        )
        self.root = self.config.root.resolve()
        self.hub_data = self.root / "hub-data"
        self.broker_dir = self.root / "broker"
        self.logs = self.root / "logs"
        self._bin = Path(sys.executable).parent

    # -- paths and URLs ------------------------------------------------------------------
    @property
    def api_url(self) -> str:
        return f"https://{self.plan.hub.hostname}:{API_PORT}"

    @property
    def ca_file(self) -> Path:
        return self.hub_data / "ca" / "ca.crt"

    def device_dir(self, host: LabHost) -> Path:
        return self.root / "devices" / host.name

    def device_config(self, host: LabHost) -> Path:
        return self.device_dir(host) / "etc" / "fedfleet-agent" / "config.toml"

    # -- lifecycle -----------------------------------------------------------------------
    def __enter__(self) -> FleetLab:
        reason = netns.namespaces_unavailable()
        if reason is not None:
            raise LabError(f"cannot build a lab here: {reason}")
        left = netns.find_leftovers(self.plan.prefix)
        if left:
            raise LabLeftoversError(
                f"a previous lab left {left.describe()}; remove them with "
                f"`python -m simulations.lab clean --prefix {self.plan.prefix}`"
            )
        try:
            self.up()
        except BaseException:
            self.down()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.down()

    def up(self) -> None:
        if self.root.exists() and any(self.root.iterdir()):
            raise LabError(f"{self.root} is not empty (a previous lab's files?): pick another root")
        for folder in (self.hub_data, self.broker_dir, self.logs, self.root / "devices"):
            folder.mkdir(parents=True, exist_ok=True)
        netns.build(self.plan)
        for device, shape in self.config.shaped.items():
            self._shape(self.plan.device(device), shape)
        self._set_up_hub()
        self.spawn(
            self.plan.broker,
            "mosquitto",
            [self._mosquitto(), "-c", "mosquitto.conf"],
            cwd=self.broker_dir,
        )
        self.wait_listening(self.plan.broker, DEVICE_MQTT_PORT)
        self.wait_listening(self.plan.broker, HUB_MQTT_PORT)
        self.spawn(
            self.plan.hub,
            "hub",
            [str(self._bin / "cloud-hub"), *self._serve_args()],
            env=self.config.hub_env,
        )
        self.wait_listening(self.plan.hub, API_PORT)
        self.operator_token = self.hub_cli("token", "create", "--role", "operator").strip()
        self._enroll_devices()
        for host in self.plan.devices:
            self.start_agent(host)
        self.wait_online()

    def down(self) -> None:
        """Stop every process — agents first, then the hub, the broker last, so each side
        sees an orderly goodbye — then remove the namespaces, links and folders."""
        for role in (HostRole.DEVICE, HostRole.HUB, HostRole.BROKER):
            group = [p for p in self.processes if p.host.role is role and p.alive()]
            for p in group:
                p.proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for p in group:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    p.proc.wait(max(0.1, deadline - time.monotonic()))
                if p.alive():
                    p.proc.kill()
                    p.proc.wait(5)
        netns.clean(self.plan.prefix)

    # -- running programs inside hosts ---------------------------------------------------
    def _ns(self, host: LabHost, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", host.netns, *argv]

    def run_in(
        self,
        host: LabHost,
        argv: list[str],
        *,
        timeout: float = 120.0,
        env: dict[str, str] | None = None,
    ) -> str:
        """Run a command to completion inside ``host``; its stdout, or :class:`LabError`."""
        proc = subprocess.run(
            self._ns(host, argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
        if proc.returncode != 0:
            raise LabError(
                f"{host.name}: {' '.join(argv[:3])} ... exited {proc.returncode}: "
                f"{(proc.stderr or proc.stdout)[-800:]}"
            )
        return proc.stdout

    def hub_cli(self, *args: str, timeout: float = 120.0) -> str:
        """``cloud-hub ARGS --data-dir HUB_DATA`` inside the hub's namespace."""
        argv = [str(self._bin / "cloud-hub"), *args]
        if args[0] not in ("rollout",):
            argv += ["--data-dir", str(self.hub_data)]
        return self.run_in(self.plan.hub, argv, timeout=timeout)

    def rollout_cli(self, *args: str, timeout: float = 120.0) -> str:
        """``cloud-hub rollout ARGS`` over the hub's HTTPS API, from the hub's namespace."""
        return self.hub_cli(
            "rollout",
            *args,
            "--api",
            self.api_url,
            "--token",
            self.operator_token,
            "--ca-file",
            str(self.ca_file),
            timeout=timeout,
        )

    def api_get(self, path: str) -> Any:
        """``GET path`` on the hub's HTTPS API (verified by the hub CA), from the hub's
        namespace, with the operator token; the decoded JSON."""
        argv = https_get_probe(f"{self.api_url}{path}", str(self.ca_file))
        return json.loads(self.run_in(self.plan.hub, argv, env={"LAB_TOKEN": self.operator_token}))

    def online_devices(self) -> set[str]:
        page = self.api_get(f"/api/v1/devices?online=true&limit={len(self.plan.devices)}")
        return {str(d["device_id"]) for d in page["items"]}

    def wait_online(self) -> None:
        """Until the hub sees every device online; an agent that exits fails the lab."""
        want = {h.name for h in self.plan.devices}
        deadline = time.monotonic() + self.config.start_timeout_s
        while True:
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                raise LabError(
                    "exited: "
                    + "; ".join(
                        f"{p.name}: {p.log.read_text(errors='replace')[-400:]}" for p in dead
                    )
                )
            missing = want - self.online_devices()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise LabError(f"devices never came online: {sorted(missing)}")
            time.sleep(1)

    def spawn(
        self,
        host: LabHost,
        name: str,
        argv: list[str],
        *,
        cwd: Path | None = None,
        env: Mapping[str, str] | None = None,
    ) -> LabProcess:
        log = self.logs / f"{name}.log"
        with log.open("ab") as out:
            proc = subprocess.Popen(
                self._ns(host, argv),
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=cwd or self.root,
                start_new_session=True,  # Ctrl-C reaches the lab, which stops them in order
                env={**os.environ, **env} if env else None,
            )
        lp = LabProcess(name, host, proc, log)
        self.processes.append(lp)
        return lp

    def wait_listening(self, host: LabHost, port: int, *, address: str | None = None) -> None:
        """Until something accepts TCP on ``host``'s address (or ``address``) and ``port``,
        seen from inside ``host``."""
        timeout = self.config.start_timeout_s
        try:
            self.run_in(host, listen_probe(address or host.address, port, timeout),
                        timeout=timeout + 10)  # fmt: skip
        except LabError as exc:
            logs = "; ".join(
                f"{p.name}: {p.log.read_text(errors='replace')[-400:]}"
                for p in self.processes
                if p.host == host
            )
            raise LabError(f"nothing listens on {host.hostname}:{port} ({logs})") from exc

    # -- set-up steps --------------------------------------------------------------------
    def _mosquitto(self) -> str:
        exe = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        if not Path(exe).exists():
            raise LabError("mosquitto is not installed (apt-get install mosquitto)")
        return exe

    def _set_up_hub(self) -> None:
        hub, broker = self.plan.hub, self.plan.broker
        self.hub_cli("enroll-init", "--hostname", hub.hostname, "--hostname", hub.address)
        self.hub_cli("keys", "init")
        self.hub_cli(
            "broker-config", "--out", str(self.broker_dir), "--hostname", broker.hostname,
            "--port", str(DEVICE_MQTT_PORT), "--hub-port", str(HUB_MQTT_PORT),
            "--bind", broker.address, "--broker-user", "root",
        )  # fmt: skip

    def _serve_args(self) -> list[str]:
        b, broker = self.broker_dir, self.plan.broker.hostname
        config: list[str] = []
        if self.config.hub_config:
            path = self.root / "hub.toml"
            path.write_text(self.config.hub_config, encoding="utf-8")
            config = ["--config", str(path)]
        return [
            "serve", *config, "--tls", "--data-dir", str(self.hub_data),
            "--host", self.plan.hub.address, "--port", str(API_PORT),
            "--tls-hostname", self.plan.hub.hostname,
            "--mqtt-url", f"mqtts://{broker}:{HUB_MQTT_PORT}",
            "--mqtt-ca-file", str(b / "ca.crt"),
            "--mqtt-cert-file", str(b / "hub.crt"), "--mqtt-key-file", str(b / "hub.key"),
            "--device-mqtt-url", f"mqtts://{broker}:{DEVICE_MQTT_PORT}",
        ]  # fmt: skip

    def _enroll_devices(self) -> None:
        """A one-time token per device on the hub, copied with the hub CA to the device; the
        installs (HTTPS enrollment) run in parallel, one per device namespace."""
        installs: list[tuple[LabHost, subprocess.Popen[str]]] = []
        for host in self.plan.devices:
            folder = self.device_dir(host)
            folder.mkdir(parents=True, exist_ok=True)
            token = folder / "enroll.token"
            self.hub_cli(
                "enroll-token", "--class", DEVICE_CLASS, "--labels", f"site={self.config.site}",
                "--device-id", host.name, "--token-file", str(token), "--hub-url", self.api_url,
            )  # fmt: skip
            shutil.copyfile(self.ca_file, folder / "hub-ca.crt")  # the operator copies it over
            argv = [
                str(self._bin / "edge-agent"), "install", "--hub", self.api_url,
                "--token-file", str(token), "--ca-cert", str(folder / "hub-ca.crt"),
                "--class", DEVICE_CLASS, "--device-id", host.name,
                "--prefix", str(folder), "--no-systemd",
            ]  # fmt: skip
            pipe, both = subprocess.PIPE, subprocess.STDOUT
            proc = subprocess.Popen(self._ns(host, argv), stdout=pipe, stderr=both, text=True)
            installs.append((host, proc))
        failed = []
        for host, proc in installs:
            out, _ = proc.communicate(timeout=self.config.start_timeout_s)
            (self.logs / f"install-{host.name}.log").write_text(out, encoding="utf-8")
            if proc.returncode != 0:
                failed.append(f"{host.name}: {out[-300:]}")
        if failed:
            raise LabError("edge-agent install failed: " + " | ".join(failed))

    def start_agent(self, host: LabHost) -> LabProcess:
        argv = [
            str(self._bin / "edge-agent"),
            "run",
            "--config",
            str(self.device_config(host)),
            "--serve",
            "--api-port",
            "0",
            *self.config.agent_args,
        ]
        return self.spawn(host, f"agent-{host.name}", argv)

    def build_bundle(self, model: Path, *, name: str, version: int) -> Path:
        """``cloud-hub bundle build`` into the hub's store, on the hub host."""
        out = self.root / f"{name}-v{version}.ffb"
        self.hub_cli(
            "bundle", "build", "--model", str(model), "--name", name,
            "--version", str(version), "--class", DEVICE_CLASS, "-o", str(out),
        )  # fmt: skip
        return out

    def rollout_state(self, rollout_id: str) -> str:
        return str(self.api_get(f"/api/v1/rollouts/{rollout_id}")["state"])

    def timed_https_get(self, device: str, path: str = "/healthz") -> float:
        """Seconds one ``GET`` of the hub's API takes from ``device``'s namespace (TCP, TLS
        handshake verified by the hub CA, request, answer), measured inside it."""
        argv = timed_https_get_probe(f"{self.api_url}{path}", str(self.ca_file))
        return float(self.run_in(self.plan.device(device), argv).strip())

    def reachable(self, device: str, target: LabHost, port: int) -> bool:
        """Can ``device`` open a TCP connection to ``target:port`` right now (2 s)?"""
        try:
            self.run_in(self.plan.device(device), connect_probe(target.address, port))
        except LabError:
            return False
        return True

    # -- link faults ---------------------------------------------------------------------
    def cut(self, device: str) -> None:
        """Cut a device's link (its bridge port goes down): nothing in or out."""
        netns.apply(cut_commands(self.plan.device(device)))

    def restore(self, device: str) -> None:
        """Undo :meth:`cut` and :meth:`cap` on a device's link."""
        netns.apply(restore_commands(self.plan.device(device)), check=False)

    def _shape(self, host: LabHost, shape: LinkShape) -> None:
        """Send the device's traffic to the hub and the broker through a relay on its own
        loopback (its ``/etc/hosts`` names them ``127.0.0.1``) that adds latency and loss."""
        hub, broker = self.plan.hub, self.plan.broker
        pairs = [(hub, API_PORT), (broker, DEVICE_MQTT_PORT)]
        argv = [sys.executable, "-m", "simulations.lab.relay", *shape.argv()]
        for target, port in pairs:
            argv += ["--listen", f"127.0.0.1:{port}", "--to", f"{target.address}:{port}"]
        self.spawn(host, f"relay-{host.name}", argv)
        for _, port in pairs:
            self.wait_listening(host, port, address="127.0.0.1")
        netns.write_hosts(self.plan, host, via_loopback=(hub, broker))

    def cap(self, device: str, kbit: int) -> None:
        """Cap a device's link at ``kbit`` kbit/s each way (tc tbf)."""
        netns.apply(cap_commands(self.plan.device(device), kbit))
