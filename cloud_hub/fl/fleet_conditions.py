"""The registry's view of each device, judged for an asynchronous training order.

:class:`RegistryEligibility` is the gate :func:`cloud_hub.fl.async_federated.run_buffered`
asks before it orders idle devices: it reads each device's online flag and recent telemetry
(:mod:`cloud_hub.registry.device_conditions`) and its last contribution (the newest order it
trained for in an earlier run, :func:`cloud_hub.registry.async_orders.last_trained_orders`),
and hands them to the pure rules of :mod:`cloud_hub.fl.eligibility`. Within one run a device
is ordered again on the samples it has, as FedBuff does; new samples are what a device
needs to join the next run.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence

from cloud_hub.fl.eligibility import (
    DeviceCondition,
    EligibilityLimits,
    EligibilityReport,
    assess,
    serving_rate,
)
from cloud_hub.registry import Registry
from cloud_hub.registry import async_orders as orders_repo
from cloud_hub.registry.device_conditions import DeviceConditionFacts, device_condition_facts
from shared.messages import TelemetryMetric as M

__all__ = ["RegistryEligibility", "condition_of"]

_METRICS = (M.TEMPERATURE_C, M.GPU_TEMPERATURE_C, M.POWER_W, M.REQUEST_COUNT, M.LABELLED_SAMPLES)


def condition_of(
    device: str,
    facts: DeviceConditionFacts | None,
    labelled_at_last_order: float | None,
    now: float,
) -> DeviceCondition:
    """One device's condition from its registry facts (unknown device: offline)."""
    if facts is None:
        return DeviceCondition(device, online=False)
    newest = facts.newest_ts
    temperatures = [
        t
        for t in (facts.newest(M.TEMPERATURE_C), facts.newest(M.GPU_TEMPERATURE_C))
        if t is not None
    ]
    return DeviceCondition(
        device,
        online=facts.online,
        telemetry_age_s=None if newest is None else max(0.0, now - newest),
        temperature_c=max(temperatures) if temperatures else None,
        power_w=facts.newest(M.POWER_W),
        serving_rps=serving_rate(facts.readings.get(M.REQUEST_COUNT, ())),
        labelled_samples=facts.newest(M.LABELLED_SAMPLES),
        labelled_at_last_order=labelled_at_last_order,
    )


class RegistryEligibility:
    """``gate(devices) -> EligibilityReport`` over the registry's latest facts."""

    def __init__(
        self,
        registry: Registry,
        limits: EligibilityLimits,
        *,
        run_id: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._registry = registry
        self.limits = limits
        self.run_id = run_id  # its own orders do not count as an earlier contribution
        self._clock = clock

    def __call__(self, devices: Sequence[str]) -> EligibilityReport:
        now = self._clock()
        since = now - self.limits.telemetry_max_age_s
        with self._registry.session() as s:
            facts = device_condition_facts(s, devices, _METRICS, since=since)
            last = orders_repo.last_trained_orders(s, devices, exclude_run=self.run_id)
        conditions = [
            condition_of(
                d,
                facts.get(d),
                None if d not in last else (last[d].labelled_samples or 0.0),
                now,
            )
            for d in devices
        ]
        return assess(conditions, self.limits)
