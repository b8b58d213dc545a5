"""One simulated device: the real :class:`~edge_agent.agent.EdgeAgent` (OTA, outbox, reports)
plus the real inference stack (ONNX runtime, drift detector, telemetry), fed synthetic
sensor inputs. Only the inputs are made up.

Many run in one process (threads), each with its own state directory and MQTT client id;
``python -m simulations.fleet.device`` runs one as a separate process (the ones the scenario
SIGKILLs). The simulation adds two things around the agent, through subclassing only:

- a :class:`Ledger` of every ``Event`` and ``DriftReport`` the agent handed to its outbox
  (the "no report lost" witness — compared with the hub registry at the end);
- a chunk hook: bytes received, and a kill trigger after the k-th chunk of a transfer.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_agent.agent import EdgeAgent
from edge_agent.config import AgentConfig
from edge_agent.ota import InstalledSlot
from edge_agent.transport import InboundMessage
from shared.data.sensors import SensorDriftSpec, generate_sensor_data
from shared.messages import DriftReport, Event, Message

__all__ = ["Ledger", "LedgerAgent", "SimDevice", "crash_agent", "main"]

log = logging.getLogger(__name__)

PROBLEM_SEED = 0  # every device sees the same sensor problem; sites differ by drift only


@dataclass(frozen=True)
class LedgerEntry:
    channel: str  # "events" | "drift"
    id: str
    kind: str  # event kind, or "drifted"/"stable"
    deployment_id: str | None


class Ledger:
    """Thread-safe record of the reports a device made; optionally mirrored to a JSONL file
    (a process that is SIGKILLed keeps what it wrote)."""

    def __init__(self, path: Path | None = None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._entries: list[LedgerEntry] = []

    def record(self, message: Message) -> None:
        if isinstance(message, Event):
            entry = LedgerEntry("events", message.event_id, message.kind, message.deployment_id)
        elif isinstance(message, DriftReport):
            entry = LedgerEntry(
                "drift", message.report_id, "drifted" if message.drifted else "stable", None
            )
        else:
            return
        with self._lock:
            self._entries.append(entry)
            if self.path is not None:
                with open(self.path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(entry.__dict__) + "\n")

    def entries(self) -> list[LedgerEntry]:
        with self._lock:
            return list(self._entries)

    @classmethod
    def read(cls, path: Path) -> list[LedgerEntry]:
        """Entries a (possibly killed) process wrote; a torn last line is skipped."""
        out: list[LedgerEntry] = []
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except FileNotFoundError:
            return out
        for line in lines:
            try:
                out.append(LedgerEntry(**json.loads(line)))
            except (ValueError, TypeError):
                continue
        return out


class LedgerAgent(EdgeAgent):
    """The real agent; it also records its reports and watches the chunks it handles."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        ledger: Ledger,
        on_chunk: Callable[[LedgerAgent, int], None] | None = None,
        **kwargs: Any,
    ) -> None:
        self.ledger = ledger
        self.chunk_bytes = 0
        self.chunks = 0
        self._on_chunk = on_chunk
        self._transfer: tuple[str, int] = ("", 0)  # deployment id, chunks handled in it
        self._chunks_lock = threading.Lock()  # chunks arrive on paho's thread and the worker
        super().__init__(config, **kwargs)

    def report(self, message: Message) -> None:
        super().report(message)  # in the outbox first: the ledger never lists an unsent report
        self.ledger.record(message)

    def _take_chunk(self, message: InboundMessage) -> bool:
        """A chunk the network thread writes itself (the running download's) is watched here;
        any other goes through :meth:`handle` on the worker."""
        taken = super()._take_chunk(message)
        if taken:
            self._saw_chunk(message)
        return taken

    def handle(self, message: InboundMessage) -> None:
        super().handle(message)
        if message.topic.endswith("/chunks"):
            self._saw_chunk(message)

    def _saw_chunk(self, message: InboundMessage) -> None:
        """Count a chunk's bytes; after the k-th chunk of a transfer, call the hook."""
        dep = self.updater.deployment
        with self._chunks_lock:
            self.chunk_bytes += len(message.payload)
            self.chunks += 1
            if dep is None or self._on_chunk is None:
                return
            dep_id, n = self._transfer
            n = n + 1 if dep_id == dep.deployment_id else 1
            self._transfer = (dep.deployment_id, n)
        self._on_chunk(self, n)


def crash_agent(agent: EdgeAgent) -> None:
    """Stop ``agent`` abruptly, as a power cut would, but inside this process: no offline
    status, no MQTT DISCONNECT (the broker publishes the last will), no outbox drain; the
    message being handled finishes, everything queued behind it is lost unacknowledged.

    ``EdgeAgent`` only offers a graceful ``stop()``, so this reaches into its threads.
    """
    agent._running.clear()
    if agent._worker is not None:
        agent._worker.join(timeout=10)
    link = agent.link
    link._running = False
    link._wake.set()
    if link._flusher is not None:
        link._flusher.join(timeout=5)
    client = link._client
    sock = client.socket()
    client.loop_stop()
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
    agent.updater.close()
    agent.outbox.close()


class SimDevice:
    """An agent + inference stack pair sharing one state directory.

    ``restart()`` (after :func:`crash_agent`) builds a fresh ``EdgeAgent`` on the same state
    directory — the recovery path a real device takes after power returns.
    """

    def __init__(
        self,
        config: AgentConfig,
        *,
        ledger: Ledger | None = None,
        drift_shift: float = 0.0,
        drift_window: int = 100,
        telemetry_interval_s: float = 2.0,
        capabilities: Any = None,
        on_chunk: Callable[[LedgerAgent, int], None] | None = None,
        seed: int = 0,
    ) -> None:
        from edge_agent.drift.detector import DriftConfig
        from edge_agent.runtime.selection import RuntimeConfig
        from edge_agent.serving.observers import ObserverConfig
        from edge_agent.serving.stack import InferenceStack, InferenceStackConfig
        from edge_agent.telemetry.collector import TelemetryConfig

        self.config = config
        self.ledger = ledger or Ledger()
        self.drift_shift = drift_shift
        self.telemetry_interval_s = telemetry_interval_s
        self._on_chunk = on_chunk
        self._rng = np.random.default_rng(seed)
        self.stack = InferenceStack(
            InferenceStackConfig(
                runtime=RuntimeConfig(intra_op_threads=1),
                drift=DriftConfig(window_size=drift_window),
                observers=ObserverConfig(
                    sample_rate=0.0, audit_sample_rate=0.0, flush_interval_s=0.5, recent_bytes=0
                ),
                telemetry=TelemetryConfig(
                    interval_s=max(1.0, telemetry_interval_s), sources=("psutil",)
                ),
                api=None,
                samples=None,
            ),
            capabilities=capabilities,
        )
        self._lock = threading.Lock()
        self._model_name = ""
        self._seq = 0
        self.predictions = 0
        self.inference_errors = 0
        self.restarts = 0
        self._bytes_before = 0  # chunk bytes received by agents replaced after a crash
        self.agent = self._new_agent()

    @property
    def device_id(self) -> str:
        return self.config.device_id

    def _new_agent(self) -> LedgerAgent:
        agent = LedgerAgent(self.config, ledger=self.ledger, on_chunk=self._on_chunk)
        agent.on_model_changed(self._install)
        agent.add_reporter(self.telemetry_interval_s, self._reports)
        agent.add_status_fields(self._status_fields)
        return agent

    # -- the agent's plug-in points ----------------------------------------------------------
    def _install(self, slot: InstalledSlot | None) -> None:
        from edge_agent.runtime.base import ModelArtifacts
        from shared.drift_reference import ReferenceStats

        if slot is None or slot.model_path is None:
            return
        ref_path = slot.artifact_path("reference_stats")
        reference = None if ref_path is None else ReferenceStats.from_json(ref_path.read_bytes())
        with self._lock:
            self.stack.install(
                ModelArtifacts.from_model_file(slot.model_path, version=slot.meta.version),
                reference=reference,
            )
            self._model_name = slot.meta.model_name

    def _reports(self) -> Iterable[Message]:
        out: list[Message] = [
            w.to_message(device_id=self.device_id, model_name=self._model_name)
            for w in self.stack.drain_drift_reports()
        ]
        if self.stack.server.report is not None:
            self._seq += 1
            out.append(self.stack.telemetry().to_message(device_id=self.device_id, seq=self._seq))
        return out

    def _status_fields(self) -> Mapping[str, Any]:
        report = self.stack.server.report
        return {} if report is None else {"runtime": report.backend, "provider": report.provider}

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        self.stack.start()
        self.agent.start()

    def crash(self) -> None:
        crash_agent(self.agent)

    def restart(self) -> None:
        """A fresh agent on the same state directory (after :meth:`crash`)."""
        self.restarts += 1
        self._bytes_before += self.agent.chunk_bytes
        self.agent = self._new_agent()
        self.agent.start()

    def stop(self) -> None:
        self.agent.stop()
        self.stack.stop()

    @property
    def bytes_received(self) -> int:
        """Chunk bytes received by this device, across agent restarts."""
        return self._bytes_before + self.agent.chunk_bytes

    def pending_reports(self) -> int:
        return len(self.agent.outbox)

    # -- synthetic inputs --------------------------------------------------------------------
    def infer(self, batch: int) -> bool:
        """Run one batch of this device's (possibly drifted) sensor inputs through the model."""
        drift = SensorDriftSpec(shift=self.drift_shift) if self.drift_shift else None
        x, _ = generate_sensor_data(
            batch,
            seed=PROBLEM_SEED,
            drift=drift,
            sample_seed=int(self._rng.integers(1 << 31)),
        )
        if self.stack.server.report is None:
            return False
        try:
            self.stack.server.predict(x)
        except Exception as exc:  # counted: a device without a working model shows up here
            self.inference_errors += 1
            log.debug("%s: inference failed: %s", self.device_id, exc)
            return False
        self.predictions += batch
        return True


# --------------------------------------------------------------------------------------------
# one device as its own process (SIGKILLed by the scenario)


def main(argv: list[str] | None = None) -> int:
    from edge_agent.config import load_config

    p = argparse.ArgumentParser(prog="python -m simulations.fleet.device")
    p.add_argument("--config", type=Path, required=True)
    p.add_argument("--ledger", type=Path, required=True)
    p.add_argument("--drift-shift", type=float, default=0.0)
    p.add_argument("--drift-window", type=int, default=100)
    p.add_argument("--batch", type=int, default=25)
    p.add_argument("--interval", type=float, default=0.5)
    p.add_argument("--telemetry-interval", type=float, default=2.0)
    p.add_argument("--sigkill-at-chunk", type=int, default=0, help="0: never")
    p.add_argument("--sigkill-armed", type=Path, default=None, help="kill only once it exists")
    p.add_argument("--sigkill-marker", type=Path, default=None, help="kill only once")
    args = p.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    marker: Path | None = args.sigkill_marker
    armed: Path | None = args.sigkill_armed

    def on_chunk(agent: LedgerAgent, n: int) -> None:
        if not (args.sigkill_at_chunk and n >= args.sigkill_at_chunk and marker and armed):
            return
        if armed.exists() and not marker.exists():
            marker.write_text(f"{agent.updater.deployment}\n", encoding="utf-8")
            log.warning("SIGKILL at chunk %d of the transfer", n)
            os.kill(os.getpid(), signal.SIGKILL)

    device = SimDevice(
        load_config(args.config),
        ledger=Ledger(args.ledger),
        drift_shift=args.drift_shift,
        drift_window=args.drift_window,
        telemetry_interval_s=args.telemetry_interval,
        on_chunk=on_chunk,
        seed=os.getpid(),
    )
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    device.start()
    try:
        while not stop.wait(args.interval):
            device.infer(args.batch)
    finally:
        device.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
