"""Where an installed agent keeps its files (pure paths; ``prefix`` is ``/`` on a device).

::

    PREFIX/etc/fedfleet-agent/config.toml        agent config (edge_agent.config format)
    PREFIX/etc/fedfleet-agent/device.key         device private key (0600, never leaves)
    PREFIX/etc/fedfleet-agent/device.crt         device certificate (CN = device id)
    PREFIX/etc/fedfleet-agent/ca.crt             hub CA (verifies the broker)
    PREFIX/etc/fedfleet-agent/trust_root.json    pinned bundle-signing trust root
    PREFIX/etc/fedfleet-agent/identity.json      enrollment record (hub, CA pin, time)
    PREFIX/var/lib/fedfleet-agent/slots/{a,b}    A/B model slots (edge_agent.ota)
    PREFIX/var/lib/fedfleet-agent/outbox.sqlite3 reports kept while offline (EdgeAgent's path)
    PREFIX/var/lib/fedfleet-agent/samples.db     sample store for retraining (serving's path)
    PREFIX/etc/systemd/system/fedfleet-agent.service
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["SERVICE_NAME", "InstallLayout"]

SERVICE_NAME = "fedfleet-agent"


@dataclass(frozen=True)
class InstallLayout:
    prefix: Path = Path("/")

    @property
    def config_dir(self) -> Path:
        return self.prefix / "etc" / SERVICE_NAME

    @property
    def state_dir(self) -> Path:
        return self.prefix / "var" / "lib" / SERVICE_NAME

    @property
    def unit_dir(self) -> Path:
        return self.prefix / "etc" / "systemd" / "system"

    @property
    def unit_path(self) -> Path:
        return self.unit_dir / f"{SERVICE_NAME}.service"

    @property
    def config_path(self) -> Path:
        return self.config_dir / "config.toml"

    @property
    def key_path(self) -> Path:
        return self.config_dir / "device.key"

    @property
    def cert_path(self) -> Path:
        return self.config_dir / "device.crt"

    @property
    def ca_path(self) -> Path:
        return self.config_dir / "ca.crt"

    @property
    def trust_root_path(self) -> Path:
        return self.config_dir / "trust_root.json"

    @property
    def identity_path(self) -> Path:
        return self.config_dir / "identity.json"

    @property
    def state_subdirs(self) -> tuple[Path, ...]:
        """The folders ``install`` creates under the state directory."""
        s = self.state_dir
        return (s / "slots" / "a", s / "slots" / "b")

    @property
    def outbox_path(self) -> Path:
        return self.state_dir / "outbox.sqlite3"

    @property
    def sample_store_path(self) -> Path:
        return self.state_dir / "samples.db"
