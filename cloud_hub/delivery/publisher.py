"""The fleet publisher: deliver one signed bundle to many devices over MQTT.

How a deployment flows::

    hub                                   broker                        device
    DeployCommand ──► devices/D/cmd ─────────────────────────────────► verify offer,
                                                                        subscribe bundles/B/chunks
    (wait for download_started or start_grace_s) ◄── devices/D/events ◄─ download_started
    every chunk ONCE ──► bundles/B/chunks ──fan-out──────────────────► store chunks
    ChunkRequest ◄── devices/+/chunk-req ◄─────────────────────────────── missing indices
    exactly those ──► devices/D/chunks (rate-limited) ───────────────► store, verify, install
    progress ◄── devices/+/events ◄──── verified/installed/committed | rolled_back | failed

Devices that subscribe late, lose chunks on a flaky link, or restart ask for the gaps; the
hub keeps the chunks of recent bundles in memory to answer them. Progress is tracked per
device from its events (idempotent: duplicates are ignored).

Which devices exist and are online the publisher reads from a
:class:`~cloud_hub.delivery.devices.DeviceDirectory`: the registry inside a hub process,
whose ingest hands the publisher the device reports (:meth:`FleetPublisher.observe`); the
hellos and statuses it receives itself when it runs alone.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from cloud_hub.delivery._session import MqttSession
from cloud_hub.delivery.config import PublisherConfig
from cloud_hub.delivery.devices import DeviceDirectory, HeardDevices, KnownDevice
from cloud_hub.delivery.handle import Deployment, DeploymentState
from cloud_hub.delivery.progress import DeviceProgress, advance
from cloud_hub.delivery.serving import ChunkService
from cloud_hub.errors import HubConfigError
from shared.bundle import bundle_id_of, parse_bundle
from shared.chunks import encode_chunk, split_chunks
from shared.errors import ConfigError, ProtocolError
from shared.install_phase import is_terminal_phase
from shared.messages import (
    ChunkRequest,
    DeployCommand,
    Event,
    Message,
    PingCommand,
    RollbackCommand,
    Status,
    decode_message,
    new_id,
)
from shared.refusal_log import RefusalLog
from shared.topics import validate_device_id
from shared.uplink import UPLINK, HubReader, channels_read_by

__all__ = ["FleetPublisher", "KnownDevice"]

log = logging.getLogger(__name__)
# what the publisher is the hub's one reader of (chunk requests), and the device reports it
# reads itself only when no ingest hands them over
_OWN_CHANNELS = tuple(channels_read_by(HubReader.DELIVERY))
_REPORT_CHANNELS = ("events", "hello", "status")
_DIRECTORY_REFRESH_S = 0.5  # how often waits read the device directory again


class FleetPublisher:
    """Publishes bundles and commands to the fleet. Use as a context manager.

    ``devices``: where it reads which devices are online (the hub passes its registry);
    by default the hellos and statuses it receives itself."""

    def __init__(self, config: PublisherConfig, *, devices: DeviceDirectory | None = None) -> None:
        self.config = config
        self.topics = config.topics
        self._cond = threading.Condition()
        self._deployments: dict[str, DeploymentState] = {}
        self.directory: DeviceDirectory = devices if devices is not None else HeardDevices()
        self.refusals = RefusalLog(log)  # untrusted input from devices: summarised warnings
        self.rejected_messages = 0
        self._channels = _OWN_CHANNELS + (_REPORT_CHANNELS if config.reads_device_reports else ())
        self._session = MqttSession(
            config,
            subscriptions=[self.topics.all_devices(ch) for ch in self._channels],
            on_message=self._on_message,
        )
        # repairs and full-bundle fallbacks, served only to targets (R8)
        self._chunks = ChunkService(
            config,
            publish=self._session.publish,
            send_full=self._send_full,
            repaired=self._count_repair,
            refusals=self.refusals,
        )

    # -- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> FleetPublisher:
        self.connect()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> None:
        self._session.connect()
        self._chunks.start()

    def close(self) -> None:
        self._chunks.close()
        self._session.close()

    @property
    def reconnects(self) -> int:
        return self._session.reconnects

    # -- incoming (paho network thread) -----------------------------------------------------
    def _on_message(self, topic: str, payload: bytes, retained: bool) -> None:
        try:
            where = self.topics.parse_device_topic(topic)
            if where.channel not in self._channels:
                raise KeyError(where.channel)
            msg = decode_message(payload, expected=(UPLINK[where.channel].message_type,))
            if getattr(msg, "device_id", where.device_id) != where.device_id:
                raise ProtocolError(f"device_id does not match topic {topic}")
        except (ProtocolError, KeyError) as exc:
            with self._cond:
                self.rejected_messages += 1
            self.refusals.warn("bad-message", "dropped a message on %s: %s", topic, exc)
            return
        if isinstance(msg, ChunkRequest):
            self._chunks.handle(msg)
        else:
            self.observe(msg)

    def observe(self, msg: Message) -> None:
        """Follow a device report (event, hello, status) that the hub's ingest received and
        validated; other messages are ignored. Safe from any thread."""
        if isinstance(msg, Event):
            self._on_event(msg)
            return
        if isinstance(msg, Status):
            self._on_status_state(msg)
        if self.directory.record(msg):
            with self._cond:
                self._cond.notify_all()

    def _on_event(self, event: Event) -> None:
        with self._cond:
            state = self._deployments.get(event.deployment_id or "")
            if state is None or event.device_id not in state.devices:
                return
            before = state.devices[event.device_id]
            after = advance(before, event, time.monotonic())
            if after is not before:
                state.devices[event.device_id] = after
                self._cond.notify_all()
        if after is not before and after.state is not before.state:
            log.info(
                "%s: %s → %s %s",
                event.device_id,
                before.state.value,
                after.state.value,
                after.detail,
            )

    def _on_status_state(self, status: Status) -> None:
        """A (retained) status naming a deployment in a terminal phase finishes it for that
        device even if its events were lost (e.g. the broker restarted while the hub was
        reconnecting)."""
        if status.deployment_id and is_terminal_phase(status.ota_state):
            self._on_event(
                Event(
                    device_id=status.device_id,
                    event_id=f"status:{status.deployment_id}:{status.ota_state}",
                    kind=status.ota_state,
                    deployment_id=status.deployment_id,
                    detail="(from status)",
                )
            )

    def _send_full(self, full: bytes, device_ids: list[str], deployment_id: str) -> None:
        """A full-bundle fallback (a pool thread of the chunk service)."""
        self.deploy(full, device_ids, deployment_id=deployment_id)

    def _count_repair(self, device_id: str, bundle_id: str) -> None:
        with self._cond:
            for state in self._deployments.values():
                if state.bundle_id == bundle_id and device_id in state.devices:
                    state.repairs_sent += 1

    # -- outgoing ----------------------------------------------------------------------------
    def _targets(self, device_ids: Sequence[str]) -> list[str]:
        ids = list(dict.fromkeys(device_ids))
        if not ids:
            raise HubConfigError("no target devices")
        if len(ids) > self.config.max_devices:
            raise HubConfigError(f"more than {self.config.max_devices} target devices")
        try:
            return [validate_device_id(d) for d in ids]
        except ConfigError as exc:
            raise HubConfigError(str(exc)) from exc

    def _register(
        self, deployment_id: str | None, bundle_id: str, ids: list[str]
    ) -> DeploymentState:
        dep_id = deployment_id or f"dep-{new_id()[:16]}"
        try:
            validate_device_id(dep_id)
        except ConfigError as exc:
            raise HubConfigError(f"deployment id: {exc}") from exc
        with self._cond:
            state = self._deployments.get(dep_id)
            if state is not None:  # a retry (QoS 1 semantics): same bundle, maybe more devices
                if state.bundle_id != bundle_id:
                    raise HubConfigError(
                        f"deployment {dep_id} already exists for another bundle/order"
                    )
                for d in ids:
                    state.devices.setdefault(d, DeviceProgress(d))
                return state
            state = DeploymentState(
                deployment_id=dep_id,
                bundle_id=bundle_id,
                devices={d: DeviceProgress(d) for d in ids},
                started_at=time.monotonic(),
            )
            self._deployments[dep_id] = state
            self._prune()
        return state

    def _prune(self) -> None:
        """Forget the oldest finished deployments beyond ``max_deployments`` (caller locks)."""
        excess = len(self._deployments) - self.config.max_deployments
        if excess <= 0:
            return
        for dep_id in [
            d for d, st in self._deployments.items() if all(p.terminal for p in st.devices.values())
        ][:excess]:
            del self._deployments[dep_id]
        self._chunks.forget_except(st.bundle_id for st in self._deployments.values())

    def deploy(
        self,
        bundle: bytes,
        device_ids: Sequence[str],
        *,
        deployment_id: str | None = None,
        rollback_order: Mapping[str, Any] | None = None,
        full_bundle: bytes | None = None,
    ) -> Deployment:
        """Offer ``bundle`` to ``device_ids`` and publish its chunks once on the fan-out topic.

        ``full_bundle``: ``bundle`` is a delta and this is its full counterpart, sent to any
        device that asks for it because it cannot apply the delta.

        Safe to repeat: the same ``deployment_id`` with the same bundle offers it again (to
        the devices given, which are added to the tracking); agents ignore a deployment they
        already handled, and devices still missing chunks get them again.

        Returns when every chunk is acknowledged by the broker; devices then finish on their
        own (repairs are answered in the background): ``.wait(timeout)`` on the handle.
        ``rollback_order`` (a signed envelope) lets devices accept an older version.
        """
        if len(bundle) > self.config.max_bundle_bytes:
            raise HubConfigError(f"bundle of {len(bundle)} bytes over max_bundle_bytes")
        ids = self._targets(device_ids)
        parsed = parse_bundle(bundle)  # a malformed bundle never reaches the fleet
        bundle_id = bundle_id_of(parsed.manifest_envelope)
        chunks = split_chunks(bundle_id, bundle, self.config.chunk_size)
        frames = [encode_chunk(c) for c in chunks]
        state = self._register(deployment_id, bundle_id, ids)
        self._chunks.offer(
            bundle_id, frames, ids, deployment_id=state.deployment_id, full_bundle=full_bundle
        )
        chunk_topic = self.topics.bundle_chunks(bundle_id)
        for device_id in ids:
            command = DeployCommand(
                command_id=new_id(),
                deployment_id=state.deployment_id,
                bundle_id=bundle_id,
                manifest=parsed.manifest_envelope,
                keyring=parsed.keyring_envelope,
                total_size=len(bundle),
                chunk_size=self.config.chunk_size,
                chunk_count=len(frames),
                chunk_topic=chunk_topic,
                rollback_order=dict(rollback_order) if rollback_order is not None else None,
            )
            self._session.publish(self.topics.device(device_id, "cmd"), command.encode())
        self._await_start(state)
        for frame in frames:  # each chunk once; the broker fans it out
            self._session.publish(chunk_topic, frame)
            with self._cond:
                state.chunks_published += 1
        self._session.drain()
        return Deployment(state, self._cond)

    def _await_start(self, state: DeploymentState) -> None:
        """Wait (at most ``start_grace_s``) until every reachable target answered, i.e. has
        subscribed to the chunk topic. Devices known to be offline are not waited for."""
        deadline = time.monotonic() + self.config.start_grace_s
        offline: set[str] = set()
        read_at = float("-inf")
        while True:
            waiting = self._not_started(state)
            # the directory is read outside the lock, a few times a second at most
            if waiting and time.monotonic() - read_at >= _DIRECTORY_REFRESH_S:
                offline, read_at = self.directory.offline(waiting), time.monotonic()
            waiting = [d for d in waiting if d not in offline]
            left = deadline - time.monotonic()
            if not waiting or left <= 0:
                break
            with self._cond:
                if any(not state.devices[d].started for d in waiting):
                    self._cond.wait(min(left, _DIRECTORY_REFRESH_S))
        if waiting:
            log.info(
                "%d device(s) not started after the grace period; they will catch up", len(waiting)
            )

    def _not_started(self, state: DeploymentState) -> list[str]:
        with self._cond:
            return [d for d, p in state.devices.items() if not p.started]

    def rollback(
        self,
        device_ids: Sequence[str],
        order_envelope: Mapping[str, Any],
        keyring_envelope: Mapping[str, Any],
        *,
        deployment_id: str | None = None,
    ) -> Deployment:
        """Send a signed rollback order; devices go back to the version it names."""
        ids = self._targets(device_ids)
        signed = order_envelope.get("signed")
        target = signed.get("to_bundle_id") if isinstance(signed, dict) else None
        if not isinstance(target, str):
            raise HubConfigError("rollback order envelope has no signed to_bundle_id")
        state = self._register(deployment_id, target, ids)
        for device_id in ids:
            command = RollbackCommand(
                command_id=new_id(),
                deployment_id=state.deployment_id,
                order=dict(order_envelope),
                keyring=dict(keyring_envelope),
            )
            self._session.publish(self.topics.device(device_id, "cmd"), command.encode())
        self._session.drain()
        return Deployment(state, self._cond)

    def publish_retained(self, topic: str, payload: bytes) -> None:
        """A retained QoS 1 publish, acknowledged by the broker when this returns (the fleet's
        trust topics, R10: :class:`cloud_hub.trust_publisher.TrustPublisher`)."""
        self._session.publish(topic, payload, retain=True)
        self._session.drain()

    def discover(
        self, *, device_class: str | None = None, wait_s: float = 2.0
    ) -> list[KnownDevice]:
        """Devices heard from (retained status, hello), pinged for a fresh hello; those online
        and (when given) of ``device_class``."""
        time.sleep(min(wait_s, 0.5))  # retained statuses arrive right after subscribing
        known = [d for d, info in self.directory.lookup().items() if info.online]
        for device_id in known:
            self._session.publish(
                self.topics.device(device_id, "cmd"), PingCommand(command_id=new_id()).encode()
            )
        deadline = time.monotonic() + wait_s
        while True:
            heard = self.directory.lookup()
            classified = all(heard[d].device_class is not None for d in known if d in heard)
            if classified or time.monotonic() >= deadline:
                break
            with self._cond:
                self._cond.wait(0.2)
        return sorted(
            (
                i
                for i in heard.values()
                if i.online and (device_class is None or i.device_class == device_class)
            ),
            key=lambda i: i.device_id,
        )

    def deployment(self, deployment_id: str) -> Deployment:
        """The handle of a deployment this publisher started (also while ``deploy`` runs)."""
        with self._cond:
            state = self._deployments.get(deployment_id)
        if state is None:
            raise HubConfigError(f"unknown deployment {deployment_id}")
        return Deployment(state, self._cond)

    def devices(self) -> dict[str, KnownDevice]:
        """Every device known to the publisher's directory."""
        return self.directory.lookup()

    def wait_for_devices(self, device_ids: Sequence[str], *, timeout: float) -> list[str]:
        """Wait until every one of ``device_ids`` announced itself online; return the missing."""
        deadline = time.monotonic() + timeout
        while True:
            known = self.directory.lookup(device_ids)
            missing = [d for d in device_ids if not (d in known and known[d].online)]
            left = deadline - time.monotonic()
            if not missing or left <= 0:
                return missing
            with self._cond:
                self._cond.wait(min(left, _DIRECTORY_REFRESH_S))
