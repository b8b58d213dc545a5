"""When the ingest's writer starts a batch: ``flush_interval_s`` after the previous batch
started or after the first message arrived, whichever is later; at once for a full batch;
must-keep acknowledgements only after the commit."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_hub.ingest.admission import admit
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.state import IngestState
from cloud_hub.ingest.writer import BatchWriter, Listener
from cloud_hub.registry import Registry, open_registry, reports
from shared.messages import Event
from shared.topics import TopicScheme

SCHEME = TopicScheme("writer-test")
INTERVAL = 30.0  # far longer than any wait below: a batch that waits for it is seen waiting


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    yield reg
    reg.close()


def _until(check: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.01)
    return False


class _Writer:
    """A :class:`BatchWriter` on its own thread, fed through :func:`admit`."""

    def __init__(self, registry: Registry, config: IngestConfig, listener: Listener) -> None:
        self.registry, self.config = registry, config
        self.state = IngestState.for_config(config)
        self.writer = BatchWriter(
            registry, self.state, config, clock=time.time, listeners=[listener]
        )
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.writer.run, args=(self.stop,), daemon=True)
        self.acked: dict[str, float] = {}  # event id -> monotonic time of its ack
        self.stored_at_ack: list[int] = []

    def send(self, event_id: str) -> None:
        def ack() -> None:
            with self.registry.session() as s:
                self.stored_at_ack.append(reports.list_events(s, limit=100).total)
            self.acked[event_id] = time.monotonic()

        payload = Event(device_id="d1", event_id=event_id, kind="k").encode()
        topic = SCHEME.device("d1", "events")
        outcome = admit(
            self.state,
            SCHEME,
            topic,
            payload,
            now=time.time(),
            hold=ack,
            batch_max=self.config.batch_max,
        )
        assert outcome.held

    def __enter__(self) -> _Writer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        with self.state.lock:
            self.state.lock.notify_all()
        self.thread.join(10)
        assert not self.thread.is_alive()


def test_a_quiet_writer_gathers_an_interval_and_a_full_batch_goes_at_once(
    registry: Registry,
) -> None:
    config = IngestConfig(flush_interval_s=1.0, batch_max=4)
    with _Writer(registry, config, lambda _c: None) as w:
        sent = time.monotonic()
        w.send("e1")
        w.send("e2")
        assert _until(lambda: len(w.acked) == 2)
        assert min(w.acked.values()) - sent >= 0.9  # gathered for the interval: one batch
        assert w.stored_at_ack == [2, 2]  # acknowledged after the commit, not before
        w.writer.config = dataclasses.replace(config, flush_interval_s=INTERVAL)
        sent = time.monotonic()
        for i in range(3, 7):  # a full batch (4) does not wait for the interval
            w.send(f"e{i}")
        assert _until(lambda: len(w.acked) == 6), w.acked
        assert max(w.acked.values()) - sent < INTERVAL / 2


def test_under_load_commits_follow_back_to_back(registry: Registry) -> None:
    """A message that arrived while a slow batch was being written is written right after
    it, not an interval after it."""
    slow_batch = threading.Event()

    def slow(_counts: object) -> None:  # runs on the writer thread after each commit
        if not slow_batch.is_set():
            slow_batch.set()
            time.sleep(4.0)

    with _Writer(registry, IngestConfig(flush_interval_s=3.0), slow) as w:
        w.send("e1")
        assert _until(slow_batch.is_set)
        sent = time.monotonic()
        w.send("e2")  # while the first batch's commit is still busy (for 4 s)
        assert _until(lambda: "e2" in w.acked, timeout=15)
        # due 3 s after it arrived, the first batch busy until ~4 s: written at ~4 s, where
        # waiting an interval after the previous commit would take ~7 s
        assert w.acked["e2"] - sent < 5.5, w.acked["e2"] - sent


def test_flush_writes_what_the_stopped_writer_left(registry: Registry) -> None:
    config = IngestConfig(flush_interval_s=INTERVAL)
    state = IngestState.for_config(config)
    writer = BatchWriter(registry, state, config, clock=time.time, listeners=[])
    acked: list[int] = []
    for i in range(3):
        payload = Event(device_id=f"d{i}", event_id=f"e{i}", kind="k").encode()
        admit(
            state,
            SCHEME,
            SCHEME.device(f"d{i}", "events"),
            payload,
            now=time.time(),
            hold=lambda i=i: acked.append(i),  # type: ignore[misc]
            batch_max=config.batch_max,
        )
    assert acked == []
    writer.flush()
    assert sorted(acked) == [0, 1, 2]
    with registry.session() as s:
        assert reports.list_events(s).total == 3


def test_a_slow_batch_is_logged_with_its_size_and_where_the_time_went(
    registry: Registry, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import cloud_hub.ingest.writer as writer_module

    config = IngestConfig(flush_interval_s=INTERVAL)
    state = IngestState.for_config(config)
    writer = BatchWriter(registry, state, config, clock=time.time, listeners=[])
    for i in range(3):
        payload = Event(device_id=f"d{i % 2}", event_id=f"e{i}", kind="k").encode()
        topic = SCHEME.device(f"d{i % 2}", "events")
        admit(state, SCHEME, topic, payload, now=time.time(), hold=None, batch_max=100)
    writer.flush()  # as fast as it goes: not slow
    assert "took" not in caplog.text
    monkeypatch.setattr(writer_module, "SLOW_COMMIT_S", 0.0)
    payload = Event(device_id="d9", event_id="e9", kind="k").encode()
    admit(
        state,
        SCHEME,
        SCHEME.device("d9", "events"),
        payload,
        now=time.time(),
        hold=None,
        batch_max=100,
    )
    writer.flush()
    assert "ingest batch of 1 (1 devices) took" in caplog.text
