"""The fleet run of ``benchmarks/hub.py``: N simulated devices against a private broker and a
hub that is SIGKILLed in the middle.

- The broker runs the global settings ``cloud-hub broker-config`` writes (queue limits, packet
  size, ...) with one plain loopback listener in place of its two mTLS listeners (10,000 TLS
  handshakes and client certificates would measure TLS, not the hub).
- Devices are real MQTT 5 connections, sharded over processes; each shard drives its clients
  from one epoll loop (``select`` stops at 1,024 descriptors). Every device sends hello and a
  retained status, then telemetry every ``telemetry_every_s`` and a must-keep event (unique id)
  every ``event_every_s``, all QoS 1 as the uplink table says. A shard counts what the broker
  acknowledged (PUBACK) and which event ids; published but never acknowledged is ``unacked``.
- A poller reads new event rows from the registry every 50 ms: lag = first seen committed -
  the event's send time (its ``ts``), so it includes up to one poll period.
- The restart window: events not yet committed at the SIGKILL, and events sent until every
  event sent before the new hub was up is committed. Lag outside it is ``ingest_lag_p95_s``,
  over the whole run ``ingest_lag_p95_all_s``.
"""

from __future__ import annotations

import dataclasses
import heapq
import multiprocessing as mp
import resource
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
import psycopg
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import select as sql_select

from cloud_hub.enrollment import BrokerTlsConfig, render_mosquitto_config
from cloud_hub.registry import Registry
from cloud_hub.registry.tables import EventRow
from shared.messages import Event, Hello, Status, Telemetry
from shared.topics import TopicScheme

EVENT_KIND = "bench.tick"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"


class RestartableHub(Protocol):
    registry: Registry

    def kill(self) -> None: ...
    def start(self) -> None: ...
    def devices(self, device_class: str) -> int: ...


@dataclass(frozen=True)
class FleetPlan:
    agents: int
    procs: int
    duration_s: float
    kill_at_s: float | None  # seconds into the run; None: no restart
    telemetry_every_s: float = 10.0
    event_every_s: float = 10.0
    device_class: str = "bench-fleet"


# ---- environment ---------------------------------------------------------------------------


def raise_fd_limit() -> int:
    """Soft descriptor limit up to the hard one (children and the broker inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def broker_config_text(port: int, directory: Path, max_queued_messages: int | None = None) -> str:
    """``cloud-hub broker-config``'s global settings with a plain listener on ``port``
    (``max_queued_messages``: another per-client queue bound, e.g. Mosquitto's default)."""
    placeholder = BrokerTlsConfig(  # the TLS listeners that name these files are cut off below
        cafile=directory / "ca.crt",
        hub_cafile=directory / "hub-ca.crt",
        certfile=directory / "server.crt",
        keyfile=directory / "server.key",
        acl_file=directory / "acl",
        hub_acl_file=directory / "acl-hub",
    )
    if max_queued_messages is not None:
        placeholder = dataclasses.replace(placeholder, max_queued_messages=max_queued_messages)
    head = render_mosquitto_config(placeholder).split("\nlistener ", 1)[0]
    return f"{head}\n\n# benchmark: plain loopback listener\nlistener {port} 127.0.0.1\n" + (
        "allow_anonymous true\n"
    )


def fresh_database(name: str) -> str:
    """Create an empty PostgreSQL database; its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"


def drop_database(name: str) -> None:
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---- device shards (worker processes) ------------------------------------------------------


@dataclass
class _ShardState:
    pending: dict[tuple[int, int], str] = field(default_factory=dict)  # (device, mid) -> id
    published: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "event": 0})
    acked: dict[str, int] = field(default_factory=lambda: {"telemetry": 0, "event": 0})
    refused: int = 0
    acked_events: list[str] = field(default_factory=list)
    published_events: list[str] = field(default_factory=list)


class _Shard:
    """Many paho clients on one epoll loop; ``publish`` writes at once (no loop thread)."""

    def __init__(self, ids: list[str], host: str, port: int, prefix: str) -> None:
        self.ids = ids
        self.topics = TopicScheme(prefix)
        self.state = _ShardState()
        self.poll = select.epoll()
        self.clients: list[mqtt.Client] = []
        self.by_fd: dict[int, mqtt.Client] = {}
        for i, device in enumerate(ids):
            c = mqtt.Client(
                callback_api_version=CallbackAPIVersion.VERSION2,
                client_id=device,
                protocol=mqtt.MQTTv5,
                userdata=i,
            )
            c.max_queued_messages_set(0)
            c.on_publish = self._on_publish
            c.connect(host, port, keepalive=600)
            sock = c.socket()
            assert sock is not None
            fd = sock.fileno()
            self.poll.register(fd, select.EPOLLIN)
            self.by_fd[fd] = c
            self.clients.append(c)

    def _on_publish(self, _c: object, device: int, mid: int, rc: Any, _p: object) -> None:
        tag = self.state.pending.pop((device, mid), None)
        if tag is None:
            return
        if rc.is_failure:
            self.state.refused += 1
            return
        kind = "telemetry" if tag == "" else "event"
        self.state.acked[kind] += 1
        if tag:
            self.state.acked_events.append(tag)

    def pump(self, timeout: float) -> None:
        for fd, _ev in self.poll.poll(timeout):
            client = self.by_fd.get(fd)
            if client is not None:
                client.loop_read()

    def flush_writes(self) -> None:
        for c in self.clients:
            if c.want_write():
                c.loop_write()

    def publish(
        self, i: int, channel: str, payload: bytes, tag: str | None, retain: bool = False
    ) -> None:
        info = self.clients[i].publish(
            self.topics.device(self.ids[i], channel), payload, qos=1, retain=retain
        )
        if tag is not None:
            self.state.pending[(i, info.mid)] = tag

    def settle(self, seconds: float, until: Callable[[], bool]) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and not until():
            self.flush_writes()
            self.pump(0.05)


def device_shard(
    ids: list[str],
    endpoint: tuple[str, int],
    prefix: str,
    plan: FleetPlan,
    ctl: Any,
    out: Any,
) -> None:
    """One shard: connect, register, then the schedule from ``ctl['go']`` for
    ``plan.duration_s``; reports acknowledged counts and event ids."""
    raise_fd_limit()
    shard = _Shard(ids, endpoint[0], endpoint[1], prefix)
    shard.settle(120.0, lambda: all(c.is_connected() for c in shard.clients))
    for i, device in enumerate(ids):
        hello = Hello(
            device_id=device,
            device_class=plan.device_class,
            agent_version="bench",
            runtimes=["onnxruntime"],
            free_disk_bytes=1 << 30,
            free_mem_bytes=1 << 30,
        )
        shard.publish(i, "hello", hello.encode(), None)
        shard.publish(i, "status", Status(device_id=device, online=True).encode(), None, True)
    shard.settle(60.0, lambda: not shard.state.pending)
    out.put(("ready", sum(c.is_connected() for c in shard.clients)))
    while not ctl["go"].is_set():
        shard.pump(0.1)
    _run_schedule(shard, plan, ctl)
    shard.settle(60.0, lambda: not shard.state.pending)
    s = shard.state
    out.put(
        (
            "done",
            {
                "published": s.published,
                "acked": s.acked,
                "refused": s.refused,
                "acked_events": s.acked_events,
                "published_events": s.published_events,
            },
        )
    )
    for c in shard.clients:
        c.disconnect()
    shard.settle(2.0, lambda: False)


def _run_schedule(shard: _Shard, plan: FleetPlan, ctl: Any) -> None:
    """Telemetry and events per device, spread evenly over their periods."""
    n = len(shard.ids)
    t0 = time.monotonic()
    due: list[tuple[float, int, int]] = []  # (when, 0 telemetry | 1 event, device)
    for i in range(n):
        due.append((t0 + plan.telemetry_every_s * i / n, 0, i))
        due.append((t0 + (plan.event_every_s * (i / n + 0.5)) % plan.event_every_s, 1, i))
    heapq.heapify(due)
    seq = [0] * n
    last_misc = last_flush = t0
    while time.monotonic() - t0 < plan.duration_s and not ctl["stop"].is_set():
        now = time.monotonic()
        while due and due[0][0] <= now:
            when, kind, i = heapq.heappop(due)
            seq[i] += 1
            device = shard.ids[i]
            if kind == 0:
                msg: Telemetry | Event = Telemetry(
                    device_id=device, seq=seq[i], metrics={"fleet": 1.0}, ts=time.time()
                )
                shard.publish(i, "telemetry", msg.encode(), "")
                shard.state.published["telemetry"] += 1
                heapq.heappush(due, (when + plan.telemetry_every_s, 0, i))
            else:
                event_id = f"{device}-e{seq[i]}"
                msg = Event(device_id=device, event_id=event_id, kind=EVENT_KIND, ts=time.time())
                shard.publish(i, "events", msg.encode(), event_id)
                shard.state.published["event"] += 1
                shard.state.published_events.append(event_id)
                heapq.heappush(due, (when + plan.event_every_s, 1, i))
        if now - last_flush > 0.5:
            shard.flush_writes()
            last_flush = now
        if now - last_misc > 15.0:
            for c in shard.clients:
                c.loop_misc()
            last_misc = now
        wait = max(0.0, min(0.05, (due[0][0] - time.monotonic()) if due else 0.05))
        shard.pump(wait)


# ---- the run (main process) ----------------------------------------------------------------


class EventPoller(threading.Thread):
    """Reads new event rows every 50 ms: (first seen committed, sent) per event id."""

    def __init__(self, registry: Registry) -> None:
        super().__init__(daemon=True, name="event-poller")
        self.registry = registry
        self.seen: dict[str, tuple[float, float]] = {}
        self.stop_flag = threading.Event()
        self.last_id = 0

    def run(self) -> None:
        while not self.stop_flag.is_set():
            self.poll_once()
            self.stop_flag.wait(0.05)
        self.poll_once()

    def poll_once(self) -> None:
        try:
            with self.registry.session() as s:
                rows = s.execute(
                    sql_select(EventRow.id, EventRow.event_id, EventRow.ts)
                    .where(EventRow.id > self.last_id, EventRow.kind == EVENT_KIND)
                    .order_by(EventRow.id)
                ).all()
        except Exception:  # the database is busy: next poll
            return
        now = time.time()
        for row_id, event_id, ts in rows:
            self.seen.setdefault(event_id, (now, float(ts)))
            self.last_id = max(self.last_id, int(row_id))


def p_quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))], 4)


def run_fleet(
    hub: RestartableHub,
    plan: FleetPlan,
    *,
    endpoint: tuple[str, int],
    prefix: str,
    log: Callable[[str], None],
) -> dict[str, Any]:
    ctx = mp.get_context("fork")
    ctl = {name: ctx.Event() for name in ("go", "stop")}
    out: Any = ctx.Queue()
    ids = [f"{prefix}-f{i:05d}" for i in range(plan.agents)]
    shards = [ids[k :: plan.procs] for k in range(plan.procs) if ids[k :: plan.procs]]
    workers = [
        ctx.Process(target=device_shard, args=(s, endpoint, prefix, plan, ctl, out), daemon=True)
        for s in shards
    ]
    poller = EventPoller(hub.registry)
    t_connect = time.monotonic()
    try:
        for w in workers:
            w.start()
        connected = sum(_get(out, "ready", 180 + plan.agents / 20) for _ in workers)
        log(f"fleet: {connected}/{plan.agents} connected in {time.monotonic() - t_connect:.1f} s")
        _wait(lambda: hub.devices(plan.device_class) >= plan.agents, 120, "fleet registered")
        poller.start()
        ctl["go"].set()
        t0 = time.time()
        restart = _kill_and_restart(hub, plan, t0, log)
        reports = [_get(out, "done", plan.duration_s + 240) for _ in workers]
        sent_end = time.time()
        acked = {e for r in reports for e in r["acked_events"]}
        published = {e for r in reports for e in r["published_events"]}
        _drain(poller, acked, log)
        poller.stop_flag.set()
        poller.join(timeout=10)
    finally:
        ctl["stop"].set()
        for w in workers:
            w.join(timeout=5)
            if w.is_alive():
                w.terminate()
                w.join(timeout=5)
        poller.stop_flag.set()
    return _results(plan, reports, poller, acked, published, restart, t0, sent_end)


def _kill_and_restart(
    hub: RestartableHub, plan: FleetPlan, t0: float, log: Callable[[str], None]
) -> dict[str, float]:
    if plan.kill_at_s is None:
        return {}
    time.sleep(max(0.0, t0 + plan.kill_at_s - time.time()))
    t_kill = time.time()
    hub.kill()
    log("fleet: hub SIGKILLed; restarting")
    hub.start()
    t_up = time.time()
    log(f"fleet: hub back after {t_up - t_kill:.1f} s")
    return {"t_kill": t_kill, "t_up": t_up}


def _results(
    plan: FleetPlan,
    reports: list[dict[str, Any]],
    poller: EventPoller,
    acked: set[str],
    published: set[str],
    restart: dict[str, float],
    t0: float,
    sent_end: float,
) -> dict[str, Any]:
    seen = poller.seen
    lags = {e: committed - sent for e, (committed, sent) in seen.items()}
    window_end = None
    if restart:
        before_up = [seen[e][0] for e in published if e in seen and seen[e][1] < restart["t_up"]]
        window_end = max(before_up, default=restart["t_up"])

    def outside(event_id: str) -> bool:
        """Committed before the kill, or sent after the restart's backlog was committed."""
        if not restart or window_end is None:
            return True
        committed, sent = seen[event_id]
        return committed < restart["t_kill"] or sent > window_end

    steady = [lag for e, lag in lags.items() if outside(e)]
    pub = {k: sum(r["published"][k] for r in reports) for k in ("telemetry", "event")}
    ack = {k: sum(r["acked"][k] for r in reports) for k in ("telemetry", "event")}
    return {
        "agents": plan.agents,
        "fleet_shards": len(reports),
        "fleet_duration_s": plan.duration_s,
        "fleet_msgs_s": round((pub["telemetry"] + pub["event"]) / max(sent_end - t0, 1e-9), 1),
        "telemetry_every_s": plan.telemetry_every_s,
        "event_every_s": plan.event_every_s,
        "must_keep_sent": pub["event"],
        "must_keep_acked": ack["event"],
        "must_keep_stored": len(published & seen.keys()),
        "lost_must_keep": len(acked - seen.keys()),
        "lost_must_keep_incl_unacked": len(published - seen.keys()),
        "unacked": pub["telemetry"] + pub["event"] - ack["telemetry"] - ack["event"],
        "refused_by_broker": sum(r["refused"] for r in reports),
        "ingest_lag_p95_s": p_quantile(steady, 0.95),
        "ingest_lag_p50_s": p_quantile(steady, 0.5),
        "ingest_lag_p95_all_s": p_quantile(list(lags.values()), 0.95),
        "ingest_lag_max_s": p_quantile(list(lags.values()), 1.0),
        "lag_samples_outside_restart": len(steady),
        "hub_restart_s": round(restart["t_up"] - restart["t_kill"], 2) if restart else None,
        "restart_window_s": (
            round(window_end - restart["t_kill"], 2) if restart and window_end else None
        ),
    }


def _drain(poller: EventPoller, acked: set[str], log: Callable[[str], None]) -> None:
    """Wait until every acknowledged event is committed, or nothing new is for 60 s (a hub
    behind its fleet drains a backlog of minutes: a fixed timeout would call it lost)."""
    seen, last_change, started = len(poller.seen), time.monotonic(), time.monotonic()
    while not acked <= poller.seen.keys() and time.monotonic() - last_change < 60:
        time.sleep(1.0)
        if len(poller.seen) != seen:
            seen, last_change = len(poller.seen), time.monotonic()
    log(f"fleet: drained {seen} events {time.monotonic() - started:.0f} s after sending stopped")


def _get(out: Any, kind: str, timeout: float) -> Any:
    got, value = out.get(timeout=timeout)
    if got != kind:
        raise SystemExit(f"fleet shard sent {got!r}, expected {kind!r}")
    return value


def _wait(check: Callable[[], bool], timeout: float, what: str, *, fail: bool = True) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.25)
    if fail:
        raise SystemExit(f"timed out waiting for {what}")
