"""Staged rollouts: a pure core (state table, config, planner, gates) and an engine.

- :mod:`.state` — the lifecycle as one transition table.
- :mod:`.config` — validated :class:`RolloutConfig`.
- :mod:`.planner` — seeded random stage membership, continuous deployment.
- :mod:`.gates` — promote / wait / fail from device reports.
- :mod:`.targets` — each target device's lifecycle as one transition table.
- :mod:`.commands` — :class:`RolloutCommands`: create/start/pause/resume/abort/rollback/
  resolve as registry writes (no engine needed: ``serve --no-engine`` replicas answer them).
- :mod:`.engine` — :class:`~cloud_hub.rollout.engine.RolloutService`, the commands plus the
  loop, persisted in the registry, kill-safe; :class:`PublisherDelivery` connects it to the
  fleet over MQTT.
"""

from cloud_hub.rollout.commands import RolloutCommands
from cloud_hub.rollout.config import (
    AbortRule,
    GateThresholds,
    RolloutConfig,
    StageSpec,
    TargetSelector,
    parse_labels,
)
from cloud_hub.rollout.delivery import PublisherDelivery, RollbackSigner, RolloutDelivery
from cloud_hub.rollout.engine import EngineConfig, RolloutService
from cloud_hub.rollout.gates import (
    Baseline,
    DeviceReport,
    GateResult,
    GateVerdict,
    InstallOutcome,
    MetricCheck,
    evaluate_gate,
)
from cloud_hub.rollout.planner import (
    RolloutPlan,
    TargetableDevice,
    plan_stages,
    select_target,
    stage_for_newcomer,
)
from cloud_hub.rollout.state import (
    TRANSITIONS,
    RolloutAction,
    RolloutPhase,
    RolloutState,
    apply_action,
    stage_name,
)
from cloud_hub.rollout.status import RolloutStatus

__all__ = [
    "TRANSITIONS",
    "AbortRule",
    "Baseline",
    "DeviceReport",
    "EngineConfig",
    "GateResult",
    "GateThresholds",
    "GateVerdict",
    "InstallOutcome",
    "MetricCheck",
    "PublisherDelivery",
    "RollbackSigner",
    "RolloutAction",
    "RolloutCommands",
    "RolloutConfig",
    "RolloutDelivery",
    "RolloutPhase",
    "RolloutPlan",
    "RolloutService",
    "RolloutState",
    "RolloutStatus",
    "StageSpec",
    "TargetSelector",
    "TargetableDevice",
    "apply_action",
    "evaluate_gate",
    "parse_labels",
    "plan_stages",
    "select_target",
    "stage_for_newcomer",
    "stage_name",
]
