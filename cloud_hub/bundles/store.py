"""The hub's bundle store: every signed bundle it built, indexed by (model, device class, version).

Layout::

    DIR/index.json          {"entries": [{model_name, device_class, version, bundle_id, file,
                              size, created}, ...]}
    DIR/BUNDLE_ID.ffb       the bundle bytes

The index enforces the manifest rule that versions increase monotonically per (model, class):
``reserve`` refuses a version that is not newer than the newest one recorded. A lock file
serialises concurrent builders (two CLI invocations at once).
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from cloud_hub.errors import HubConfigError, RegistryError

__all__ = ["BundleStore", "StoredBundle", "VersionNotNewerError"]


class VersionNotNewerError(HubConfigError):
    """The requested version is not newer than the newest stored one for that model/class."""


@dataclass(frozen=True)
class StoredBundle:
    """One index entry."""

    model_name: str
    device_class: str
    version: int
    bundle_id: str
    file: str  # relative to the store directory
    size: int
    created: str


class BundleStore:
    """An append-only store of signed bundles with a small JSON index."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    @property
    def index_path(self) -> Path:
        return self.directory / "index.json"

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "a+") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock.fileno(), fcntl.LOCK_UN)

    def _read(self) -> list[StoredBundle]:
        if not self.index_path.exists():
            return []
        try:
            raw = json.loads(self.index_path.read_text("utf-8"))
            return [StoredBundle(**e) for e in raw["entries"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"bundle index {self.index_path} is corrupt: {exc}") from exc

    def _write(self, entries: list[StoredBundle]) -> None:
        tmp = self.index_path.with_suffix(".tmp")
        tmp.write_text(
            json.dumps({"entries": [asdict(e) for e in entries]}, indent=1) + "\n", "utf-8"
        )
        os.replace(tmp, self.index_path)

    def entries(self) -> list[StoredBundle]:
        return self._read()

    def latest_version(self, model_name: str, device_class: str) -> int:
        """Newest stored version for (model, class); 0 when there is none."""
        versions = [
            e.version
            for e in self._read()
            if e.model_name == model_name and e.device_class == device_class
        ]
        return max(versions, default=0)

    def check_version(self, model_name: str, device_class: str, version: int) -> None:
        """Raise ``VersionNotNewerError`` unless ``version`` is newer than every stored one."""
        latest = self.latest_version(model_name, device_class)
        if version <= latest:
            raise VersionNotNewerError(
                f"version {version} of {model_name!r} for class {device_class!r} is not newer "
                f"than the newest built version {latest}; use --version {latest + 1} or higher"
            )

    def add(
        self,
        *,
        model_name: str,
        device_class: str,
        version: int,
        bundle_id: str,
        data: bytes,
        created: str,
    ) -> StoredBundle:
        """Record a bundle; re-checks monotonicity under the lock (a concurrent build may win)."""
        with self._locked():
            self.check_version(model_name, device_class, version)
            name = f"{bundle_id}.ffb"
            tmp = self.directory / f".{name}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.directory / name)
            entry = StoredBundle(
                model_name=model_name,
                device_class=device_class,
                version=version,
                bundle_id=bundle_id,
                file=name,
                size=len(data),
                created=created,
            )
            self._write([*self._read(), entry])
            return entry

    def find(
        self,
        *,
        bundle_id: str | None = None,
        model_name: str | None = None,
        device_class: str | None = None,
        version: int | None = None,
    ) -> StoredBundle:
        """The one entry matching every given field; ``RegistryError`` if none."""
        for e in reversed(self._read()):
            if (
                (bundle_id is None or e.bundle_id == bundle_id)
                and (model_name is None or e.model_name == model_name)
                and (device_class is None or e.device_class == device_class)
                and (version is None or e.version == version)
            ):
                return e
        raise RegistryError("no stored bundle matches the query")

    def read(self, entry: StoredBundle) -> bytes:
        try:
            return (self.directory / entry.file).read_bytes()
        except OSError as exc:
            raise RegistryError(f"bundle file {entry.file} is missing: {exc}") from exc
