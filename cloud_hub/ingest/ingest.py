"""The MQTT ingest: the I/O shell around :mod:`.admission` and :mod:`.writer`.

paho's network thread only classifies a message and offers it to the fair queue
(:func:`.admission.admit`, under a lock); the writer thread (:class:`.writer.BatchWriter`)
drains the queue round-robin into a batch and commits one transaction per batch,
acknowledging must-keep messages to the broker only after their batch commits.

The session is persistent (``clean_start=False`` with a session expiry), so the broker
keeps QoS 1 messages for the hub while it restarts.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import paho.mqtt.client as mqtt

from cloud_hub.broker_client import ConnectionHooks, HubRole, connect_client, create_client
from cloud_hub.enrollment.hub_identity import DEFAULT_HUB_USER
from cloud_hub.errors import DeliveryError
from cloud_hub.ingest.admission import Received, admit_all
from cloud_hub.ingest.config import IngestConfig
from cloud_hub.ingest.fairness import Admission
from cloud_hub.ingest.intake import INGEST_CHANNELS, Inbound, Rejected
from cloud_hub.ingest.state import IngestState
from cloud_hub.ingest.stats import IngestStats, merged
from cloud_hub.ingest.workers import TELEMETRY, WorkerPool
from cloud_hub.ingest.writer import BatchWriter, Listener
from cloud_hub.registry import Registry
from shared.broker_endpoint import BrokerEndpoint
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


class FleetIngest:
    """Subscribes to every device's uplink channels and keeps the registry current.

    ``channels``: the uplink channels this connection reads (default: all the ingest's),
    through the shared subscription ``$share/shared_group/...`` when a group is given.
    ``pool``: worker processes that take the telemetry channel over (:mod:`.workers`); this
    connection then reads the other channels only."""

    def __init__(
        self,
        registry: Registry,
        *,
        scheme: TopicScheme,
        mqtt_settings: IngestConnection,
        config: IngestConfig = IngestConfig(),
        clock: Callable[[], float] = time.time,
        channels: Sequence[str] = tuple(INGEST_CHANNELS),
        shared_group: str | None = None,
        pool: WorkerPool | None = None,
    ) -> None:
        self.registry = registry
        self.pool = pool
        self.channels = tuple(c for c in channels if pool is None or c != TELEMETRY)
        self.shared_group = shared_group
        self.scheme = scheme
        self.settings = mqtt_settings
        self.config = config
        self._clock = clock
        self._state = IngestState.for_config(config)
        self._lock = self._state.lock
        self._listeners: list[Listener] = []
        self._observers: list[Callable[[Inbound], None]] = []
        self._batches = BatchWriter(
            registry, self._state, config, clock=clock, listeners=self._listeners
        )
        self._stop = threading.Event()
        self._writer: threading.Thread | None = None
        self._connected = threading.Event()
        self._connect_error = ""
        self._client = self._make_client()

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> None:
        """Start the worker processes (if any), connect, subscribe, start the writer thread
        and wait for the workers' subscriptions (raises ``DeliveryError``)."""
        if self.pool is not None:
            self.pool.start()  # they import and connect while this connection comes up
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
        if self.pool is not None:
            self.pool.wait_ready()

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
            return self._state.counts["received"]

    def stop(self, *, flush: bool = True) -> None:
        """Stop the worker processes (each writes what it holds), disconnect and (by
        default) write what is still queued."""
        if self.pool is not None:
            self.pool.stop()
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
            self._batches.flush()

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
        return self.submit_all([Received(topic, payload, on_commit)])[0]

    def submit_all(self, received: list[Received]) -> list[Admission | Rejected | None]:
        """:meth:`submit` for many messages at once, in order (all of one socket read)."""
        everything = admit_all(
            self._state,
            self.scheme,
            received,
            now=self._clock(),
            batch_max=self.config.batch_max,
        )
        for r, admitted in zip(received, everything, strict=True):
            if r.hold is not None and not admitted.held:
                r.hold()
            if admitted.message is not None:
                for observer in self._observers:
                    observer(admitted.message)
        return [admitted.outcome for admitted in everything]

    # -- writing (writer thread) -------------------------------------------------------------
    def _write_loop(self) -> None:
        self._batches.run(self._stop)

    def stats(self) -> IngestStats:
        """This connection's counters, with the worker processes' added (:func:`.merged`)."""
        own = self._own_stats()
        return own if self.pool is None else merged(own, self.pool.stats())

    def _own_stats(self) -> IngestStats:
        state = self._state
        with self._lock:
            return IngestStats(
                received=state.counts["received"],
                accepted=state.counts["accepted"],
                queued=len(state.queue),
                written=state.counts["written"],
                batches=state.counts["batches"],
                rejected=dict(state.rejected),
                dropped=dict(state.dropped),
                duplicates=state.counts["duplicates"],
                write_errors=state.counts["write_errors"],
                events_new=state.counts["events_new"],
                drift_new=state.counts["drift_new"],
                lag_p95_s=state.lag_p95(),
                connected=self._connected.is_set(),
            )

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until everything accepted so far on this connection is written (tests,
        shutdown)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            s = self._own_stats()
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
            stream=True,
            hooks=ConnectionHooks(
                connected=self._on_connected,
                refused=self._on_refused,
                dropped=self._on_dropped,
                subscribed=self._on_subscribed,
                message=self._on_message,
                messages=self._on_messages,
            ),
        )

    def _on_connected(self, client: mqtt.Client) -> None:
        # subscribe on every connect: the broker may have lost the session
        client.subscribe([(self.topic_filter(c), 1) for c in self.channels])
        if self.pool is not None:  # a session from a run without workers still has it
            client.unsubscribe(self.scheme.all_devices(TELEMETRY))

    def topic_filter(self, channel: str) -> str:
        """The subscription for ``channel``: every device's, shared when a group is set."""
        topic = self.scheme.all_devices(channel)
        return topic if self.shared_group is None else f"$share/{self.shared_group}/{topic}"

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
        self._on_messages([msg])

    def _on_messages(self, messages: list[mqtt.MQTTMessage]) -> None:
        received = [
            Received(m.topic, bytes(m.payload), self._ack_for(m) if m.qos else None)
            for m in messages
        ]
        try:
            self.submit_all(received)
        except Exception:  # never kill paho's network thread
            log.exception("ingest failed on %d message(s)", len(received))
            for r in received:  # acknowledging twice is harmless, never doing it is not
                if r.hold is not None:
                    r.hold()

    def _ack_for(self, msg: mqtt.MQTTMessage) -> Callable[[], None]:
        mid, qos, client = msg.mid, msg.qos, self._client

        def ack() -> None:
            client.ack(mid, qos)

        return ack
