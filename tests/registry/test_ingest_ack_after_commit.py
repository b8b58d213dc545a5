"""Acknowledge after commit, at the MQTT level: a hub SIGKILLed between receiving must-keep
messages and committing them loses none of them.

A real ``cloud-hub serve`` process (PostgreSQL registry, real Mosquitto on 127.0.0.1:1883,
persistent MQTT session) receives device events while the test holds an exclusive lock on
the events table, so the ingest's commit blocks: the messages are in the hub's memory, not
in the database. The hub is SIGKILLed there. Because the ingest acknowledges a QoS 1 message
only after its batch commits, the broker still holds every one of them for the hub's
session and delivers them again after the restart; each lands exactly once. An ingest that
acknowledged on receipt would lose them all.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
import sqlalchemy as sa
from paho.mqtt.enums import CallbackAPIVersion

from cloud_hub.keys import KeyStore
from cloud_hub.registry import open_registry
from shared.messages import Event
from shared.net import free_port
from tests.conftest import PG_ADMIN_URL

pytestmark = pytest.mark.integration

N_EVENTS = 40


@pytest.fixture
def pg_database() -> Iterator[str]:
    name = f"fedfleet_ack_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    try:
        yield PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class Hub:
    def __init__(self, root: Path, db_url: str, prefix: str) -> None:
        self.root, self.port = root, free_port()
        KeyStore.init(root / "keys")
        self.config = root / "hub.toml"
        self.config.write_text(
            f'data_dir = "{root}"\ndb_url = "{db_url}"\nmqtt_url = "mqtt://127.0.0.1:1883"\n'
            f'topic_prefix = "{prefix}"\napi_port = {self.port}\nkeys_dir = "{root / "keys"}"\n'
            f'instance_id = "{prefix}"\n'
        )
        self.log = root / "hub.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "cloud_hub.cli", "serve", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.wait_for(lambda: self._get("/healthz") is not None, 60, "hub up")

    def _get(self, path: str) -> str | None:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None

    def received(self) -> float:
        for line in (self._get("/metrics") or "").splitlines():
            if line.startswith("fedfleet_ingest_received_total "):
                return float(line.split()[1])
        return 0.0

    def wait_for(self, cond: object, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not cond():  # type: ignore[operator]
            assert self.proc is None or self.proc.poll() is None, self.log.read_text()
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: timed out\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def _publish_events(prefix: str, count: int) -> None:
    client = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"dev-pub-{uuid.uuid4().hex[:8]}",
        protocol=mqtt.MQTTv5,
    )
    client.connect("127.0.0.1", 1883)
    client.loop_start()
    try:
        infos = [
            client.publish(
                f"{prefix}/v1/devices/dev-{i % 4}/events",
                Event(
                    device_id=f"dev-{i % 4}", event_id=f"must-keep-{i}", kind="installed"
                ).encode(),
                qos=1,
            )
            for i in range(count)
        ]
        for info in infos:
            info.wait_for_publish(10)  # the broker has it (PUBACK from the broker, not the hub)
    finally:
        client.disconnect()
        client.loop_stop()


def _blocked_on_lock(admin: sa.Connection, db: str) -> bool:
    sql = "select count(*) from pg_stat_activity where datname = :db and wait_event_type = 'Lock'"
    return bool(admin.execute(sa.text(sql), {"db": db}).scalar())


def test_hub_killed_between_receipt_and_commit_loses_no_must_keep_message(
    tmp_path: Path, pg_database: str
) -> None:
    open_registry(pg_database).close()  # schema in place before the lock is taken
    prefix = f"ack-{uuid.uuid4().hex[:8]}"
    hub = Hub(tmp_path / "hub", pg_database, prefix)
    db_name = pg_database.rsplit("/", 1)[1]
    engine = sa.create_engine(pg_database)
    observer = sa.create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    hub.start()
    try:
        with engine.connect() as locker, observer.connect() as watch:
            tx = locker.begin()
            locker.execute(sa.text("LOCK TABLE events IN ACCESS EXCLUSIVE MODE"))
            _publish_events(prefix, N_EVENTS)
            # every message is in the hub's process and its commit is waiting on our lock
            hub.wait_for(lambda: hub.received() >= N_EVENTS, 60, "hub received all")
            hub.wait_for(lambda: _blocked_on_lock(watch, db_name), 30, "commit blocked")
            hub.kill()
            tx.rollback()
        with engine.connect() as conn:
            assert conn.execute(sa.text("select count(*) from events")).scalar() == 0
        hub.start()  # same MQTT session: the broker delivers the unacknowledged messages again

        def stored() -> list[str]:
            with engine.connect() as conn:
                rows = conn.execute(sa.text("select event_id from events")).scalars()
                return sorted(rows)

        hub.wait_for(lambda: len(stored()) >= N_EVENTS, 60, "every event stored")
        time.sleep(1.0)  # a late duplicate delivery would show up now
        ids = stored()
        assert ids == sorted(f"must-keep-{i}" for i in range(N_EVENTS)), ids  # each exactly once
    finally:
        hub.stop()
        engine.dispose()
        observer.dispose()
