"""A fleet of real ``edge-agent run`` processes on this machine, for demos, tests and benchmarks.

Each agent gets its own state directory and TOML config (written by the agent's config model,
``edge_agent.config.render_config``) pinning the hub's trust root. The agents themselves are
separate processes, exactly as on devices. ``stop()`` terminates them (SIGTERM, then SIGKILL after a grace) so no
process is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cloud_hub.config import parse_mqtt_url
from cloud_hub.errors import HubConfigError
from edge_agent.config import render_config

__all__ = ["AgentProcess", "LocalAgentFleet", "agent_config_toml", "stop_process_group"]


def agent_config_toml(
    *,
    device_id: str,
    device_class: str,
    state_dir: Path,
    trust_root: Path,
    mqtt_url: str,
    prefix: str,
    tables: Mapping[str, Mapping[str, Any]] | None = None,
    top: Mapping[str, Any] | None = None,
) -> str:
    """An agent config, written by the agent's own config model (``render_config``);
    ``tables`` adds [timeouts]/[limits]/... keys, ``top`` top-level keys such as
    ``status_interval_s``."""
    # the client id includes the topic prefix: fleets of different tests (or demos) sharing
    # a broker would otherwise take over each other's sessions (same device ids)
    mqtt_table = {
        "url": mqtt_url,
        "topic_prefix": prefix,
        "client_id": f"{device_id}@{prefix}"[:128],
        **dict((tables or {}).get("mqtt", {})),
    }
    document = {
        "device_id": device_id,
        "device_class": device_class,
        "state_dir": str(state_dir),
        "trust_root": str(trust_root),
        **dict(top or {}),
        **{name: dict(table) for name, table in (tables or {}).items()},
        "mqtt": mqtt_table,
    }
    return render_config(document)


def stop_process_group(proc: subprocess.Popen[bytes], grace_s: float = 8.0) -> None:
    """SIGTERM the process group, then SIGKILL it after ``grace_s``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group, if any
    if proc.poll() is None:
        proc.wait(timeout=5)


@dataclass
class AgentProcess:
    device_id: str
    config_path: Path
    state_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    run_args: tuple[str, ...] = ()  # after ``run --config FILE``

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class LocalAgentFleet:
    """``with LocalAgentFleet(root, n=5, ...) as fleet:`` — N agent processes."""

    root: Path
    trust_root: Mapping[str, Any]
    mqtt_url: str
    prefix: str
    n: int = 5
    device_class: str = "x86-cpu"
    id_prefix: str = "dev"
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    top: Mapping[str, Any] = field(default_factory=dict)
    verbose: bool = False
    id_width: int = 3  # device ids ID_PREFIX-000, -001, ...
    # per agent (by index): config tables over ``tables``, and ``edge-agent run`` arguments
    tables_for: Callable[[int], Mapping[str, Mapping[str, Any]]] | None = None
    run_args_for: Callable[[int], Sequence[str]] | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    # each agent in its own process group (``--serve`` starts children): stop() ends the group
    process_groups: bool = False
    agents: list[AgentProcess] = field(default_factory=list)

    def __post_init__(self) -> None:
        parse_mqtt_url(self.mqtt_url)
        if not 1 <= self.n <= 1000:
            raise HubConfigError("a local fleet has 1..1000 agents")
        self.root.mkdir(parents=True, exist_ok=True)
        trust_path = self.root / "trust_root.json"
        trust_path.write_text(json.dumps(dict(self.trust_root)), encoding="utf-8")
        for i in range(self.n):
            device_id = f"{self.id_prefix}-{i:0{self.id_width}d}"
            state = self.root / device_id
            state.mkdir(exist_ok=True)
            cfg = state / "agent.toml"
            cfg.write_text(
                agent_config_toml(
                    device_id=device_id,
                    device_class=self.device_class,
                    state_dir=state / "state",
                    trust_root=trust_path,
                    mqtt_url=self.mqtt_url,
                    prefix=self.prefix,
                    tables={**self.tables, **(self.tables_for(i) if self.tables_for else {})},
                    top=self.top,
                ),
                encoding="utf-8",
            )
            run_args = tuple(self.run_args_for(i)) if self.run_args_for else ()
            self.agents.append(
                AgentProcess(device_id, cfg, state / "state", state / "agent.log", None, run_args)
            )

    @property
    def device_ids(self) -> list[str]:
        return [a.device_id for a in self.agents]

    def agent(self, device_id: str) -> AgentProcess:
        for a in self.agents:
            if a.device_id == device_id:
                return a
        raise KeyError(device_id)

    def start(self, device_id: str | None = None) -> None:
        """Start every agent (or one) as ``python -m edge_agent.cli run --config FILE``."""
        for a in self.agents:
            if (device_id is not None and a.device_id != device_id) or a.running:
                continue
            cmd = [sys.executable, "-m", "edge_agent.cli"]
            if self.verbose:
                cmd.append("-v")
            cmd += ["run", "--config", str(a.config_path), *a.run_args]
            with open(a.log_path, "ab") as log:
                a.proc = subprocess.Popen(
                    cmd,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
                    start_new_session=self.process_groups,
                )

    def stop_one(self, device_id: str, grace_s: float = 5.0) -> None:
        """Stop one agent cleanly (SIGTERM): it reports offline and keeps its session."""
        a = self.agent(device_id)
        if a.proc is not None and a.running:
            a.proc.terminate()
            try:
                a.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()

    def kill(self, device_id: str) -> None:
        """SIGKILL one agent (power loss)."""
        a = self.agent(device_id)
        if a.proc is not None and a.running:
            a.proc.send_signal(signal.SIGKILL)
            a.proc.wait()

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every agent (its process group with ``process_groups``), SIGKILL after
        ``grace_s``."""
        for a in self.agents:
            if a.running and a.proc is not None:
                if self.process_groups:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(a.proc.pid, signal.SIGTERM)
                else:
                    a.proc.terminate()
        for a in self.agents:
            if a.proc is None:
                continue
            if self.process_groups:
                stop_process_group(a.proc, grace_s)
                continue
            try:
                a.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()

    def logs(self, device_id: str, tail: int = 4000) -> str:
        try:
            return self.agent(device_id).log_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def __enter__(self) -> LocalAgentFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
