"""The MQTT ingest: the I/O shell around :mod:`.intake`, :mod:`.fairness` and :mod:`.batch`.

paho's network thread only classifies a message and offers it to the :class:`FairQueue`
(under a lock); a writer thread drains the queue round-robin into an :class:`IngestBatch`
and commits one transaction per batch. A batch whose commit fails is kept and written
again (every write is idempotent), so a database hiccup loses nothing the queue accepted.

The session is persistent (``clean_start=False`` with a session expiry), so the broker
keeps QoS 1 messages for the hub while it restarts.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from cloud_hub.broker_client import ConnectionHooks, HubRole, connect_client, create_client
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER
from cloud_hub.errors import DeliveryError
from cloud_hub.ingest.batch import BatchCounts, IngestBatch, write_batch
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.fairness import Admission, FairQueue, RecentKeys
from cloud_hub.ingest.intake import INGEST_CHANNELS, Inbound, Rejected, classify
from cloud_hub.registry import Registry
from cloud_hub.registry.errors import TRANSIENT_DATABASE_ERRORS, DatabaseError
from shared.broker_endpoint import BrokerEndpoint
from shared.errors import MalformedMessageError
from shared.messages import MAX_MESSAGE_BYTES, Telemetry
from shared.topics import TopicScheme

__all__ = ["FleetIngest", "IngestConnection", "IngestStats"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class IngestConnection:
    """How the ingest connects to the broker: endpoint, client id, session (built into a paho
    client by :mod:`cloud_hub.broker_client`)."""

    endpoint: BrokerEndpoint = field(default_factory=BrokerEndpoint)
    # IDENTITY:ROLE:INSTANCE, see cloud_hub.broker_client.hub_client_id (#15)
    client_id: str = f"{DEFAULT_HUB_USER}:{HubRole.INGEST.value}:default"
    keepalive_s: int = 30
    session_expiry_s: int = 3600
    receive_maximum: int = 65535
    connect_timeout_s: float = 10.0


@dataclass(frozen=True)
class IngestStats:
    """A snapshot of the ingest counters (for ``/metrics`` and tests)."""

    received: int
    accepted: int
    queued: int
    written: int
    batches: int
    rejected: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    duplicates: int = 0
    write_errors: int = 0
    events_new: int = 0
    drift_new: int = 0
    lag_p95_s: float = 0.0  # received → committed, over recent messages
    connected: bool = False


Listener = Callable[[BatchCounts], None]


class FleetIngest:
    """Subscribes to every device's uplink channels and keeps the registry current."""

    def __init__(
        self,
        registry: Registry,
        *,
        scheme: TopicScheme,
        mqtt_settings: IngestConnection,
        config: IngestConfig = IngestConfig(),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self.scheme = scheme
        self.settings = mqtt_settings
        self.config = config
        self._clock = clock
        self._lock = threading.Condition()
        self._queue: FairQueue[Inbound] = FairQueue(
            capacity=config.per_device_queue,
            rate_per_s=config.telemetry_rate_per_s,
            burst=config.telemetry_burst,
            max_devices=config.max_devices,
        )
        self._recent = RecentKeys(max_devices=config.max_devices)
        self._counts: Counter[str] = Counter()
        self._rejected: Counter[str] = Counter()
        self._dropped: Counter[str] = Counter()
        self._lags: deque[float] = deque(maxlen=10_000)
        self._listeners: list[Listener] = []
        self._observers: list[Callable[[Inbound], None]] = []
        self._pending = IngestBatch(max_metrics=config.max_metrics)  # the writer thread's
        # QoS 1 acknowledgements held until the message is committed: a hub killed between
        # receipt and commit gets it again from the broker (persistent session) instead of
        # losing it. Keyed by the queued item's identity while it waits in the fair queue.
        self._held_acks: dict[int, Callable[[], None]] = {}
        self._pending_acks: list[Callable[[], None]] = []
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._connected = threading.Event()
        self._connect_error = ""
        self._client = self._make_client()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Connect, subscribe, and start the writer thread (raises ``DeliveryError``)."""
        self._writer = threading.Thread(target=self._write_loop, name="fleet-ingest", daemon=True)
        self._writer.start()
        # persistent session; let the broker keep many QoS 1 messages in flight to us
        # (Mosquitto's queue for a slow subscriber is small and drops silently beyond it)
        try:
            connect_client(
                self._client,
                self.settings.endpoint,
                keepalive_s=self.settings.keepalive_s,
                persistent=True,
                session_expiry_s=self.settings.session_expiry_s,
                receive_maximum=self.settings.receive_maximum,
            )
        except DeliveryError:
            self.stop()
            raise
        self._client.loop_start()
        if not self._wait_subscribed():
            self.stop()
            raise DeliveryError(
                f"broker {self.settings.endpoint.url} did not accept the ingest "
                f"({self.settings.client_id}): {self._connect_error or 'timeout'}"
            )

    def _wait_subscribed(self) -> bool:
        """Wait until the broker grants the subscriptions, or a message arrives: a resumed
        session delivers what the broker queued for it before it answers the SUBSCRIBE (after
        a hub restart under a large fleet, minutes of messages), and a message can only come
        through a subscription the session already has. Gives up after ``connect_timeout_s``
        without either."""
        received = self._received()
        deadline = time.monotonic() + self.settings.connect_timeout_s
        while not self._connected.wait(min(0.1, max(0.0, deadline - time.monotonic()))):
            if self._received() != received:
                return True
            if time.monotonic() >= deadline:
                return False
        return True

    def _received(self) -> int:
        with self._lock:
            return self._counts["received"]

    def stop(self, *, flush: bool = True) -> None:
        """Disconnect and (by default) write what is still queued."""
        self._stop.set()
        try:
            self._client.disconnect()
            self._client.loop_stop()
        except Exception:  # already down: nothing to release
            log.debug("ingest disconnect", exc_info=True)
        with self._lock:
            self._lock.notify_all()
        if self._writer is not None:
            self._writer.join(timeout=30)
            self._writer = None
        if flush:
            self._flush_all()

    def add_observer(self, observer: Callable[[Inbound], None]) -> None:
        """Call ``observer`` (on the network thread, before the write) with every admitted
        device message: the hub's delivery follows its deployments from here instead of
        subscribing to the same channels a second time. It must return quickly."""
        self._observers.append(observer)

    def add_listener(self, listener: Listener) -> None:
        """Call ``listener`` (on the writer thread) after every committed batch, e.g. to wake
        the rollout engine when new events arrived."""
        self._listeners.append(listener)

    # -- feeding (network thread, or tests directly) ----------------------------------------
    def submit(
        self, topic: str, payload: bytes, *, on_commit: Callable[[], None] | None = None
    ) -> Admission | Rejected | None:
        """Classify and enqueue one message; returns what happened to it.

        ``on_commit`` (the broker acknowledgement) runs once the message is committed, or at
        once when it will never be (rejected, duplicate, rate limited, dropped) or is
        telemetry, which is droppable by design and would only hold broker flight slots."""
        outcome, held, admitted = self._admit(topic, payload, hold=on_commit)
        if on_commit is not None and not held:
            on_commit()
        if admitted is not None:
            for observer in self._observers:
                observer(admitted)
        return outcome

    def _admit(
        self, topic: str, payload: bytes, *, hold: Callable[[], None] | None
    ) -> tuple[Admission | Rejected | None, bool, Inbound | None]:
        """What happened to the message, whether its acknowledgement (``hold``) now waits for
        the commit, and the message if it was admitted."""
        now = self._clock()
        if topic.endswith("/telemetry"):
            # spend the device's telemetry token before paying for the decode: a flood is
            # dropped at the cost of a topic split
            try:
                sender = self.scheme.parse_device_topic(topic).device_id
            except MalformedMessageError:
                sender = None
            if sender is not None:
                with self._lock:
                    if not self._queue.take_token(sender, now):
                        self._counts["received"] += 1
                        self._dropped[Admission.RATE_LIMITED.value] += 1
                        return Admission.RATE_LIMITED, False, None
        result = classify(self.scheme, topic, payload, received_at=now, max_bytes=MAX_MESSAGE_BYTES)
        with self._lock:
            self._counts["received"] += 1
            if result is None:
                return None, False, None
            if isinstance(result, Rejected):
                self._rejected[result.kind] += 1
                seen = self._rejected[result.kind]
                if seen <= 10 or seen & (seen - 1) == 0:  # a flood of garbage: log sparsely
                    log.warning(
                        "rejected %s message on %s (%d so far): %s",
                        result.kind,
                        topic,
                        seen,
                        result.reason,
                    )
                return result, False, None
            msg = result.message
            telemetry = isinstance(msg, Telemetry)
            if isinstance(msg, Telemetry) and self._recent.seen_before(
                result.device_id, (msg.seq, msg.ts)
            ):
                self._counts["duplicates"] += 1
                return None, False, None
            admission = self._queue.offer(
                result.device_id, result, droppable=telemetry, now=now, rate_checked=telemetry
            )
            if admission in (Admission.ACCEPTED, Admission.EVICTED_OLDEST):
                self._counts["accepted"] += 1
            if admission is not Admission.ACCEPTED:
                self._dropped[admission.value] += 1
            held = admission is Admission.ACCEPTED and not telemetry and hold is not None
            if held:
                assert hold is not None
                self._held_acks[id(result)] = hold
            if len(self._queue) >= self.config.batch_max:
                self._lock.notify_all()
            admitted = admission in (Admission.ACCEPTED, Admission.EVICTED_OLDEST)
            return admission, held, result if admitted else None

    # -- writing (writer thread) -------------------------------------------------------------
    def _write_loop(self) -> None:
        while not self._stop.is_set():
            pending = self._pending
            room = self.config.batch_max - len(pending)  # bounded even while the DB is down
            with self._lock:
                if len(self._queue) < self.config.batch_max and not len(pending):
                    self._lock.wait(self.config.flush_interval_s)
                items = self._queue.drain(room) if room > 0 else []
                self._pending_acks.extend(
                    ack for _, inbound in items if (ack := self._held_acks.pop(id(inbound), None))
                )
            for _, inbound in items:
                pending.apply(inbound)
            if not len(pending):
                continue
            if self._write(pending):
                self._pending = IngestBatch(max_metrics=self.config.max_metrics)
                self._release_acks()
            else:
                self._stop.wait(self.config.retry_backoff_s)

    def _flush_all(self) -> None:
        """Write the held batch and everything still queued (after the writer stopped)."""
        while True:
            if len(self._pending):
                if not self._write(self._pending):
                    return  # the database is down: the broker redelivers what was not acked
                self._pending = IngestBatch(max_metrics=self.config.max_metrics)
                self._release_acks()
            with self._lock:
                items = self._queue.drain(self.config.batch_max)
                self._pending_acks.extend(
                    ack for _, inbound in items if (ack := self._held_acks.pop(id(inbound), None))
                )
            if not items:
                return
            for _, inbound in items:
                self._pending.apply(inbound)

    def _release_acks(self) -> None:
        acks, self._pending_acks = self._pending_acks, []
        for ack in acks:
            try:
                ack()
            except Exception:  # disconnected meanwhile: the broker will redeliver (idempotent)
                log.debug("ack after commit failed", exc_info=True)

    def _write(self, batch: IngestBatch) -> bool:
        """Commit ``batch``; ``False`` (keep it, retry later) when the database is away.

        A batch the database refuses for its content (a value intake did not foresee) is
        written message by message instead, so only the offending message is dropped."""
        try:
            with self.registry.session() as session:
                counts = write_batch(session, batch, now=self._clock())
        except TRANSIENT_DATABASE_ERRORS as exc:
            with self._lock:
                self._counts["write_errors"] += 1
            log.warning("ingest batch of %d not written (will retry): %s", len(batch), exc)
            return False
        except DatabaseError as exc:
            log.warning("ingest batch of %d refused (%s); writing one by one", len(batch), exc)
            return self._write_singly(batch)
        return self._account(batch, counts)

    def _account(self, batch: IngestBatch, counts: BatchCounts) -> bool:
        done = self._clock()
        seen = 0
        with self._lock:
            self._counts["written"] += batch.messages - counts.removed_refused
            self._counts["batches"] += 1
            self._counts["events_new"] += counts.events_new
            self._counts["drift_new"] += counts.drift_new
            self._lags.extend(done - r for r in batch.received_at)
            if counts.removed_refused:
                self._rejected["removed_device"] += counts.removed_refused
                seen = self._rejected["removed_device"]
        if counts.removed_refused and (seen <= 10 or seen & (seen - 1) == 0):
            log.warning(
                "refused %d message(s) of removed device(s) %s (%d so far): re-enroll an id "
                "(`cloud-hub enroll-token --device-id ID`) to readmit it",
                counts.removed_refused,
                ", ".join(counts.removed_devices[:5]),
                seen,
            )
        for listener in self._listeners:
            try:
                listener(counts)
            except Exception:
                log.exception("ingest listener failed")
        return True

    def _write_singly(self, batch: IngestBatch) -> bool:
        total = Counter[str]()
        removed: set[str] = set()
        for item in batch.items:
            single = IngestBatch(max_metrics=self.config.max_metrics)
            single.apply(item)
            try:
                with self.registry.session() as session:
                    counts = write_batch(session, single, now=self._clock())
                total.update(dataclasses.asdict(counts) | {"removed_devices": 0})
                removed.update(counts.removed_devices)
            except TRANSIENT_DATABASE_ERRORS:
                return False  # the database went away meanwhile: retry the whole batch
            except DatabaseError as exc:
                with self._lock:
                    self._rejected["unstorable"] += 1
                log.warning(
                    "dropped an unstorable %s from %s: %s", item.channel, item.device_id, exc
                )
        sums = {f.name: total[f.name] for f in dataclasses.fields(BatchCounts)}
        del sums["removed_devices"]
        merged = BatchCounts(**sums, removed_devices=tuple(sorted(removed)))
        return self._account(batch, merged)

    def stats(self) -> IngestStats:
        with self._lock:
            lags = sorted(self._lags)
            p95 = lags[min(len(lags) - 1, int(0.95 * len(lags)))] if lags else 0.0
            return IngestStats(
                received=self._counts["received"],
                accepted=self._counts["accepted"],
                queued=len(self._queue),
                written=self._counts["written"],
                batches=self._counts["batches"],
                rejected=dict(self._rejected),
                dropped=dict(self._dropped),
                duplicates=self._counts["duplicates"],
                write_errors=self._counts["write_errors"],
                events_new=self._counts["events_new"],
                drift_new=self._counts["drift_new"],
                lag_p95_s=p95,
                connected=self._connected.is_set(),
            )

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted so far is written (tests, shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self.stats()
            if s.queued == 0 and s.written >= s.accepted - s.dropped.get("evicted_oldest", 0):
                return True
            time.sleep(0.02)
        return False

    # -- paho --------------------------------------------------------------------------------
    def _make_client(self) -> mqtt.Client:
        return create_client(
            self.settings.endpoint,
            client_id=self.settings.client_id,
            persistent=True,
            manual_ack=True,  # acknowledge after the commit (see submit)
            hooks=ConnectionHooks(
                connected=self._on_connected,
                refused=self._on_refused,
                dropped=self._on_dropped,
                subscribed=self._on_subscribed,
                message=self._on_message,
            ),
        )

    def _on_connected(self, client: mqtt.Client) -> None:
        # subscribe on every connect: the broker may have lost the session
        client.subscribe([(self.scheme.all_devices(c), 1) for c in INGEST_CHANNELS])

    def _on_refused(self, reason: str) -> None:
        self._connect_error = reason

    def _on_subscribed(self, failed: list[str]) -> None:
        if failed:
            self._connect_error = f"subscription refused: {', '.join(failed)}"
            log.error("ingest %s", self._connect_error)
            return
        self._connected.set()

    def _on_dropped(self, reason: str) -> None:
        self._connected.clear()
        if not self._stop.is_set():
            log.warning("ingest lost the broker (%s); reconnecting", reason)

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        ack = None
        if msg.qos > 0:
            mid, qos, client = msg.mid, msg.qos, self._client

            def ack() -> None:
                client.ack(mid, qos)

        try:
            self.submit(msg.topic, bytes(msg.payload), on_commit=ack)
        except Exception:  # never kill paho's network thread
            log.exception("ingest failed on %s", msg.topic)
            if ack is not None:
                ack()
