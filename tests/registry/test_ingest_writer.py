"""When the ingest's writer starts a batch: at once for the first message after a quiet
spell, then not before ``flush_interval_s`` since the previous batch started unless a full
batch is queued; must-keep acknowledgements only after the commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from cloud_hub.ingest.admission import admit
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.state import IngestState
from cloud_hub.ingest.writer import BatchWriter
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


def test_batches_start_at_once_then_at_most_once_per_interval(registry: Registry) -> None:
    config = IngestConfig(flush_interval_s=INTERVAL, batch_max=4)
    state = IngestState.for_config(config)
    writer = BatchWriter(registry, state, config, clock=time.time, listeners=[])
    stop = threading.Event()
    thread = threading.Thread(target=writer.run, args=(stop,), daemon=True)
    thread.start()
    acked: list[str] = []
    stored_at_ack: list[int] = []

    def send(event_id: str) -> None:
        def ack() -> None:
            with registry.session() as s:
                stored_at_ack.append(reports.list_events(s, limit=100).total)
            acked.append(event_id)

        payload = Event(device_id="d1", event_id=event_id, kind="k").encode()
        topic = SCHEME.device("d1", "events")
        outcome = admit(state, SCHEME, topic, payload, now=time.time(), hold=ack, batch_max=4)
        assert outcome.held

    try:
        send("e1")  # a quiet writer: written now, not after the interval
        assert _until(lambda: acked == ["e1"]), acked
        assert stored_at_ack == [1]  # acknowledged after its commit, not before
        send("e2")  # within the interval of the previous batch: waits for it
        time.sleep(0.5)
        assert acked == ["e1"]
        for i in range(3, 6):  # a full batch (4 queued) does not wait
            send(f"e{i}")
        assert _until(lambda: len(acked) == 5), acked
        assert stored_at_ack[-1] == 5
    finally:
        stop.set()
        with state.lock:
            state.lock.notify_all()
        thread.join(10)
    assert not thread.is_alive()


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
