"""Answering devices' chunk requests: repairs of exactly the chunks a device lacks, and the
full bundle for a device that cannot apply a delta.

Both cost the hub and the broker far more bytes than the request that asks for them, so
(R8) only devices a bundle was offered to are served; repairs are deduplicated per device,
bounded and sent round-robin through one token bucket; full-bundle fallbacks follow
:mod:`~cloud_hub.delivery.fallback` (one per device and delta, not again within an
interval) and are sent in batches by a small, bounded worker pool.

Threads: :meth:`ChunkService.handle` runs on paho's network thread and never blocks; one
worker thread sends repairs; the pool sends fallbacks (``send_full`` blocks until the broker
acknowledged the chunks).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from cloud_hub.delivery.config import PublisherConfig
from cloud_hub.delivery.fallback import FallbackDecision, FullFallbacks
from cloud_hub.delivery.progress import TokenBucket
from cloud_hub.delivery.repairs import RepairQueue
from cloud_hub.errors import DeliveryError, HubConfigError
from shared.messages import ChunkRequest
from shared.refusal_log import RefusalLog

__all__ = ["ChunkService", "SendFull"]

log = logging.getLogger(__name__)

#: Offer ``full`` to ``device_ids`` as deployment ``deployment_id`` (blocks until sent).
SendFull = Callable[[bytes, list[str], str], None]


class ChunkService:
    """Thread-safe. ``publish(topic, frame)`` sends one repair frame; ``repaired(device,
    bundle)`` is told after each one (progress accounting)."""

    def __init__(
        self,
        config: PublisherConfig,
        *,
        publish: Callable[[str, bytes], None],
        send_full: SendFull,
        repaired: Callable[[str, str], None],
        refusals: RefusalLog,
    ) -> None:
        self.topics = config.topics
        self.refusals = refusals
        self._publish, self._send_full, self._repaired = publish, send_full, repaired
        self._lock = threading.Lock()
        # bundle id -> devices it was offered to: the only ones served chunks of it (R8)
        self._targets: dict[str, set[str]] = {}
        self._repairs = RepairQueue(
            max_cached_bundles=config.max_cached_bundles,
            max_indices=config.max_repair_indices,
            max_pending=config.max_pending_repairs,
        )
        self._bucket = TokenBucket(
            rate=config.repair_rate_bytes_s, burst=max(config.repair_rate_bytes_s / 4, 1.0)
        )
        self._fallbacks = FullFallbacks(
            max_deltas=config.max_cached_bundles,
            max_pending=config.max_pending_fallbacks,
            min_interval_s=config.fallback_interval_s,
        )
        self._pool = ThreadPoolExecutor(
            max_workers=config.max_fallback_workers, thread_name_prefix="hub-full-fallback"
        )
        self._worker = threading.Thread(target=self._repair_loop, name="hub-repairs", daemon=True)

    def start(self) -> None:
        self._worker.start()

    def close(self) -> None:
        self._repairs.close()
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._worker.is_alive():
            self._worker.join(timeout=5)

    # -- what may be served ----------------------------------------------------------------
    def offer(
        self,
        bundle_id: str,
        frames: list[bytes],
        device_ids: list[str],
        *,
        deployment_id: str,
        full_bundle: bytes | None = None,
    ) -> None:
        """``bundle_id`` (split into ``frames``) was offered to ``device_ids``; with
        ``full_bundle`` it is a delta whose devices may ask for that instead."""
        self._repairs.cache(bundle_id, frames)
        with self._lock:
            self._targets.setdefault(bundle_id, set()).update(device_ids)
        if full_bundle is not None:
            self._fallbacks.offer(bundle_id, full_bundle, deployment_id, device_ids)

    def forget_except(self, bundle_ids: Iterable[str]) -> None:
        """Stop serving every bundle but ``bundle_ids`` (their deployments were forgotten)."""
        keep = set(bundle_ids)
        with self._lock:
            for bundle_id in set(self._targets) - keep:
                del self._targets[bundle_id]

    # -- requests (paho's network thread) ---------------------------------------------------
    def handle(self, req: ChunkRequest) -> None:
        """Queue what ``req`` may have, or refuse it with a (summarised) reason."""
        who, bundle = req.device_id, req.bundle_id[:12]
        with self._lock:
            target = who in self._targets.get(req.bundle_id, ())
        if not target:  # R8: only devices the bundle was offered to are served
            self.refusals.warn(
                "chunks-not-target", "refused chunks of %s to %s: not a target", bundle, who
            )
            return
        if req.full:
            decision = self._fallbacks.request(who, req.bundle_id, time.monotonic())
            if decision == FallbackDecision.QUEUED:
                log.info("%s cannot apply delta %s: the full bundle is queued", who, bundle)
                if self._fallbacks.needs_batch(req.bundle_id):
                    self._pool.submit(self._send_full_fallbacks, req.bundle_id)
                return
            if decision != FallbackDecision.UNKNOWN:  # R8: no re-publishing on demand
                self.refusals.warn(
                    f"fallback-{decision.value}",
                    "refused the full bundle of delta %s to %s: %s",
                    bundle,
                    who,
                    decision.value,
                )
                return
        if self._repairs.request(who, req.bundle_id, req.indices, full=req.full) is None:
            self.refusals.warn(
                "chunks-unknown", "%s asked for chunks of unknown bundle %s", who, bundle
            )

    # -- sending (worker threads) -----------------------------------------------------------
    def _send_full_fallbacks(self, delta_id: str) -> None:
        """Send the full bundle to every device waiting for it, batch by batch."""
        while (batch := self._fallbacks.take(delta_id)) is not None:
            deployment_id = f"{batch.deployment_id}-full"
            log.info(
                "sending the full bundle to %d device(s) that cannot apply delta %s (%s)",
                len(batch.device_ids),
                delta_id[:12],
                deployment_id,
            )
            sent = False
            try:
                self._send_full(batch.full, list(batch.device_ids), deployment_id)
                sent = True
            except (DeliveryError, HubConfigError) as exc:
                log.warning("full-bundle fallback for %s failed: %s", batch.device_ids, exc)
            finally:
                self._fallbacks.done(batch, time.monotonic(), sent=sent)

    def _repair_loop(self) -> None:
        while not self._repairs.closed:
            self.refusals.flush()  # summaries of refused input, also once the flood stopped
            item = self._repairs.next(timeout=0.5)
            if item is None:
                continue
            delay = self._bucket.delay(len(item.frame), time.monotonic())
            if delay > 0:
                time.sleep(delay)
            try:
                self._publish(self.topics.device(item.device_id, "chunks"), item.frame)
            except DeliveryError as exc:
                log.warning("repair for %s not sent: %s (it will ask again)", item.device_id, exc)
                continue
            self._repaired(item.device_id, item.bundle_id)
