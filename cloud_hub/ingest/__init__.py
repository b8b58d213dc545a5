"""Fleet ingest: device hello/status/telemetry/drift/events from MQTT into the registry.

- :mod:`.intake` — classify one received message (pure).
- :mod:`.fairness` — token buckets and bounded per-device queues, drained round-robin.
- :mod:`.batch` — fold messages into a batch; write it idempotently.
- :mod:`.state` — what the network thread and the writer thread share (queue, counters).
- :mod:`.admission` — admit the messages of one socket read into the queue (network thread).
- :mod:`.writer` — drain the queue into batches and commit them (writer thread).
- :mod:`.ingest` — the paho-mqtt shell (:class:`FleetIngest`).
- :mod:`.workers` — telemetry over ``$share`` subscriptions in worker processes.
- :mod:`.stats` — the counters, summed over the worker processes.
"""

from cloud_hub.ingest.batch import BatchCounts, IngestBatch, write_batch
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.fairness import Admission, FairQueue, RecentKeys, TokenBucket
from cloud_hub.ingest.ingest import FleetIngest, IngestConnection, IngestStats
from cloud_hub.ingest.intake import INGEST_CHANNELS, Inbound, Rejected, classify

__all__ = [
    "INGEST_CHANNELS",
    "Admission",
    "BatchCounts",
    "FairQueue",
    "FleetIngest",
    "Inbound",
    "IngestBatch",
    "IngestConfig",
    "IngestConnection",
    "IngestStats",
    "RecentKeys",
    "Rejected",
    "TokenBucket",
    "classify",
    "write_batch",
]
