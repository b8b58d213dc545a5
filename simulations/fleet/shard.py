"""A shard: a process hosting many simulated devices (threads), for fleets larger than one
process can hold.

Why shards: paho-mqtt waits on its socket with ``select()``, which cannot watch a file
descriptor numbered 1024 or above; every agent holds ~7 descriptors (socket, outbox database
and its WAL, state files), so one process stops connecting new agents at ~150. The runner
keeps up to ``scenario.agents_per_process`` agents in its own process and starts shards of
that size for the rest.

``python -m simulations.fleet.shard SPEC.json`` runs the devices the spec lists: each
writes its report ledger to a file; chosen devices are crashed mid-transfer and restarted
once the scenario's arm file exists; synthetic inputs flow until SIGTERM, then every agent
stops cleanly and the shard writes ``stats`` (bytes, predictions, kills) as JSON.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge_agent.config import load_config
from edge_agent.runtime.capabilities import detect_capabilities
from simulations.fleet.device import Ledger, LedgerAgent, SimDevice
from simulations.fleet.population import Member, agent_tables
from simulations.harness.agents import agent_config_toml

__all__ = ["ShardProcess", "main", "run_shard"]

log = logging.getLogger(__name__)


@dataclass
class ShardProcess:
    """The parent's handle on one shard: writes its spec and configs, starts and stops it."""

    root: Path
    members: list[Member]
    proc: subprocess.Popen[bytes] | None = None

    def ledger(self, device_id: str) -> Path:
        return self.root / device_id / "ledger.jsonl"

    def state_dir(self, device_id: str) -> Path:
        return self.root / device_id / "state"

    def start(
        self, *, urls: dict[str, str], prefix: str, trust_root: Path, settings: dict[str, Any]
    ) -> None:
        """``urls``: the MQTT URL of each member (the broker, or the flaky link)."""
        devices = []
        for m in self.members:
            (self.root / m.device_id).mkdir(parents=True, exist_ok=True)
            config = self.root / m.device_id / "agent.toml"
            config.write_text(
                agent_config_toml(
                    device_id=m.device_id,
                    device_class=m.device_class,
                    state_dir=self.state_dir(m.device_id),
                    trust_root=trust_root,
                    mqtt_url=urls[m.device_id],
                    prefix=prefix,
                    tables=agent_tables(m),
                    top={"status_interval_s": 30.0},
                ),
                encoding="utf-8",
            )
            devices.append(
                {
                    "device_id": m.device_id,
                    "config": str(config),
                    "ledger": str(self.ledger(m.device_id)),
                    "drift_shift": m.drift_shift,
                    "kill": m.kill,
                }
            )
        spec = {**settings, "devices": devices, "stats": str(self.root / "stats.json")}
        (self.root / "spec.json").write_text(json.dumps(spec), encoding="utf-8")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with open(self.root / "shard.log", "ab") as log_fh:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "simulations.fleet.shard", str(self.root / "spec.json")],
                stdout=log_fh,
                stderr=subprocess.STDOUT,
                env=env,
            )

    def terminate(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()

    def wait(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log.error("shard %s did not stop in %.0f s; killed", self.root.name, timeout)
            self.proc.kill()
            self.proc.wait()

    def stats(self) -> dict[str, Any]:
        try:
            data = json.loads((self.root / "stats.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}


def run_shard(spec: dict[str, Any], stop: threading.Event) -> dict[str, Any]:
    """Run the devices of ``spec`` until ``stop``; returns their stats."""
    arm = Path(spec["arm_file"])
    kills: dict[str, list[tuple[float, str]]] = {}
    devices: dict[str, SimDevice] = {}

    def crash_restart(device_id: str) -> None:
        devices[device_id].crash()
        time.sleep(float(spec["restart_after_s"]))
        devices[device_id].restart()

    def hook_for(device_id: str, kill: bool) -> Any:
        def hook(agent: LedgerAgent, n: int) -> None:
            if not kill or kills.get(device_id) or n < int(spec["kill_at_chunk"]):
                return
            if not arm.exists():
                return
            dep = agent.updater.deployment
            kills[device_id] = [(time.time(), dep.phase.value if dep else "idle")]
            threading.Thread(target=crash_restart, args=(device_id,), daemon=True).start()

        return hook

    caps = detect_capabilities()
    for i, d in enumerate(spec["devices"]):
        device = SimDevice(
            load_config(d["config"]),
            ledger=Ledger(Path(d["ledger"])),
            drift_shift=float(d["drift_shift"]),
            drift_window=int(spec["drift_window"]),
            telemetry_interval_s=float(spec["telemetry_interval_s"]),
            capabilities=caps,
            on_chunk=hook_for(d["device_id"], bool(d["kill"])),
            seed=int(spec["seed"]) * 100_003 + i,
        )
        devices[d["device_id"]] = device
        device.start()
        time.sleep(0.005)
    batch, interval = int(spec["batch"]), float(spec["interval_s"])
    while not stop.wait(interval):
        for device in list(devices.values()):
            device.infer(batch)
    for device in devices.values():
        device.agent.stop(drain_s=10.0)
        device.stack.stop()
    return {
        device_id: {
            "bytes_received": device.bytes_received,
            "predictions": device.predictions,
            "kills": kills.get(device_id, []),
        }
        for device_id, device in devices.items()
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m simulations.fleet.shard SPEC.json", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    spec = json.loads(Path(args[0]).read_text(encoding="utf-8"))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stats = run_shard(spec, stop)
    out = Path(spec["stats"])
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(stats), encoding="utf-8")
    tmp.replace(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
