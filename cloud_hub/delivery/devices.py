"""Where the fleet publisher learns which devices exist, their class and whether they are
online: a :class:`DeviceDirectory`.

Inside a hub process the registry is the one device table (:class:`RegistryDevices`: the
ingest writes it, the publisher only reads it); a publisher on its own, without a hub
(``cloud-hub publish``, tests, benchmarks), follows the hellos and statuses it receives
itself (:class:`HeardDevices`).
"""

from __future__ import annotations

import threading
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from shared.messages import Hello, Message, Status

if TYPE_CHECKING:
    from cloud_hub.registry import Registry

__all__ = ["DeviceDirectory", "HeardDevices", "KnownDevice", "RegistryDevices"]


@dataclass(frozen=True)
class KnownDevice:
    """What the hub knows of a device (hello / retained status)."""

    device_id: str
    device_class: str | None = None
    online: bool = False
    installed_version: int | None = None


class DeviceDirectory(Protocol):
    """Thread-safe; read at most a few times a second (never per chunk)."""

    def lookup(self, device_ids: Collection[str] | None = None) -> dict[str, KnownDevice]:
        """The known devices among ``device_ids`` (every known device when ``None``)."""
        ...

    def offline(self, device_ids: Collection[str]) -> set[str]:
        """Those of ``device_ids`` known to be offline (unknown ones may be online)."""
        ...

    def record(self, message: Message) -> bool:
        """A device report the publisher received; whether it changed what is known."""
        ...


class HeardDevices:
    """The devices a standalone publisher heard from itself (hello, status)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._devices: dict[str, KnownDevice] = {}

    def lookup(self, device_ids: Collection[str] | None = None) -> dict[str, KnownDevice]:
        with self._lock:
            if device_ids is None:
                return dict(self._devices)
            return {d: self._devices[d] for d in device_ids if d in self._devices}

    def offline(self, device_ids: Collection[str]) -> set[str]:
        return {d for d, info in self.lookup(device_ids).items() if not info.online}

    def record(self, message: Message) -> bool:
        if isinstance(message, Hello):
            device_class: object = message.device_class
            online = True
        elif isinstance(message, Status):
            device_class, online = message.extra.get("device_class"), message.online
        else:
            return False
        installed = message.installed.version if message.installed else None
        with self._lock:
            old = self._devices.get(message.device_id, KnownDevice(message.device_id))
            self._devices[message.device_id] = KnownDevice(
                message.device_id,
                device_class=device_class if isinstance(device_class, str) else old.device_class,
                online=online,
                installed_version=installed if installed is not None else old.installed_version,
            )
        return True


class RegistryDevices:
    """The registry's device table, as the hub's ingest keeps it: nothing is recorded here."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    def lookup(self, device_ids: Collection[str] | None = None) -> dict[str, KnownDevice]:
        from cloud_hub.registry import devices

        with self.registry.session() as s:
            if device_ids is not None:
                records = list(devices.find_devices(s, device_ids).values())
            else:  # every device, page by page
                records = []
                while True:
                    query = devices.DeviceQuery(limit=devices.MAX_PAGE, offset=len(records))
                    page = devices.list_devices(s, query)
                    records += page.items
                    if not page.items or len(records) >= page.total:
                        break
        return {
            r.device_id: KnownDevice(
                r.device_id,
                device_class=r.device_class,
                online=r.online,
                installed_version=r.installed_version,
            )
            for r in records
        }

    def offline(self, device_ids: Collection[str]) -> set[str]:
        from cloud_hub.registry import devices

        with self.registry.session() as s:
            return devices.offline_among(s, device_ids)

    def record(self, message: Message) -> bool:
        return False  # the ingest writes the registry
