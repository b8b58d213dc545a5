"""Ingest worker processes (``$share`` telemetry subscriptions) against a real Mosquitto and
PostgreSQL: the telemetry is split over the workers and all of it is stored, events stay on
the hub's own connection, a SIGKILLed worker is restarted and gets the messages the broker
had assigned to it back, and workers die with the hub process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy import func, select

from cloud_hub.ingest import FleetIngest, IngestConfig, IngestConnection
from cloud_hub.ingest.workers import (
    WorkerPool,
    WorkerSpec,
    resolve_workers,
    retire_sessions,
    share_group,
)
from cloud_hub.registry import Registry, open_registry
from cloud_hub.registry.tables import TelemetryMinute
from shared.broker_endpoint import BrokerEndpoint
from shared.messages import Event, Telemetry
from shared.topics import TopicScheme
from simulations.harness.mosquitto import LocalMosquitto
from simulations.harness.polling import eventually

pytestmark = pytest.mark.integration

DEVICES = 20
CONFIG = IngestConfig(flush_interval_s=0.05, workers=2)


class _Publisher:
    def __init__(self, port: int, scheme: TopicScheme) -> None:
        self.scheme = scheme
        self.seq = 0
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=f"pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def telemetry(self, rounds: int) -> int:
        infos = []
        for _ in range(rounds):
            self.seq += 1
            for i in range(DEVICES):
                d = f"dev-{i}"
                msg = Telemetry(device_id=d, seq=self.seq, metrics={"m": 1.0}, ts=time.time())
                topic = self.scheme.device(d, "telemetry")
                infos.append(self.client.publish(topic, msg.encode(), qos=1))
        for info in infos:
            info.wait_for_publish(30)
        return len(infos)

    def event(self, event_id: str) -> None:
        msg = Event(device_id="dev-0", event_id=event_id, kind="installed")
        self.client.publish(self.scheme.device("dev-0", "events"), msg.encode(), qos=1)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _stored(registry: Registry) -> int:
    with registry.session() as s:
        return int(s.scalar(select(func.coalesce(func.sum(TelemetryMinute.count), 0))) or 0)


@contextmanager
def _hub_ingest(pg_url: str, port: int, scheme: TopicScheme, data: Path) -> Iterator[FleetIngest]:
    connection = IngestConnection(
        endpoint=BrokerEndpoint(port=port), client_id=f"hub:ingest:{uuid.uuid4().hex[:8]}"
    )
    spec = WorkerSpec(pg_url, scheme.prefix, connection, CONFIG, share_group(data), 0)
    registry = open_registry(pg_url)
    ingest = FleetIngest(
        registry,
        scheme=scheme,
        mqtt_settings=connection,
        config=CONFIG,
        pool=WorkerPool(spec, 2),
    )
    ingest.start()
    try:
        yield ingest
    finally:
        ingest.stop()
        registry.close()


def test_workers_share_the_telemetry_and_a_killed_one_gets_its_messages_back(
    pg_url: str, tmp_path: Path
) -> None:
    scheme = TopicScheme(f"workers-{uuid.uuid4().hex[:8]}")
    registry = open_registry(pg_url)
    with LocalMosquitto() as broker, _hub_ingest(pg_url, broker.port, scheme, tmp_path) as hub:
        pool = hub.pool
        assert pool is not None
        pub = _Publisher(broker.port, scheme)
        try:
            sent = pub.telemetry(10)
            pub.event("ev-1")
            eventually(
                lambda: _stored(registry) == sent,
                30,
                "all telemetry stored",
                lambda: str(_stored(registry)),
                interval=0.05,
            )
            eventually(lambda: hub.stats().events_new == 1, 30, "the event stored", interval=0.05)
            assert hub._own_stats().received == 1  # telemetry went to the workers only ...
            # ... whose counters the hub's add up (for /metrics)
            eventually(
                lambda: hub.stats().received == sent + 1,
                10,
                "the workers' counts added",
                lambda: str(hub.stats()),
                interval=0.05,
            )
            busy = [psutil.Process(pid).cpu_times().user for pid in pool.pids()]
            assert all(t > 0 for t in busy)

            # worker 0 stops reading: the broker keeps assigning it half of the stream,
            # unacknowledged; then it is SIGKILLed and the pool restarts it
            victim = pool.pids()[0]
            os.kill(victim, signal.SIGSTOP)
            sent += pub.telemetry(10)
            time.sleep(0.5)
            assert _stored(registry) < sent  # its share is held by the broker
            os.kill(victim, signal.SIGKILL)
            eventually(
                lambda: victim not in pool.pids() and len(pool.pids()) == 2,
                30,
                "the worker restarted",
                interval=0.05,
            )
            eventually(
                lambda: _stored(registry) == sent,
                60,
                "the held share stored",
                lambda: f"{_stored(registry)} of {sent}",
                interval=0.05,
            )
            assert pool.restarts == 1
        finally:
            pub.close()
    registry.close()


def test_workers_die_with_the_hub_process(pg_url: str, tmp_path: Path) -> None:
    with LocalMosquitto() as broker:
        _kill_the_hub_and_watch_its_workers(pg_url, tmp_path, broker.port)


def _kill_the_hub_and_watch_its_workers(pg_url: str, tmp_path: Path, port: int) -> None:
    script = textwrap.dedent(
        f"""
        import sys, time
        from cloud_hub.ingest import IngestConfig, IngestConnection
        from cloud_hub.ingest.workers import WorkerPool, WorkerSpec
        from shared.broker_endpoint import BrokerEndpoint
        if __name__ == "__main__":
            conn = IngestConnection(endpoint=BrokerEndpoint(port={port}), client_id="h:ingest:x")
            spec = WorkerSpec({pg_url!r}, "orphans", conn, IngestConfig(), "g", 0)
            pool = WorkerPool(spec, 2)
            pool.start()
            assert pool.wait_ready()
            print(" ".join(map(str, pool.pids())), flush=True)
            time.sleep(600)
        """
    )
    path = tmp_path / "hub_stand_in.py"
    path.write_text(script)
    root = Path(__file__).resolve().parents[2]
    hub = subprocess.Popen(
        [sys.executable, str(path)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root)},
    )
    try:
        assert hub.stdout is not None
        pids = [int(p) for p in hub.stdout.readline().split()]
        assert len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)
        time.sleep(1.0)  # running, not crashing
        assert all(_alive(p) for p in pids)
        hub.kill()  # SIGKILL: no chance to stop its workers itself
        hub.wait(10)
        eventually(
            lambda: not any(_alive(p) for p in pids),
            15,
            "the workers gone with the hub",
            interval=0.05,
        )
    finally:
        if hub.poll() is None:
            hub.kill()


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_worker_count_resolution(tmp_path: Path) -> None:
    assert resolve_workers(-1, "sqlite:///x.db") == 0
    assert resolve_workers(3, "sqlite:///x.db") == 0  # one writer process on SQLite
    assert resolve_workers(3, "postgresql+psycopg://h/db") == 3
    assert resolve_workers(0, "postgresql+psycopg://h/db") == 0
    assert resolve_workers(-1, "postgresql+psycopg://h/db") == (
        2 if (os.cpu_count() or 1) >= 2 else 0
    )
    group = share_group(tmp_path)
    assert group == share_group(tmp_path) and len(group) > 30  # kept, and unguessable
    assert (tmp_path / "ingest-share-group").stat().st_mode & 0o077 == 0


def _member(port: int, client_id: str, topic: str, got: list[bytes]) -> mqtt.Client:
    """A persistent member of a shared-subscription group, connected and subscribed."""
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
    )
    client.on_message = lambda _c, _u, m: got.append(bytes(m.payload))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, clean_start=False, properties=props)
    client.loop_start()
    client.subscribe(topic, qos=1)
    time.sleep(0.3)
    return client


def test_sessions_of_workers_no_longer_run_are_ended(tmp_path: Path) -> None:
    scheme = TopicScheme(f"retire-{uuid.uuid4().hex[:8]}")
    topic = f"$share/g/{scheme.all_devices('telemetry')}"
    with LocalMosquitto() as broker:
        connection = IngestConnection(
            endpoint=BrokerEndpoint(port=broker.port), client_id="hub:ingest:r"
        )
        assert retire_sessions(tmp_path, connection, 2) == 0  # a run with two workers
        gone = _member(broker.port, "hub:ingest:r.w1", topic, [])
        gone.disconnect()
        gone.loop_stop()
        assert retire_sessions(tmp_path, connection, 1) == 2  # the next run has one
        got: list[bytes] = []
        kept = _member(broker.port, "hub:ingest:r.w0", topic, got)
        pub = _Publisher(broker.port, scheme)
        try:
            sent = pub.telemetry(1)
            eventually(
                lambda: len(got) == sent,
                10,
                "every message at the member",
                lambda: f"{len(got)} of {sent}",
                interval=0.05,
            )
        finally:
            pub.close()
            kept.disconnect()
            kept.loop_stop()
