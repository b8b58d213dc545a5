"""Prometheus ``/metrics``: fleet, rollout and ingest figures, collected at scrape time."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from cloud_hub.api.context import ApiContext
from cloud_hub.registry import devices, rollouts
from cloud_hub.registry.errors import DatabaseError

__all__ = ["CONTENT_TYPE", "HubCollector", "render_metrics"]

log = logging.getLogger(__name__)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HubCollector(Collector):
    """Reads the registry and the ingest counters on every scrape."""

    def __init__(self, context: ApiContext) -> None:
        self.context = context

    def collect(self) -> Iterator[Any]:
        up = GaugeMetricFamily("fedfleet_registry_up", "1 if the registry answered")
        try:
            with self.context.registry.session() as s:
                total, online = devices.count_devices(s)
                by_state = rollouts.count_rollouts_by_state(s)
                stages = rollouts.count_stages_by_state(s)
        except DatabaseError as exc:
            log.warning("metrics: registry unavailable: %s", exc)
            up.add_metric([], 0)
            yield up
        else:
            up.add_metric([], 1)
            yield up
            g = GaugeMetricFamily(
                "fedfleet_devices", "Devices known to the registry", labels=["online"]
            )
            g.add_metric(["true"], online)
            g.add_metric(["false"], total - online)
            yield g
            yield GaugeMetricFamily("fedfleet_devices_online", "Devices online", value=online)
            r = GaugeMetricFamily("fedfleet_rollouts", "Rollouts by state", labels=["state"])
            for state, n in sorted(by_state.items()):
                r.add_metric([state], n)
            yield r
            gates = GaugeMetricFamily(
                "fedfleet_rollout_stages",
                "Rollout stages by state (gate outcomes)",
                labels=["state"],
            )
            for state, n in sorted(stages.items()):
                gates.add_metric([str(state)], int(n))
            yield gates
        yield from self._ingest()

    def _ingest(self) -> Iterator[Any]:
        if self.context.ingest_stats is None:
            return
        st = self.context.ingest_stats()
        yield CounterMetricFamily(
            "fedfleet_ingest_received", "MQTT messages received", value=st.received
        )
        yield CounterMetricFamily(
            "fedfleet_ingest_written", "Messages written to the registry", value=st.written
        )
        yield CounterMetricFamily(
            "fedfleet_ingest_batches", "Registry write batches", value=st.batches
        )
        yield CounterMetricFamily(
            "fedfleet_ingest_duplicates", "Redelivered telemetry dropped", value=st.duplicates
        )
        yield CounterMetricFamily(
            "fedfleet_ingest_write_errors", "Failed batch writes (retried)", value=st.write_errors
        )
        rej = CounterMetricFamily("fedfleet_ingest_rejected", "Messages refused", labels=["reason"])
        for reason, n in sorted(st.rejected.items()):
            rej.add_metric([reason], n)
        yield rej
        drop = CounterMetricFamily(
            "fedfleet_ingest_dropped", "Messages dropped by flood control", labels=["reason"]
        )
        for reason, n in sorted(st.dropped.items()):
            drop.add_metric([reason], n)
        yield drop
        yield GaugeMetricFamily(
            "fedfleet_ingest_queued", "Messages waiting to be written", value=st.queued
        )
        yield GaugeMetricFamily(
            "fedfleet_ingest_lag_p95_seconds", "Receive-to-commit lag, p95", value=st.lag_p95_s
        )
        yield GaugeMetricFamily(
            "fedfleet_ingest_connected", "1 if connected to the broker", value=int(st.connected)
        )


def render_metrics(context: ApiContext) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HubCollector(context))
    return generate_latest(registry)
