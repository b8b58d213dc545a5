"""Ingest worker processes: the telemetry stream split over several MQTT connections.

Telemetry is the high-volume, order-insensitive uplink, so :class:`WorkerPool` runs it in
``workers`` processes, each a :class:`.ingest.FleetIngest` of its own (its own MQTT
connection, decoding, admission and commits to the PostgreSQL registry) subscribed to
``$share/GROUP/<prefix>/devices/+/telemetry``: the broker hands each message to one member
of the group. Hello, status, events and drift (ordering-sensitive, must-keep) stay on the
hub's one unshared ingest connection.

- Each worker keeps a persistent session under a fixed client id
  (``IDENTITY:ingest:INSTANCE.wN``). Mosquitto keeps assigning group messages to a member
  whose connection broke, queued in its session: a restarted worker gets them back, a
  SIGKILLed one's unacknowledged messages included.
- The group name is a random secret kept in the data directory (:func:`share_group`).
  Mosquitto 2.0's ``acl_file`` grants every SUBSCRIBE and checks read access per message at
  delivery: a device that joined the hub's group would be assigned messages the broker then
  refuses to deliver to it (lost to the hub). A device cannot join a group it cannot name.
- Workers die with the hub (``PR_SET_PDEATHSIG``), the pool terminates them on stop and
  restarts one that exits while the hub runs.
"""

from __future__ import annotations

import ctypes
import logging
import multiprocessing as mp
import os
import queue
import secrets
import signal
import threading
import time
from dataclasses import dataclass, replace
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from cloud_hub.errors import DeliveryError
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.stats import IngestStats
from shared.files import atomic_write

__all__ = [
    "TELEMETRY",
    "WorkerPool",
    "WorkerSpec",
    "resolve_workers",
    "retire_sessions",
    "share_group",
]

log = logging.getLogger(__name__)

TELEMETRY = "telemetry"  # the channel the workers take over
_GROUP_FILE = "ingest-share-group"
_COUNT_FILE = "ingest-workers"  # how many workers the last run started
_PR_SET_PDEATHSIG = 1
RESTART_BACKOFF_S = 1.0
STOP_GRACE_S = 10.0
READY_TIMEOUT_S = 60.0
REPORT_EVERY_S = 1.0


def resolve_workers(configured: int, db_url: str) -> int:
    """How many worker processes to run: ``configured`` (``-1``: automatic, two where the
    machine has two or more CPUs); always 0 on SQLite (one writer process only)."""
    if not db_url.startswith("postgresql"):
        return 0
    if configured >= 0:
        return configured
    return 2 if (os.cpu_count() or 1) >= 2 else 0


def share_group(data_dir: str | os.PathLike[str]) -> str:
    """The hub's secret shared-subscription group name, created on first use."""
    path = Path(data_dir) / _GROUP_FILE
    try:
        name = path.read_text().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    name = f"ingest-{secrets.token_hex(16)}"
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, f"{name}\n".encode(), mode=0o600)
    return name


def retire_sessions(data_dir: str | os.PathLike[str], connection: Any, workers: int) -> int:
    """End the persistent sessions of the workers a previous run had beyond ``workers``
    (their count is kept in the data directory): Mosquitto keeps assigning group messages
    to a member's session while it is away, and those would wait there, undelivered, until
    the session expires. ``connection``: the hub's ingest connection. Returns how many
    workers the previous run had (their sessions hold what arrives until they are back)."""
    path = Path(data_dir) / _COUNT_FILE
    try:
        before = int(path.read_text().strip())
    except (FileNotFoundError, ValueError):
        before = 0
    ended = [
        _end_session(connection, f"{connection.client_id}.w{index}")
        for index in range(workers, before)
    ]
    if before != workers and all(ended):  # else: tried again at the next start
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, f"{workers}\n".encode())
    return before


def _end_session(connection: Any, client_id: str) -> bool:
    """Connect as ``client_id`` with a clean start and no session expiry, then leave."""
    from cloud_hub.broker_client import ConnectionHooks, connect_client, create_client

    done = threading.Event()
    hooks = ConnectionHooks(
        connected=lambda _c: done.set(),
        refused=lambda _r: done.set(),
        dropped=lambda _r: None,
        subscribed=lambda _f: None,
        message=lambda _m: None,
    )
    client = create_client(connection.endpoint, client_id=client_id, hooks=hooks)
    try:
        connect_client(client, connection.endpoint, keepalive_s=30)
        client.loop_start()
        connected = done.wait(connection.connect_timeout_s)
        client.disconnect()
        client.loop_stop()
    except DeliveryError as exc:
        log.warning("could not end the old session of %s: %s", client_id, exc)
        return False
    if not connected:
        log.warning("could not end the old session of %s: no answer", client_id)
        return False
    log.info("ended the session of retired ingest worker %s", client_id)
    return True


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to run its share of the ingest (picklable)."""

    db_url: str
    topic_prefix: str
    connection: object  # an IngestConnection (typed loosely: no import cycle)
    config: IngestConfig
    group: str
    index: int

    def for_index(self, index: int) -> WorkerSpec:
        return replace(self, index=index)


def die_with_parent(parent_pid: int) -> None:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); exit at once if
    the parent is already gone. SIGKILL: a worker whose hub is gone must not linger (e.g.
    in a commit blocked on a lock); what it had not acknowledged, the broker redelivers to
    its successor, and telemetry it had acknowledged is droppable by design."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        log.debug("prctl(PR_SET_PDEATHSIG) unavailable", exc_info=True)
    if os.getppid() != parent_pid:
        os._exit(0)


def run_worker(spec: WorkerSpec, parent_pid: int, ready: Any, reports: Any) -> None:
    """A worker process's body: ingest the group's telemetry until SIGTERM (``ready`` is set
    once its subscription is in place; its counters go to ``reports`` every
    :data:`REPORT_EVERY_S`)."""
    die_with_parent(parent_pid)
    from cloud_hub.ingest.ingest import FleetIngest, IngestConnection
    from cloud_hub.registry import open_registry
    from shared.topics import TopicScheme

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the hub decides when its workers stop
    connection = spec.connection
    assert isinstance(connection, IngestConnection)
    registry = open_registry(spec.db_url, migrate=False)
    ingest = FleetIngest(
        registry,
        scheme=TopicScheme(spec.topic_prefix),
        mqtt_settings=replace(connection, client_id=f"{connection.client_id}.w{spec.index}"),
        config=spec.config,
        channels=(TELEMETRY,),
        shared_group=spec.group,
    )
    try:
        ingest.start()
        ready.set()
        while not stop.wait(REPORT_EVERY_S):
            reports.put((spec.index, ingest.stats()))
    finally:
        _exit_after(STOP_GRACE_S)  # a stop stuck in a blocked commit ends anyway
        ingest.stop()
        registry.close()


def _exit_after(seconds: float) -> None:
    timer = threading.Timer(seconds, os._exit, args=(1,))
    timer.daemon = True
    timer.start()


class WorkerPool:
    """Starts, watches (restarting one that exits) and stops the worker processes."""

    def __init__(self, spec: WorkerSpec, workers: int, *, sessions_exist: bool = False) -> None:
        """``sessions_exist``: every worker's persistent session is on the broker already
        (a restart), so what arrives before a worker is back waits in its session and the
        hub need not wait for the workers (:meth:`wait_ready`)."""
        self.spec = spec
        self.workers = workers
        self.sessions_exist = sessions_exist
        self._ctx = mp.get_context("spawn")  # the hub is threaded: never fork it
        self._procs: dict[int, BaseProcess] = {}
        self._ready: dict[int, Any] = {}
        self._reports: Any = self._ctx.Queue()
        self._latest: dict[int, IngestStats] = {}  # each worker's last report
        self._latest_lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self.restarts = 0

    def start(self) -> None:
        """Start the workers (see :meth:`wait_ready`)."""
        for index in range(self.workers):
            self._spawn(index)
        self._watcher = threading.Thread(target=self._watch, name="ingest-workers", daemon=True)
        self._watcher.start()

    def wait_ready(self, timeout: float = READY_TIMEOUT_S) -> bool:
        """Wait until every worker is subscribed (a group without members drops what is
        published to it), at most ``timeout`` seconds; at once when their sessions exist."""
        if self.sessions_exist:
            return True
        deadline = time.monotonic() + timeout
        for index, event in list(self._ready.items()):
            if not event.wait(max(0.0, deadline - time.monotonic())):
                log.warning("ingest worker %d not subscribed after %.0f s", index, timeout)
                return False
        return True

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.pid is not None]

    def _spawn(self, index: int) -> Any:
        ready = self._ctx.Event()
        proc = self._ctx.Process(
            target=run_worker,
            args=(self.spec.for_index(index), os.getpid(), ready, self._reports),
            name=f"ingest-worker-{index}",
            daemon=True,
        )
        proc.start()
        self._procs[index] = proc
        self._ready[index] = ready  # alive until the child has it (a semaphore)
        log.info("ingest worker %d started (pid %s)", index, proc.pid)
        return ready

    def stats(self) -> list[IngestStats]:
        """The last counters each worker reported (they count from the worker's start)."""
        self._read_reports()
        with self._latest_lock:
            return list(self._latest.values())

    def _read_reports(self) -> None:
        while True:
            try:
                index, stats = self._reports.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return
            with self._latest_lock:
                self._latest[index] = stats

    def _watch(self) -> None:
        while not self._stop.wait(0.2):
            self._read_reports()
            for index, proc in list(self._procs.items()):
                if proc.is_alive() or self._stop.is_set():
                    continue
                log.warning(
                    "ingest worker %d (pid %s) exited with %s; restarting it",
                    index,
                    proc.pid,
                    proc.exitcode,
                )
                proc.join(timeout=1)
                self.restarts += 1
                if self._stop.wait(RESTART_BACKOFF_S if self.restarts > self.workers else 0):
                    return
                self._spawn(index)

    def stop(self) -> None:
        """Terminate every worker (SIGTERM: each writes what it holds), then kill those still
        running after :data:`STOP_GRACE_S`."""
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
        procs = list(self._procs.values())
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in procs:
            proc.join(timeout=max(0.0, deadline - time.monotonic()))
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=5)
        self._procs.clear()
