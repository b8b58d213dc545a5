"""The ingest acknowledges a must-keep message to the broker only after committing it."""

from __future__ import annotations

import threading
from pathlib import Path

from cloud_hub.ingest import FleetIngest, IngestConfig, IngestConnection
from cloud_hub.ingest.fairness import Admission
from cloud_hub.registry import open_registry, reports
from shared.messages import Event, Telemetry
from shared.topics import TopicScheme

SCHEME = TopicScheme("acktest")
T0 = 1_800_000_000.0


def test_events_are_acked_after_commit_and_garbage_at_once(tmp_path: Path) -> None:
    reg = open_registry(f"sqlite:///{tmp_path / 'hub.db'}")
    ingest = FleetIngest(
        reg, scheme=SCHEME, mqtt_settings=IngestConnection(), config=IngestConfig()
    )
    acked: list[str] = []
    committed_at_ack: list[int] = []

    def ack_for(name: str):  # type: ignore[no-untyped-def]
        def ack() -> None:
            with reg.session() as s:
                committed_at_ack.append(len(reports.list_events(s, device_id="d1").items))
            acked.append(name)

        return ack

    event = Event(device_id="d1", event_id="e1", kind="committed", ts=T0).encode()
    assert (
        ingest.submit(SCHEME.device("d1", "events"), event, on_commit=ack_for("event"))
        is Admission.ACCEPTED
    )
    assert acked == []  # held: not yet in the registry
    ingest.submit(SCHEME.device("d1", "events"), b"{garbage", on_commit=ack_for("garbage"))
    tele = Telemetry(device_id="d1", seq=1, metrics={"cpu": 1.0}, ts=T0).encode()
    ingest.submit(SCHEME.device("d1", "telemetry"), tele, on_commit=ack_for("telemetry"))
    assert acked == ["garbage", "telemetry"]  # never stored / droppable: acked at once

    writer = threading.Thread(target=ingest._write_loop, daemon=True)  # the writer alone, no broker
    writer.start()
    assert ingest.wait_idle(10)
    ingest._stop.set()
    with ingest._lock:
        ingest._lock.notify_all()
    writer.join(5)
    assert acked[-1] == "event"
    assert committed_at_ack[-1] == 1  # the event was in the registry when it was acked
    reg.close()
