"""Stage membership: who gets the bundle in which stage (pure).

Membership is drawn at random within the target — a seeded shuffle of the sorted device ids,
so the same seed and target always give the same plan, and the plan does not follow
registration order. The plan is recorded with the rollout; it is never re-drawn after the
start. Devices named by a stage (``device_ids``/``labels``) are claimed by that stage first;
``count`` and ``percent`` stages then take from the shuffled rest, percent stages up to
``ceil(percent * target size)`` devices in total (cumulative). Devices left over when the last
stage is not 100 % stay out of the rollout.

Devices that join the target after the start (continuous deployment) go to the next stage,
or to the current one when it is the last (see :func:`stage_for_newcomer`).
"""

from __future__ import annotations

import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from cloud_hub.errors import RolloutError
from cloud_hub.rollout.config import RolloutConfig, StageSpec
from cloud_hub.rollout.state import RolloutPhase, RolloutState

__all__ = ["RolloutPlan", "TargetableDevice", "plan_stages", "select_target", "stage_for_newcomer"]


@dataclass(frozen=True)
class TargetableDevice:
    """What targeting needs to know about a device."""

    device_id: str
    device_class: str
    labels: Mapping[str, str]


@dataclass(frozen=True)
class RolloutPlan:
    """Device ids per stage (index 0 = canary) and the seed that drew them."""

    stages: tuple[tuple[str, ...], ...]
    seed: int

    def stage_of(self, device_id: str) -> int | None:
        for i, members in enumerate(self.stages):
            if device_id in members:
                return i
        return None

    @property
    def devices(self) -> frozenset[str]:
        return frozenset(d for members in self.stages for d in members)


def select_target(config: RolloutConfig, devices: Sequence[TargetableDevice]) -> list[str]:
    """Sorted ids of the devices the rollout's target selector matches."""
    sel = config.target
    return sorted(
        d.device_id for d in devices if sel.matches(d.device_class, d.labels, d.device_id)
    )


def _claims(stage: StageSpec, device_id: str, labels: Mapping[str, str]) -> bool:
    if stage.device_ids:
        return device_id in stage.device_ids
    if stage.labels:
        return all(labels.get(k) == v for k, v in stage.labels.items())
    return False


def plan_stages(config: RolloutConfig, devices: Sequence[TargetableDevice]) -> RolloutPlan:
    """Draw the stage membership for the devices of ``devices`` that are in the target."""
    by_id = {d.device_id: d for d in devices}
    target = select_target(config, devices)
    n = len(target)
    claimed: dict[int, list[str]] = {}
    taken: set[str] = set()
    for i, stage in enumerate(config.stages):
        if stage.device_ids or stage.labels:
            members = [d for d in target if d not in taken and _claims(stage, d, by_id[d].labels)]
            claimed[i] = members
            taken.update(members)
    pool = [d for d in target if d not in taken]
    seed = config.seed if config.seed is not None else 0
    random.Random(seed).shuffle(pool)
    stages: list[tuple[str, ...]] = []
    assigned = 0
    for i, stage in enumerate(config.stages):
        if i in claimed:
            members = claimed[i]
        elif stage.count is not None:
            members, pool = pool[: stage.count], pool[stage.count :]
        else:
            assert stage.percent is not None
            want = max(0, math.ceil(stage.percent / 100.0 * n - 1e-9) - assigned)
            members, pool = pool[:want], pool[want:]
        stages.append(tuple(sorted(members)))
        assigned += len(members)
    return RolloutPlan(stages=tuple(stages), seed=seed)


def stage_for_newcomer(
    config: RolloutConfig,
    phase: RolloutPhase,
    device_id: str,
    labels: Mapping[str, str],
) -> int:
    """The stage a device that joined the target after the start belongs to.

    A later stage naming the device (by id or labels) wins; otherwise the next stage, or the
    last stage once the rollout is in it or done.
    """
    if phase.state in (RolloutState.DRAFT, RolloutState.ROLLING_BACK, RolloutState.ROLLED_BACK):
        raise RolloutError(f"no stage for new devices in state {phase.name}")
    if phase.state is RolloutState.ABORTED:
        raise RolloutError(f"no stage for new devices in state {phase.name}")
    last = config.n_stages - 1
    current = max(phase.stage, 0)
    for i in range(current + 1, config.n_stages):
        if _claims(config.stages[i], device_id, labels):
            return i
    return min(current + 1, last)
