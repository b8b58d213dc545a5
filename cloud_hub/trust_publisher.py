"""Keeps the fleet's trust topics current (R10): the keyring and the freshness document.

Both are published **retained**, so a device that connects (or reconnects) gets them at once,
without waiting for a deployment:

- ``trust/keyring``: the key store's root-signed keyring, published again as soon as
  ``cloud-hub keys rotate`` wrote a new one (the key store is polled);
- ``trust/freshness``: a short-lived document signed by the online key (TUF's timestamp
  role) naming the keyring version and, per device class, the newest bundle released to the
  whole class; re-signed well before it expires, and at once when either of those changes.

A device that stops receiving these (a broker that withholds updates) sees its document
expire and reports itself stale; see :mod:`edge_agent.ota.freshness`.

:func:`newest_released` is pure; :class:`TrustPublisher` is the thin I/O shell around the key
store, the registry query and an MQTT publish function.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

from cloud_hub.errors import HubConfigError, HubError, RegistryError
from cloud_hub.keys import KeyStore, KeyStoreConfig
from cloud_hub.registry import Registry
from cloud_hub.registry.errors import DatabaseError
from cloud_hub.registry.records import BundleRecord, RolloutRecord
from shared.errors import FedfleetError
from shared.freshness import ReleasedBundle
from shared.messages import FreshnessAnnouncement, KeyringAnnouncement
from shared.signing import parse_time
from shared.topics import TopicScheme

__all__ = ["TrustPublisher", "TrustPublisherConfig", "newest_released", "released_from_registry"]

log = logging.getLogger(__name__)

#: publish(topic, payload): a retained QoS 1 publish
RetainedPublish = Callable[[str, bytes], None]
ReleasedSource = Callable[[], Mapping[str, ReleasedBundle]]


@dataclass(frozen=True, kw_only=True)
class TrustPublisherConfig:
    keys: KeyStoreConfig = field(default_factory=KeyStoreConfig)
    # re-sign when this fraction of the document's lifetime is left (devices keep a margin)
    resign_when_left: float = 0.5
    poll_s: float = 10.0  # how often the key store and the released set are looked at
    # the root-signed keyring must be rotated (root key brought back) before it expires
    warn_keyring_days: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.resign_when_left < 1:
            raise HubConfigError("resign_when_left must be between 0 and 1")
        if not 0 < self.poll_s <= 3600:
            raise HubConfigError("poll_s must be in (0, 3600]")


def newest_released(
    rollouts: Iterable[RolloutRecord], bundles: Mapping[str, BundleRecord]
) -> dict[str, ReleasedBundle]:
    """Per device class, the highest version among finished rollouts to the whole class.

    A rollout restricted to labels did not release to the class, so it does not count.
    """
    out: dict[str, ReleasedBundle] = {}
    for rollout in rollouts:
        bundle = bundles.get(rollout.bundle_id)
        if rollout.state != "done" or rollout.target_labels or bundle is None:
            continue
        have = out.get(rollout.device_class)
        if have is None or bundle.version > have.version:
            out[rollout.device_class] = ReleasedBundle(
                model_name=bundle.model_name, version=bundle.version, bundle_id=bundle.bundle_id
            )
    return out


def released_from_registry(registry: Registry, *, max_rollouts: int = 1000) -> ReleasedSource:
    """A :data:`ReleasedSource` over the registry's finished rollouts."""
    from cloud_hub.registry import catalog, rollouts

    def released() -> dict[str, ReleasedBundle]:
        try:
            with registry.session() as s:
                done = rollouts.list_rollouts(s, states=["done"], limit=max_rollouts).items
                bundles = {}
                for r in done:
                    found = catalog.find_bundle(s, r.bundle_id)
                    if found is not None:
                        bundles[r.bundle_id] = found
        except DatabaseError as exc:
            raise RegistryError(f"cannot read the released bundles: {exc}") from exc
        return newest_released(done, bundles)

    return released


class TrustPublisher:
    """Publishes the keyring and re-signs the freshness document (run :meth:`run` in a thread)."""

    def __init__(
        self,
        keys: KeyStore,
        *,
        topics: TopicScheme,
        publish: RetainedPublish,
        released: ReleasedSource,
        config: TrustPublisherConfig | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keys = keys
        self.topics = topics
        self.config = config or TrustPublisherConfig()
        self._publish = publish
        self._released = released
        self._clock = clock
        self._keyring_version = 0
        self._last_released: dict[str, ReleasedBundle] | None = None
        self._resign_at = 0.0
        self._wake = threading.Event()
        self.published = 0  # freshness documents published (for tests and metrics)

    def step(self) -> bool:
        """Publish what changed or is due; returns whether a freshness document went out."""
        now = self._clock()
        when = datetime.fromtimestamp(now, tz=timezone.utc)
        keyring = self.keys.keyring(now=when)  # HubConfigError if expired: nothing to sign
        envelope = self.keys.keyring_envelope()
        rotated = keyring.version != self._keyring_version
        if rotated:
            self._publish(
                self.topics.trust("keyring"), KeyringAnnouncement(keyring=envelope).encode()
            )
            log.info("published keyring v%d (retained)", keyring.version)
        released = dict(self._released())
        if not (rotated or released != self._last_released or now >= self._resign_at):
            return False
        freshness = self.keys.sign_freshness(released, config=self.config.keys, now=when)
        self._publish(
            self.topics.trust("freshness"),
            FreshnessAnnouncement(freshness=freshness, keyring=envelope).encode(),
        )
        lifetime = self.config.keys.freshness_hours * 3600
        self._resign_at = now + lifetime * (1 - self.config.resign_when_left)
        self._keyring_version, self._last_released = keyring.version, released
        left = parse_time(keyring.expires, "keyring expires") - when
        if left < timedelta(days=self.config.warn_keyring_days):
            log.warning(
                "keyring v%d expires in %s: rotate it with the root key "
                "(cloud-hub keys rotate) or devices will refuse everything",
                keyring.version,
                left,
            )
        self.published += 1
        log.info(
            "published freshness v%d (keyring v%d, %d class(es)), valid %.1f h",
            freshness["signed"]["version"],
            keyring.version,
            len(released),
            self.config.keys.freshness_hours,
        )
        return True

    def wake(self) -> None:
        """Look at the key store and the released set now (and let :meth:`run` see a stop)."""
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        """Call :meth:`step` every ``poll_s`` (or when woken) until ``stop`` is set; failures
        are logged and retried (devices then see the document age and report stale: the
        failure is visible)."""
        while not stop.is_set():
            try:
                self.step()
            except (HubError, FedfleetError, OSError) as exc:
                log.error("trust topics not refreshed: %s", exc)
            due = time.monotonic() + self.config.poll_s
            while not (stop.is_set() or self._wake.is_set()) and time.monotonic() < due:
                self._wake.wait(0.5)  # a stop is seen within half a second
            self._wake.clear()
