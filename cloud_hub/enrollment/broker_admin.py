"""The hub's admin session with the broker's dynamic security plugin (I/O shell of .dynsec).

:class:`BrokerAdmin` sends one batch of commands over a short-lived MQTT v5 connection to the
device listener, as the admin identity, and waits for the plugin's answers.
:class:`BrokerAccessControl` keeps what each device should be (revoked or admitted) and
applies it from a background thread, retrying while the broker is unreachable, so that a
deletion reaches the broker even when it was down at the time; callers may wait for it.

The admin credentials live in the hub's data directory, never beside the broker::

    DATA_DIR/broker-admin/admin.crt, admin.key   device-CA client certificate, CN HUB:broker-admin
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud_hub.broker_client import ConnectionHooks, connect_client, create_client
from cloud_hub.enrollment.ca import CertificateAuthority
from cloud_hub.enrollment.dynsec import (
    CONTROL_TOPIC,
    RESPONSE_TOPIC,
    BrokerAdminError,
    DynsecCommand,
    check_responses,
    control_payload,
    readmit_commands,
    revoke_commands,
)
from cloud_hub.errors import DeliveryError
from shared.broker_endpoint import BrokerEndpoint
from shared.files import atomic_write

__all__ = [
    "ADMIN_DIR",
    "BrokerAccessControl",
    "BrokerAdmin",
    "BrokerAdminSettings",
    "admin_credentials",
    "issue_admin_credentials",
]

log = logging.getLogger(__name__)
ADMIN_DIR = "broker-admin"
_RETRY_S = (1.0, 2.0, 5.0, 10.0, 30.0)
_BATCH = 100  # devices per admin message (3 commands each, well under the packet limit)


@dataclass(frozen=True)
class BrokerAdminSettings:
    """Where the plugin listens (the device listener) and the admin's credentials."""

    host: str
    port: int
    ca_file: Path  # the device CA: it issued the broker's server certificate
    cert_file: Path
    key_file: Path
    timeout_s: float = 10.0


def admin_credentials(data_dir: str | os.PathLike[str]) -> tuple[Path, Path]:
    """``(admin.crt, admin.key)`` in the hub's data directory (they may not exist yet)."""
    d = Path(data_dir) / ADMIN_DIR
    return d / "admin.crt", d / "admin.key"


def issue_admin_credentials(
    data_dir: str | os.PathLike[str], ca: CertificateAuthority, admin_user: str
) -> tuple[Path, Path]:
    """The admin certificate (device CA, CN ``admin_user``), issued once and kept."""
    cert, key = admin_credentials(data_dir)
    if not (cert.exists() and key.exists()):
        cert.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(cert.parent, 0o700)
        creds = ca.issue_client(admin_user, days=3650)
        atomic_write(key, creds.key_pem, mode=0o600)
        atomic_write(cert, creds.cert_pem, mode=0o644)
    return cert, key


class BrokerAdmin:
    """One admin connection per batch: connect, subscribe to the answers, send, wait."""

    def __init__(self, settings: BrokerAdminSettings) -> None:
        self.settings = settings

    def apply(self, commands: Sequence[DynsecCommand]) -> None:
        """Run ``commands``; raises :class:`BrokerAdminError` unless all were confirmed."""
        s = self.settings
        where = f"the broker at {s.host}:{s.port}"
        correlation = uuid.uuid4().hex
        cond = threading.Condition()
        responses: list[dict[str, Any]] = []
        refused: list[str] = []  # CONNACK or PUBACK failures: no plugin, or not our admin
        subscribed = threading.Event()

        def on_message(msg: Any) -> None:
            try:
                answer = json.loads(msg.payload)
            except ValueError:
                return
            with cond:
                responses.extend(r for r in answer.get("responses", []) if isinstance(r, dict))
                cond.notify_all()

        def refuse(reason: str) -> None:
            with cond:
                refused.append(reason)
                cond.notify_all()
            subscribed.set()

        def on_connected(client: Any) -> None:
            client.subscribe(RESPONSE_TOPIC, qos=1)

        def on_subscribed(failed: list[str]) -> None:
            if failed:
                refuse(failed[0])
            subscribed.set()

        hooks = ConnectionHooks(
            connected=on_connected,
            refused=refuse,
            dropped=lambda _reason: None,
            subscribed=on_subscribed,
            message=on_message,
            publish_refused=lambda _mid, reason: refuse(reason),
        )
        endpoint = BrokerEndpoint(
            host=s.host,
            port=s.port,
            tls=True,
            ca_file=str(s.ca_file),
            cert_file=str(s.cert_file),
            key_file=str(s.key_file),
        )
        deadline = time.monotonic() + s.timeout_s
        # the device listener sets the client id to the certificate's name (R3)
        try:
            client = create_client(endpoint, client_id="", hooks=hooks)
            connect_client(client, endpoint, keepalive_s=30)
        except DeliveryError as exc:
            raise BrokerAdminError(f"cannot reach {where}: {exc}") from exc
        client.loop_start()
        try:
            if not subscribed.wait(s.timeout_s):
                raise BrokerAdminError(f"no answer from {where}")
            if not refused:
                client.publish(CONTROL_TOPIC, control_payload(commands, correlation), qos=1)
            with cond:
                done = cond.wait_for(
                    lambda: refused or check_responses(commands, correlation, responses),
                    max(0.0, deadline - time.monotonic()),
                )
            if refused:
                raise BrokerAdminError(
                    f"{where} refused the admin's command ({refused[0]}): "
                    "is the dynamic security plugin loaded there?"
                )
            if not done:
                raise BrokerAdminError(
                    f"{where} did not confirm {commands[0].name} in "
                    f"{s.timeout_s:.0f} s (is the dynamic security plugin loaded?)"
                )
        finally:
            client.disconnect()
            client.loop_stop()

    def revoke(self, device_id: str) -> None:
        self.apply(revoke_commands(device_id))

    def readmit(self, device_id: str) -> None:
        self.apply(readmit_commands(device_id))

    def settle(self, wishes: Mapping[str, bool]) -> None:
        """Revoke (``True``) or readmit (``False``) each device, in one batch."""
        self.apply(
            [
                c
                for d, r in wishes.items()
                for c in (revoke_commands(d) if r else readmit_commands(d))
            ]
        )


class BrokerAccessControl:
    """What each device should be at the broker, applied in the background until confirmed.

    The newest wish per device wins (a deletion followed by a re-enrollment readmits it)."""

    def __init__(
        self,
        admin: BrokerAdmin,
        *,
        retry_s: Sequence[float] = _RETRY_S,
        sleep: Callable[[threading.Event, float], bool] = lambda e, t: e.wait(t),
    ) -> None:
        self.admin = admin
        self._retry_s = tuple(retry_s)
        self._sleep = sleep
        self._pending: dict[str, bool] = {}  # device id → revoked?
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def revoke(self, device_id: str, *, wait_s: float = 0.0) -> bool:
        """Drop ``device_id`` at the broker; whether that was confirmed within ``wait_s``."""
        return self._want(device_id, True, wait_s)

    def readmit(self, device_id: str, *, wait_s: float = 0.0) -> bool:
        """Let ``device_id`` in again (after a new enrollment)."""
        return self._want(device_id, False, wait_s)

    def sync(self, revoked: Iterable[str]) -> None:
        """Make sure every device in ``revoked`` is revoked (at hub start: the broker may
        have missed a deletion, or started from an older configuration)."""
        self._want_all(dict.fromkeys(revoked, True))

    def pending(self) -> dict[str, bool]:
        with self._cond:
            return dict(self._pending)

    def close(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=self.admin.settings.timeout_s + 1)

    def _want(self, device_id: str, revoked: bool, wait_s: float) -> bool:
        with self._cond:
            self._want_all({device_id: revoked})
            return self._cond.wait_for(
                lambda: self._pending.get(device_id) != revoked, timeout=wait_s
            )

    def _want_all(self, wishes: Mapping[str, bool]) -> None:
        """Record ``wishes`` under one lock, so the worker sees them as one batch."""
        if not wishes:
            return
        with self._cond:
            self._pending.update(wishes)
            self._cond.notify_all()
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="broker-access", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            with self._cond:
                self._cond.wait_for(lambda: self._pending or self._stop.is_set())
                if self._stop.is_set():
                    return
                batch = dict(list(self._pending.items())[:_BATCH])
            try:
                self.admin.settle(batch)
            except BrokerAdminError as exc:
                delay = self._retry_s[min(failures, len(self._retry_s) - 1)]
                failures += 1
                log.warning("broker access of %s not applied (retry in %.0f s): %s",
                            ", ".join(sorted(batch)), delay, exc)  # fmt: skip
                self._sleep(self._stop, delay)
                continue
            failures = 0
            for device_id, revoked in batch.items():
                log.info("broker: %s %s", device_id, "revoked" if revoked else "readmitted")
            with self._cond:
                for device_id, revoked in batch.items():
                    if self._pending.get(device_id) == revoked:  # no newer wish meanwhile
                        del self._pending[device_id]
                self._cond.notify_all()
