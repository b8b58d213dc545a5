"""Simulated devices that run as real processes (``python -m simulations.fleet.device``),
supervised: a process that dies (the scenario SIGKILLs them mid-transfer) is started again on
the same state directory after a pause."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from simulations.fleet.population import Member, agent_tables
from simulations.harness.agents import agent_config_toml

__all__ = ["DeviceProcess", "ProcessSupervisor"]

log = logging.getLogger(__name__)


@dataclass
class DeviceProcess:
    member: Member
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    exits: list[tuple[float, int]] = field(default_factory=list)  # (time, return code)

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def ledger(self) -> Path:
        return self.root / "ledger.jsonl"

    @property
    def log_path(self) -> Path:
        return self.root / "agent.log"

    @property
    def killed(self) -> int:
        return sum(1 for _t, rc in self.exits if rc == -signal.SIGKILL)


class ProcessSupervisor:
    """Starts the device processes, restarts the ones that die, stops them all at the end."""

    def __init__(
        self,
        members: list[Member],
        root: Path,
        *,
        trust_root: Path,
        mqtt_url: str,
        prefix: str,
        arm_file: Path,
        kill_at_chunk: int,
        restart_after_s: float,
        drift_window: int,
        batch: int,
        interval_s: float,
        telemetry_interval_s: float,
    ) -> None:
        self.arm_file = arm_file
        self.restart_after_s = restart_after_s
        self.devices: list[DeviceProcess] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="sim-procs", daemon=True)
        self._args: dict[str, list[str]] = {}
        for m in members:
            d = DeviceProcess(m, root / m.device_id)
            d.root.mkdir(parents=True, exist_ok=True)
            config = d.root / "agent.toml"
            config.write_text(
                agent_config_toml(
                    device_id=m.device_id,
                    device_class=m.device_class,
                    state_dir=d.state_dir,
                    trust_root=trust_root,
                    mqtt_url=mqtt_url,
                    prefix=prefix,
                    tables=agent_tables(m),
                    top={"status_interval_s": 30.0},
                ),
                encoding="utf-8",
            )
            args = [
                sys.executable, "-m", "simulations.fleet.device",
                "--config", str(config), "--ledger", str(d.ledger),
                "--drift-shift", str(m.drift_shift), "--drift-window", str(drift_window),
                "--batch", str(batch), "--interval", str(interval_s),
                "--telemetry-interval", str(telemetry_interval_s),
            ]  # fmt: skip
            if m.kill:
                args += [
                    "--sigkill-at-chunk", str(kill_at_chunk),
                    "--sigkill-armed", str(arm_file),
                    "--sigkill-marker", str(d.root / "killed.marker"),
                ]  # fmt: skip
            self._args[m.device_id] = args
            self.devices.append(d)

    def _spawn(self, d: DeviceProcess) -> None:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(d.log_path, "ab") as log_fh:
            d.proc = subprocess.Popen(
                self._args[d.member.device_id], stdout=log_fh, stderr=subprocess.STDOUT, env=env
            )

    def start(self) -> None:
        for d in self.devices:
            self._spawn(d)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            for d in self.devices:
                if d.proc is None or d.proc.poll() is None:
                    continue
                rc = d.proc.returncode
                d.exits.append((time.time(), rc))
                log.warning("device process %s exited with %s; restarting", d.member.device_id, rc)
                if self._stop.wait(self.restart_after_s):
                    return
                self._spawn(d)

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM every process (the agent stops cleanly and drains), SIGKILL stragglers."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        for d in self.devices:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.terminate()
        for d in self.devices:
            if d.proc is None:
                continue
            try:
                d.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                d.proc.kill()
                d.proc.wait()

    def logs(self, device_id: str, tail: int = 3000) -> str:
        for d in self.devices:
            if d.member.device_id == device_id:
                try:
                    return d.log_path.read_text(errors="replace")[-tail:]
                except OSError:
                    return ""
        return ""
