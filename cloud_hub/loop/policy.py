"""The retraining policy: when to start a federated retraining round (pure).

Triggers, each optional:

* **drift** — at least ``drift_fraction`` of a class's online devices have reported drift
  above ``drift_threshold`` continuously for at least ``drift_duration_s``;
* **accuracy** — accuracy on labelled feedback fell by more than ``accuracy_drop`` below the
  champion's reference accuracy;
* **schedule** — ``schedule_interval_s`` since the last run;
* **manual** — an operator asked (``cloud-hub retrain``).

Guards against retraining storms: ``cooldown_s`` after any run of the same class, and at
most ``max_runs_per_day`` runs per class in any rolling 24 h.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from cloud_hub.errors import HubConfigError

__all__ = ["ClassHealth", "RetrainDecision", "RetrainPolicy", "decide_retraining"]

DAY_S = 86_400.0


@dataclass(frozen=True)
class RetrainPolicy:
    drift_threshold: float = 0.25  # a device's drift score above this counts as drifted
    drift_fraction: float = 0.3  # share of the class's online devices that must drift
    drift_duration_s: float = 60.0  # for at least this long
    accuracy_drop: float | None = 0.05  # absolute drop vs champion reference; None = off
    schedule_interval_s: float | None = None
    cooldown_s: float = 600.0
    max_runs_per_day: int = 6
    require_approval: bool = False  # start the canary only after an operator approves
    min_devices: int = 2  # a cohort smaller than this cannot train with SecAgg+

    def __post_init__(self) -> None:
        if not 0 < self.drift_fraction <= 1:
            raise HubConfigError("drift_fraction must be in (0, 1]")
        if self.drift_threshold <= 0:
            raise HubConfigError("drift_threshold must be > 0")
        if self.drift_duration_s < 0 or self.cooldown_s < 0:
            raise HubConfigError("durations must be >= 0")
        if self.accuracy_drop is not None and not 0 < self.accuracy_drop < 1:
            raise HubConfigError("accuracy_drop must be in (0, 1)")
        if self.schedule_interval_s is not None and self.schedule_interval_s <= 0:
            raise HubConfigError("schedule_interval_s must be > 0")
        if self.max_runs_per_day < 1:
            raise HubConfigError("max_runs_per_day must be >= 1")
        if self.min_devices < 2:
            raise HubConfigError("min_devices must be >= 2 (secure aggregation needs peers)")


@dataclass(frozen=True)
class ClassHealth:
    """What the hub knows about one device class at ``now``."""

    device_class: str
    online_devices: Sequence[str]
    # device -> time since which its drift score has stayed above the threshold (absent: not drifted)
    drifted_since: Mapping[str, float] = field(default_factory=dict)
    feedback_accuracy: float | None = None
    champion_accuracy: float | None = None
    previous_runs: Sequence[float] = ()  # start times of earlier runs for this class
    manual_request: bool = False


@dataclass(frozen=True)
class RetrainDecision:
    retrain: bool
    reason: str
    cohort: tuple[str, ...] = ()
    trigger: str = ""


def decide_retraining(
    policy: RetrainPolicy, health: ClassHealth, now: float, *, class_peers: bool = False
) -> RetrainDecision:
    """Decide whether to retrain ``health.device_class`` now, and with which cohort.

    The cohort is the drifted devices when drift triggered (they hold the data that shows the
    new distribution), otherwise every online device of the class. With ``class_peers`` the
    class's other online devices follow the drifted ones in a drift cohort (the new model is
    rolled out to the whole class, so it must keep serving what they still see); the cohort
    must reach ``min_devices`` with them.
    """
    online = tuple(sorted(health.online_devices))
    last = max(health.previous_runs, default=None)
    if last is not None and now - last < policy.cooldown_s:
        return RetrainDecision(
            False, f"cooldown: last run {now - last:.0f}s ago < {policy.cooldown_s:.0f}s"
        )
    recent = [t for t in health.previous_runs if now - t < DAY_S]
    if len(recent) >= policy.max_runs_per_day:
        return RetrainDecision(False, f"budget: {len(recent)} runs in the last 24h")

    sustained = tuple(
        sorted(
            d
            for d, since in health.drifted_since.items()
            if d in online and now - since >= policy.drift_duration_s
        )
    )
    candidates: list[RetrainDecision] = []
    if health.manual_request:
        candidates.append(RetrainDecision(True, "operator request", online, "manual"))
    if online and len(sustained) / len(online) >= policy.drift_fraction:
        peers = tuple(d for d in online if d not in sustained) if class_peers else ()
        candidates.append(
            RetrainDecision(
                True,
                f"{len(sustained)}/{len(online)} devices drifted for >= {policy.drift_duration_s:.0f}s",
                (*sustained, *peers),
                "drift",
            )
        )
    if (
        policy.accuracy_drop is not None
        and health.feedback_accuracy is not None
        and health.champion_accuracy is not None
        and health.champion_accuracy - health.feedback_accuracy > policy.accuracy_drop
    ):
        candidates.append(
            RetrainDecision(
                True,
                f"feedback accuracy {health.feedback_accuracy:.3f} < champion {health.champion_accuracy:.3f} - {policy.accuracy_drop}",
                online,
                "accuracy",
            )
        )
    if policy.schedule_interval_s is not None and (
        last is None or now - last >= policy.schedule_interval_s
    ):
        candidates.append(RetrainDecision(True, "scheduled", online, "schedule"))
    for decision in candidates:
        if len(decision.cohort) >= policy.min_devices:
            return decision
    if candidates:
        c = candidates[0]
        return RetrainDecision(
            False,
            f"{c.trigger} trigger, but cohort of {len(c.cohort)} < {policy.min_devices} devices",
        )
    return RetrainDecision(False, "no trigger")
