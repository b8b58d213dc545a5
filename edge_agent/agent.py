"""The agent's main loop: one worker thread that owns all state, fed by the MQTT link.

Threads: paho's network thread (receives, reconnects), the outbox flusher (sends), and the
worker (everything else). Inbound messages, timer ticks and connection events are handled
in the worker one at a time; an inbound message is acknowledged to the broker only after it
was handled. The one exception is a chunk of the running download: the network thread
writes it itself (under the download's own lock, never behind the worker's synced writes)
and hands the worker only the download's completion.

Plug-in points for the other agent packages:

- :meth:`EdgeAgent.add_reporter` — a periodic producer of ``Telemetry``/``DriftReport``/…
  messages (telemetry, drift);
- :meth:`EdgeAgent.on_model_changed` — called with the new active slot after a commit or a
  rollback, and once at start (the model server hot-swaps);
- :meth:`EdgeAgent.add_command_handler` — e.g. ``TrainCommand`` for federated training;
- :meth:`EdgeAgent.add_status_fields` — runtime/provider/health fields of the status;
- ``health_check=`` — a backend-aware replacement for the ONNX smoke inference.
"""

from __future__ import annotations

import importlib.metadata
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edge_agent.config import AgentConfig
from edge_agent.errors import AgentError
from edge_agent.ota import InstalledSlot, OtaUpdater
from edge_agent.ota.freshness import TrustUpdates
from edge_agent.ota.health import HealthCheck
from edge_agent.ota.transfer import Intake
from edge_agent.transport import InboundMessage, MqttLink, Outbox
from edge_agent.transport.outbox import Pending
from shared.device_facts import detect_device_facts
from shared.errors import ConfigError, ProtocolError
from shared.messages import (
    DeployCommand,
    Hello,
    Message,
    PingCommand,
    RollbackCommand,
    Status,
    TrainCommand,
    decode_message,
)
from shared.uplink import uplink_of

__all__ = ["EdgeAgent", "Reporter"]

log = logging.getLogger(__name__)

Reporter = Callable[[], Iterable[Message]]
_CONNECTED = object()
_DOWNLOAD_LANDED = object()  # the network thread wrote a download's last chunk
_CHUNK_FRAME_SLACK = 8 * 1024  # frame header on top of a chunk's data


@dataclass(frozen=True)
class _Received:
    message: InboundMessage
    acked: bool  # chunks are acknowledged on arrival while the inbox has room


@dataclass
class _Periodic:
    interval_s: float
    produce: Reporter
    next_at: float = 0.0


def _agent_version() -> str:
    try:
        return importlib.metadata.version("fedfleet")
    except importlib.metadata.PackageNotFoundError:
        return "0.0.0"


def _ort_runtimes() -> list[str]:
    try:
        import onnxruntime as ort

        return [f"onnxruntime:{p}" for p in ort.get_available_providers()]
    except Exception as exc:  # a device without onnxruntime still reports itself
        log.warning("onnxruntime unavailable: %s", exc)
        return []


class EdgeAgent:
    def __init__(
        self,
        config: AgentConfig,
        *,
        health_check: HealthCheck | None = None,
        runtimes: Sequence[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.topics = config.mqtt.topics
        self._clock = clock
        self.runtimes = list(runtimes) if runtimes is not None else _ort_runtimes()
        self.facts = detect_device_facts()  # CPU model, ISA flags, GPU: sent in every hello
        did = config.device_id
        self._cmd_topic = self.topics.device(did, "cmd")
        self._repair_topic = self.topics.device(did, "chunks")
        self._bundle_prefix = f"{self.topics.root}/bundles/"
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.outbox = Outbox(
            config.state_dir / "outbox.sqlite3", max_entries=config.limits.max_outbox_entries
        )
        self.link = MqttLink(
            settings=config.mqtt,
            client_id=config.client_id,
            outbox=self.outbox,
            on_message=self._receive,
            on_connect=lambda: self._put(_CONNECTED),
            will=(self.topics.device(did, "status"), Status(device_id=did, online=False).encode()),
            max_inbound_bytes=max(config.limits.max_chunk_bytes, config.limits.max_message_bytes),
        )
        self.updater = OtaUpdater(
            device_id=did,
            device_class=config.device_class,
            state_dir=config.state_dir,
            trust=config.load_trust_root(),
            topics=self.topics,
            emit=self.report,
            subscribe=self.link.subscribe,
            unsubscribe=self.link.unsubscribe,
            timeouts=config.timeouts,
            limits=config.limits,
            health_check=health_check,
            clock=clock,
        )
        self.updater.active_changed.append(lambda _slot: self.publish_status())
        # R10: the retained keyring and freshness topics, applied on receipt (no deploy needed)
        self.trust_updates = TrustUpdates(
            device_id=did,
            device_class=config.device_class,
            trust=self.updater.trust,
            store=self.updater.trusted,
            installed=lambda: self.updater.status().installed,
            emit=self.report,
            clock=clock,
        )
        self._trust_handlers: dict[str, Callable[[bytes], None]] = {
            self.topics.trust("keyring"): self.trust_updates.handle_keyring,
            self.topics.trust("freshness"): self.trust_updates.handle_freshness,
        }
        self._inbox: queue.Queue[object] = queue.Queue(maxsize=config.limits.max_inbox_messages)
        self._inbox_lock = threading.Lock()
        self._inbox_bytes = 0
        self._periodic: list[_Periodic] = []
        self._handlers: dict[type[Message], Callable[[Any], None]] = {
            DeployCommand: self.updater.handle_deploy,
            RollbackCommand: self.updater.handle_rollback,
            PingCommand: lambda _cmd: self._announce(),
        }
        self._status_fields: list[Callable[[], Mapping[str, Any]]] = []
        self._running = threading.Event()
        self._worker: threading.Thread | None = None
        self._next_tick = 0.0
        self._next_status = 0.0
        self.add_reporter(self.trust_updates.policy.check_interval_s, self.trust_updates.check)
        self.add_status_fields(self.trust_updates.status_fields)

    # ------------------------------------------------------------------ plug-in points
    def add_reporter(self, interval_s: float, produce: Reporter) -> None:
        """Call ``produce`` every ``interval_s`` on the worker thread; send what it returns."""
        self._periodic.append(_Periodic(interval_s, produce, self._clock() + interval_s))

    def on_model_changed(self, callback: Callable[[InstalledSlot | None], None]) -> None:
        """``callback(slot)`` after every change of the active model (and once at start)."""
        self.updater.active_changed.append(callback)

    def add_command_handler(self, cls: type[Message], handler: Callable[[Any], None]) -> None:
        self._handlers[cls] = handler

    def add_status_fields(self, provide: Callable[[], Mapping[str, Any]]) -> None:
        """Extra ``Status`` fields (``runtime``, ``provider``, ``healthy``, ``extra``)."""
        self._status_fields.append(provide)

    @property
    def active_model(self) -> InstalledSlot | None:
        return self.updater.slots.active()

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Recover OTA state from disk, then connect and serve (returns at once)."""
        self.updater.recover()
        for topic in (
            self._cmd_topic,
            self._repair_topic,
            *self._trust_handlers,
            *self.updater.subscriptions(),
        ):
            self.link.subscribe(topic)
        last = self.updater.deployment
        if last is not None and last.kind == "deploy" and last.bundle_id:
            self.link.forget_on_connect(self.topics.bundle_chunks(last.bundle_id))
        self._running.set()
        self._worker = threading.Thread(target=self._work, name="agent-worker", daemon=True)
        self._worker.start()
        self.link.start()
        active = self.active_model
        for callback in list(self.updater.active_changed):
            try:
                callback(active)
            except Exception:
                log.exception("active-model listener failed at start")

    def stop(self, *, drain_s: float = 2.0) -> None:
        """Report offline, flush what can be flushed within ``drain_s``, disconnect."""
        self._running.clear()
        if self._worker is not None:
            self._worker.join(timeout=10)
        self.report(self._status(online=False))
        if self.link.connected:
            self.link.drain(drain_s)
        self.link.stop()
        self.updater.close()
        self.outbox.close()

    def run_forever(self, stop: threading.Event) -> None:
        self.start()
        try:
            stop.wait()
        finally:
            self.stop()

    # ------------------------------------------------------------------ outbound
    def report(self, message: Message) -> None:
        """Send a device → hub message through the outbox (survives disconnects)."""
        self.report_many([message])

    def report_many(self, messages: Sequence[Message]) -> None:
        """Send several messages through the outbox in one write: a busy device's reporter
        (a drift window per request) must not keep the worker, which also runs the OTA
        updater, writing one outbox transaction per message."""
        pending = []
        for message in messages:
            try:
                contract = uplink_of(type(message))
            except ConfigError as exc:
                raise AgentError(str(exc)) from None
            topic = self.topics.device(self.config.device_id, contract.channel)
            pending.append(Pending(topic, message.encode(), contract.qos, contract.retain))
        self.link.publish_many(pending)

    def publish_status(self) -> None:
        self.report(self._status(online=True))

    def _status(self, *, online: bool) -> Status:
        st = self.updater.status()
        fields: dict[str, Any] = {}
        for provide in self._status_fields:
            try:
                fields.update(provide())
            except Exception:
                log.exception("status field provider failed")
        return Status(
            device_id=self.config.device_id,
            online=online,
            installed=st.installed,
            ota_state=st.ota_state,
            deployment_id=st.deployment_id,
            **{k: v for k, v in fields.items() if k in ("runtime", "provider", "healthy", "extra")},
        )

    def _announce(self) -> None:
        import psutil

        try:
            free_disk = psutil.disk_usage(str(self.config.state_dir)).free
        except OSError:
            free_disk = 0
        self.report(
            Hello(
                device_id=self.config.device_id,
                device_class=self.config.device_class,
                agent_version=_agent_version(),
                runtimes=self.runtimes,
                free_disk_bytes=int(free_disk),
                free_mem_bytes=int(psutil.virtual_memory().available),
                installed=self.updater.status().installed,
                labels=dict(self.config.labels),
                facts=self.facts,
            )
        )
        self.publish_status()

    # ------------------------------------------------------------------ inbound
    def _put(self, item: object) -> None:
        try:
            self._inbox.put(item, timeout=1.0)
        except queue.Full:
            log.warning("inbox full: dropped an inbound item")
            if isinstance(item, _Received):
                self._done(item)

    def _receive(self, message: InboundMessage) -> None:
        """paho's thread. A command is acknowledged only after it was handled (a crash makes
        the broker deliver it again). A chunk of the running download is written here and
        acknowledged; any other chunk is acknowledged at once while the inbox holds less
        than ``max_inbox_bytes`` — the broker keeps streaming instead of waiting for each
        chunk's disk write; a chunk lost to a crash is simply requested again."""
        if self._take_chunk(message):
            self.link.ack(message)
            return
        early = False
        if message.topic != self._cmd_topic:
            with self._inbox_lock:
                size = len(message.payload)
                if self._inbox_bytes + size <= self.config.limits.max_inbox_bytes:
                    self._inbox_bytes += size
                    early = True
        if early:
            self.link.ack(message)
        self._put(_Received(message, acked=early))

    def _is_chunk_topic(self, topic: str) -> bool:
        return topic == self._repair_topic or (
            topic.startswith(self._bundle_prefix) and topic.endswith("/chunks")
        )

    def _take_chunk(self, message: InboundMessage) -> bool:
        """paho's thread: write a chunk of the running download without the worker; whether
        it was taken (else it goes through the inbox, to be refused or dropped as before)."""
        if not self._is_chunk_topic(message.topic) or len(message.payload) > (
            self.config.limits.max_chunk_bytes + _CHUNK_FRAME_SLACK
        ):
            return False
        try:
            intake = self.updater.take_chunk(message.payload)
        except Exception:  # the worker meets the chunk again and handles what went wrong
            log.exception("chunk intake failed; left to the worker")
            return False
        if intake is Intake.COMPLETED:
            try:  # never wait for the worker: its tick finds a completion whose hand-off
                self._inbox.put_nowait(_DOWNLOAD_LANDED)  # did not fit
            except queue.Full:
                log.info("inbox full: the download's completion waits for the next tick")
        return intake is not Intake.DEFERRED

    def _done(self, item: _Received) -> None:
        if item.acked:
            with self._inbox_lock:
                self._inbox_bytes -= len(item.message.payload)
        else:
            self.link.ack(item.message)

    def handle(self, message: InboundMessage) -> None:
        """Handle one inbound message (untrusted). Never raises for bad input."""
        topic, payload = message.topic, message.payload
        limits = self.config.limits
        if topic == self._cmd_topic:
            try:
                cmd = decode_message(
                    payload,
                    expected=(DeployCommand, RollbackCommand, PingCommand, TrainCommand),
                    max_bytes=limits.max_message_bytes,
                )
            except ProtocolError as exc:
                self.updater.refusals.warn("bad-command", "dropped command on %s: %s", topic, exc)
                return
            handler = self._handlers.get(type(cmd))
            if handler is None:
                log.warning("no handler for %s; dropped", cmd.TYPE)
                return
            handler(cmd)
            self.publish_status()
        elif self._is_chunk_topic(topic):
            if len(payload) > limits.max_chunk_bytes + _CHUNK_FRAME_SLACK:
                self.updater.refusals.warn(
                    "oversized-chunk",
                    "dropped oversized chunk frame (%d bytes) on %s",
                    len(payload),
                    topic,
                )
                return
            before = self._ota_state()
            self.updater.handle_chunk(payload)
            if self._ota_state() != before:
                self.publish_status()
        elif topic in self._trust_handlers:
            self._trust_handlers[topic](payload)
        else:
            self.updater.refusals.warn(
                "unexpected-topic", "dropped message on unexpected topic %s", topic
            )

    def _ota_state(self) -> tuple[str, str]:
        dep = self.updater.deployment
        return ("idle", "") if dep is None else (dep.phase.value, dep.deployment_id)

    # ------------------------------------------------------------------ worker
    def _work(self) -> None:
        while self._running.is_set():
            try:
                item = self._inbox.get(timeout=0.2)
            except queue.Empty:
                item = None
            try:
                if item is _CONNECTED:
                    self._announce()
                elif item is _DOWNLOAD_LANDED:
                    before = self._ota_state()
                    self.updater.download_landed()
                    if self._ota_state() != before:
                        self.publish_status()
                elif isinstance(item, _Received):
                    try:
                        self.handle(item.message)
                    finally:
                        self._done(item)
                self._timers()
            except Exception:  # keep serving; the persisted OTA state stays consistent
                log.exception("agent worker: unexpected error")

    def _timers(self) -> None:
        now = self._clock()
        if now >= self._next_tick:
            self._next_tick = now + 0.25
            before = self._ota_state()
            self.updater.tick()
            if self._ota_state() != before:
                self.publish_status()
        if now >= self._next_status:
            self._next_status = now + self.config.status_interval_s
            if self.link.connected:
                self.publish_status()
        for p in self._periodic:
            if now >= p.next_at:
                p.next_at = now + p.interval_s
                try:
                    self.report_many(list(p.produce()))
                except Exception:
                    log.exception("reporter failed")
