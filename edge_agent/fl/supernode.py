"""Start and supervise a Flower SuperNode for this device (``flower-supernode``).

The SuperNode connects to the hub's SuperLink, receives the runs' ClientApp messages and
runs :mod:`edge_agent.fl.client_app` on the device's local samples. The supervisor builds
the command line from a validated :class:`SuperNodeConfig`, restarts the process with
exponential backoff when it dies, and stops it with SIGINT (then SIGTERM, then SIGKILL).

TLS: by default the connection is verified TLS; pass ``root_certificates`` (the CA that
signed the SuperLink's certificate, PEM: on a device, the hub CA pinned at enrollment).
``insecure=True`` (plain HTTP) must be asked for explicitly and cannot be combined with
certificates.

``fab_sha256`` (R4): the SuperNode then runs as :mod:`edge_agent.fl.pinned_supernode` and
accepts only the Flower App Bundle with that hash (the one the signed training order names).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

from edge_agent.errors import AgentConfigError
from shared.fl.config_keys import NodeConfigKey

__all__ = ["CLIENTAPP_MODES", "SuperNodeConfig", "SuperNodeSupervisor"]


def _flower_bin(name: str) -> str:
    local = Path(sys.executable).with_name(name)
    found = str(local) if local.exists() else shutil.which(name)
    if not found:
        raise AgentConfigError(f"{name} not found (install fedfleet[train])")
    return found


def _toml_value(value: str | int | float | bool) -> str:
    """One ``--node-config`` value as Flower parses it (TOML)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if not isinstance(value, str):
        return str(value)
    if any(c in value for c in "\"'\n"):
        raise AgentConfigError(f"node config value {value!r} contains quotes")
    return f'"{value}"'


#: Where a pinned SuperNode runs a message's ClientApp: in its own process (the default) or
#: in a task process forked per message (edge_agent.fl.pinned_supernode ``--clientapp``).
CLIENTAPP_MODES = ("in-process", "forked")


@dataclass(frozen=True)
class SuperNodeConfig:
    """One device's SuperNode."""

    superlink: str  # host:port of the SuperLink's Fleet API
    data_path: Path  # the device's labelled samples (.npz with x, y)
    clientappio_port: int  # local port for the SuperNode's ClientApp I/O (one per node)
    insecure: bool = False
    root_certificates: Path | None = None
    batch_size: int = 32
    max_local_epochs: int = 1
    time_budget_s: float = 60.0
    extra_node_config: dict[str, str | int | float | bool] = field(default_factory=dict)
    max_retries: int | None = None
    max_wait_time_s: float | None = None
    fab_sha256: str | None = None  # R4: the only FAB this SuperNode may run
    # where a pinned SuperNode runs each message's ClientApp: "in-process" (its own process)
    # or "forked" (Flower's process per task); see edge_agent.fl.pinned_supernode
    clientapp: str = "in-process"

    def __post_init__(self) -> None:
        if self.fab_sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.fab_sha256):
            raise AgentConfigError("fab_sha256 must be 64 lowercase hex digits")
        host, _, port = self.superlink.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise AgentConfigError(f"superlink must be host:port, got {self.superlink!r}")
        if not 0 < self.clientappio_port < 65536:
            raise AgentConfigError("clientappio_port must be a TCP port")
        if self.insecure and self.root_certificates is not None:
            raise AgentConfigError("insecure=True cannot be combined with root_certificates")
        if not self.insecure and self.root_certificates is None:
            raise AgentConfigError(
                "TLS needs root_certificates (the SuperLink's CA); set insecure=True explicitly "
                "for a plain-text connection"
            )
        if self.clientapp not in CLIENTAPP_MODES:
            raise AgentConfigError(
                f"clientapp must be in-process or forked, got {self.clientapp!r}"
            )
        if self.batch_size < 1 or self.max_local_epochs < 1 or self.time_budget_s <= 0:
            raise AgentConfigError("training limits must be positive")

    def node_config(self) -> str:
        items: dict[str, str | int | float | bool] = {
            NodeConfigKey.DATA_PATH: str(self.data_path),
            NodeConfigKey.BATCH_SIZE: self.batch_size,
            NodeConfigKey.MAX_LOCAL_EPOCHS: self.max_local_epochs,
            NodeConfigKey.TIME_BUDGET_S: float(self.time_budget_s),
            **self.extra_node_config,
        }
        return " ".join(f"{k}={_toml_value(v)}" for k, v in items.items())

    def argv(self) -> list[str]:
        """The ``flower-supernode`` command line (pinned to ``fab_sha256`` when set)."""
        if self.fab_sha256 is not None:
            _flower_bin("flower-supernode")  # the same installation check
            argv = [sys.executable, "-m", "edge_agent.fl.pinned_supernode"]
            argv += ["--fab-sha256", self.fab_sha256, "--clientapp", self.clientapp]
            argv += ["--superlink", self.superlink]
        else:
            argv = [_flower_bin("flower-supernode"), "--superlink", self.superlink]
        if self.insecure:
            argv.append("--insecure")
        else:
            argv += ["--root-certificates", str(self.root_certificates)]
        argv += ["--port", str(self.clientappio_port), "--node-config", self.node_config()]
        if self.max_retries is not None:
            argv += ["--max-retries", str(self.max_retries)]
        if self.max_wait_time_s is not None:
            argv += ["--max-wait-time", str(self.max_wait_time_s)]
        return argv


class SuperNodeSupervisor:
    """Keeps one ``flower-supernode`` process running until :meth:`stop`."""

    def __init__(
        self,
        config: SuperNodeConfig,
        *,
        log_path: Path | None = None,
        restart_backoff_s: float = 1.0,
        max_backoff_s: float = 60.0,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.restarts = 0
        self._backoff = restart_backoff_s
        self._max_backoff = max_backoff_s
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process else None

    def is_running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def _spawn(self) -> None:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        # The SuperNode spawns ``flower-superexec`` by name: our interpreter's bin goes first.
        path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
        env = {**os.environ, "PATH": path, "PYTHONUNBUFFERED": "1"}
        self._process = subprocess.Popen(
            self.config.argv(), stdout=out, stderr=subprocess.STDOUT, env=env
        )

    def start(self) -> None:
        """Start the SuperNode and a watcher thread restarting it if it dies."""
        if self._watcher is not None:
            raise AgentConfigError("supervisor already started")
        self._spawn()
        self._watcher = threading.Thread(target=self._watch, name="supernode-watch", daemon=True)
        self._watcher.start()

    def _watch(self) -> None:
        delay = self._backoff
        while not self._stopping.is_set():
            process = self._process
            if process is not None and process.poll() is not None:
                if self._stopping.wait(delay):
                    return
                self.restarts += 1
                self._spawn()
                delay = min(delay * 2, self._max_backoff)
            elif self._stopping.wait(0.5):
                return

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Stop the SuperNode (SIGINT, then SIGTERM, then SIGKILL); returns its exit code."""
        self._stopping.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        process = self._process
        if process is None or process.poll() is not None:
            return process.returncode if process else None
        for sig, wait in ((signal.SIGINT, timeout_s), (signal.SIGTERM, 5.0)):
            process.send_signal(sig)
            try:
                return process.wait(timeout=wait)
            except subprocess.TimeoutExpired:
                continue
        process.kill()
        return process.wait()

    def __enter__(self) -> SuperNodeSupervisor:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
