"""Validated rollout configuration: target, stages, gate thresholds, abort rule (pure).

Every limit is checked in ``__post_init__`` and a bad value raises
:class:`~cloud_hub.errors.HubConfigError` naming the field. ``to_dict``/``from_dict`` give the
JSON form stored in the registry and accepted by the REST API.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from cloud_hub.errors import HubConfigError

__all__ = [
    "MAX_DEVICES_PER_LIST",
    "MAX_STAGES",
    "AbortRule",
    "GateThresholds",
    "RolloutConfig",
    "StageSpec",
    "TargetSelector",
    "parse_labels",
]

MAX_STAGES = 20
MAX_DEVICES_PER_LIST = 100_000
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,62}$")


def _fail(msg: str) -> HubConfigError:
    return HubConfigError(f"rollout config: {msg}")


def _check_ids(ids: tuple[str, ...], where: str) -> None:
    if len(ids) > MAX_DEVICES_PER_LIST:
        raise _fail(f"{where}: more than {MAX_DEVICES_PER_LIST} devices")
    for d in ids:
        if not isinstance(d, str) or not _ID_RE.fullmatch(d):
            raise _fail(f"{where}: invalid device id {d!r}")
    if len(set(ids)) != len(ids):
        raise _fail(f"{where}: duplicate device ids")


def _check_labels(labels: Mapping[str, str], where: str) -> None:
    if len(labels) > 32:
        raise _fail(f"{where}: at most 32 label selectors")
    for k, v in labels.items():
        if not (isinstance(k, str) and _LABEL_RE.fullmatch(k)):
            raise _fail(f"{where}: invalid label key {k!r}")
        if not (isinstance(v, str) and _LABEL_RE.fullmatch(v)):
            raise _fail(f"{where}: invalid label value {v!r} for {k!r}")


def parse_labels(items: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``["site=plant-3", "line=a"]`` → ``{"site": "plant-3", "line": "a"}``."""
    out: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key or not value:
            raise _fail(f"label selector {item!r} is not KEY=VALUE")
        out[key.strip()] = value.strip()
    _check_labels(out, "labels")
    return out


def _finite(value: float, name: str, lo: float, hi: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _fail(f"{name} must be a number")
    if not (math.isfinite(value) and lo <= value <= hi):
        raise _fail(f"{name}={value} outside [{lo}, {hi}]")


@dataclass(frozen=True)
class TargetSelector:
    """Which devices a rollout targets: one device class, narrowed by labels and/or ids.

    A device matches when its class equals ``device_class``, it carries every label in
    ``labels`` and, if ``device_ids`` is not empty, its id is listed.
    """

    device_class: str
    labels: Mapping[str, str] = field(default_factory=dict)
    device_ids: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.device_class, str) or not _ID_RE.fullmatch(self.device_class):
            raise _fail(f"invalid device class {self.device_class!r}")
        _check_labels(self.labels, "target.labels")
        _check_ids(tuple(self.device_ids), "target.device_ids")
        object.__setattr__(self, "labels", dict(self.labels))
        object.__setattr__(self, "device_ids", tuple(self.device_ids))

    def matches(self, device_class: str, labels: Mapping[str, str], device_id: str) -> bool:
        if device_class != self.device_class:
            return False
        if self.device_ids and device_id not in self.device_ids:
            return False
        return all(labels.get(k) == v for k, v in self.labels.items())


@dataclass(frozen=True)
class StageSpec:
    """One stage: exactly one of ``count``, ``percent`` (cumulative share of the target),
    ``device_ids`` or ``labels`` (devices of the target carrying them)."""

    count: int | None = None
    percent: float | None = None
    device_ids: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        chosen = [
            self.count is not None,
            self.percent is not None,
            bool(self.device_ids),
            bool(self.labels),
        ]
        if sum(chosen) != 1:
            raise _fail("a stage takes exactly one of count, percent, device_ids, labels")
        if self.count is not None and (
            isinstance(self.count, bool) or not isinstance(self.count, int) or self.count < 1
        ):
            raise _fail(f"stage count must be an integer >= 1, got {self.count!r}")
        if self.percent is not None:
            _finite(self.percent, "stage percent", 0.0, 100.0)
            if self.percent <= 0:
                raise _fail("stage percent must be > 0")
        _check_ids(tuple(self.device_ids), "stage.device_ids")
        _check_labels(self.labels, "stage.labels")
        object.__setattr__(self, "device_ids", tuple(self.device_ids))
        object.__setattr__(self, "labels", dict(self.labels))

    def to_dict(self) -> dict[str, Any]:
        if self.count is not None:
            return {"count": self.count}
        if self.percent is not None:
            return {"percent": self.percent}
        if self.device_ids:
            return {"device_ids": list(self.device_ids)}
        return {"labels": dict(self.labels)}


@dataclass(frozen=True)
class GateThresholds:
    """Limits a stage must meet to promote. ``None`` disables a check.

    - ``min_install_success``: succeeded / stage devices.
    - ``max_error_rate``: inference errors / requests on the new version.
    - ``max_p95_ratio``: stage median of device p95 latency / previous version's p95.
    - ``max_drift_score``: mean drift score of the stage's devices.
    - ``max_accuracy_drop``: previous accuracy - new accuracy on labelled feedback, counted
      only with at least ``min_feedback`` labelled samples.
    """

    min_install_success: float | None = 0.95
    max_error_rate: float | None = 0.05
    max_p95_ratio: float | None = 1.5
    max_drift_score: float | None = 0.5
    max_accuracy_drop: float | None = 0.05
    min_feedback: int = 20

    def __post_init__(self) -> None:
        for name in ("min_install_success", "max_error_rate", "max_accuracy_drop"):
            value = getattr(self, name)
            if value is not None:
                _finite(value, f"gates.{name}", 0.0, 1.0)
        if self.max_p95_ratio is not None:
            _finite(self.max_p95_ratio, "gates.max_p95_ratio", 1.0, 1000.0)
        if self.max_drift_score is not None:
            _finite(self.max_drift_score, "gates.max_drift_score", 0.0, 1e6)
        if isinstance(self.min_feedback, bool) or not isinstance(self.min_feedback, int):
            raise _fail("gates.min_feedback must be an integer")
        if not 1 <= self.min_feedback <= 10_000_000:
            raise _fail(f"gates.min_feedback={self.min_feedback} outside [1, 10000000]")


@dataclass(frozen=True)
class AbortRule:
    """hawkBit/Greengrass style: abort when more than ``failure_percent`` of the finished
    devices failed, once at least ``min_finished`` devices have finished."""

    failure_percent: float = 20.0
    min_finished: int = 3

    def __post_init__(self) -> None:
        _finite(self.failure_percent, "abort.failure_percent", 0.0, 100.0)
        if isinstance(self.min_finished, bool) or not isinstance(self.min_finished, int):
            raise _fail("abort.min_finished must be an integer")
        if not 1 <= self.min_finished <= MAX_DEVICES_PER_LIST:
            raise _fail(f"abort.min_finished={self.min_finished} out of range")

    def tripped(self, finished: int, failed: int) -> bool:
        return finished >= self.min_finished and 100.0 * failed / finished > self.failure_percent


@dataclass(frozen=True)
class RolloutConfig:
    """Everything a rollout needs; stored as JSON beside the rollout.

    ``stages[0]`` is the canary; the rest are the waves, in order. Percent stages are
    cumulative shares of the target (10 → 50 → 100).
    """

    bundle_id: str
    target: TargetSelector
    stages: tuple[StageSpec, ...] = (
        StageSpec(count=1),
        StageSpec(percent=10.0),
        StageSpec(percent=50.0),
        StageSpec(percent=100.0),
    )
    gates: GateThresholds = field(default_factory=GateThresholds)
    abort: AbortRule = field(default_factory=AbortRule)
    gate_window_s: float = 300.0
    offline_timeout_s: float = 900.0
    seed: int | None = None  # None: the engine draws one at create time and records it
    name: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.bundle_id, str) or not _ID_RE.fullmatch(self.bundle_id):
            raise _fail(f"invalid bundle id {self.bundle_id!r}")
        object.__setattr__(self, "stages", tuple(self.stages))
        if not 1 <= len(self.stages) <= MAX_STAGES:
            raise _fail(f"need 1..{MAX_STAGES} stages (canary + waves), got {len(self.stages)}")
        last = 0.0
        for i, stage in enumerate(self.stages):
            if stage.percent is not None:
                if stage.percent < last:
                    raise _fail(f"stage {i}: percent stages are cumulative and must not decrease")
                last = stage.percent
        _finite(self.gate_window_s, "gate_window_s", 0.0, 7 * 86400.0)
        _finite(self.offline_timeout_s, "offline_timeout_s", 0.0, 30 * 86400.0)
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise _fail("seed must be an integer")
        if len(self.name) > 200:
            raise _fail("name longer than 200 characters")

    @property
    def n_stages(self) -> int:
        return len(self.stages)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "bundle_id": self.bundle_id,
            "target": {
                "device_class": self.target.device_class,
                "labels": dict(self.target.labels),
                "device_ids": list(self.target.device_ids),
            },
            "stages": [s.to_dict() for s in self.stages],
            "gates": {
                "min_install_success": self.gates.min_install_success,
                "max_error_rate": self.gates.max_error_rate,
                "max_p95_ratio": self.gates.max_p95_ratio,
                "max_drift_score": self.gates.max_drift_score,
                "max_accuracy_drop": self.gates.max_accuracy_drop,
                "min_feedback": self.gates.min_feedback,
            },
            "abort": {
                "failure_percent": self.abort.failure_percent,
                "min_finished": self.abort.min_finished,
            },
            "gate_window_s": self.gate_window_s,
            "offline_timeout_s": self.offline_timeout_s,
            "seed": self.seed,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutConfig:
        """Build from JSON; any shape or value problem raises ``HubConfigError``."""
        if not isinstance(data, Mapping):
            raise _fail("expected an object")
        known = {
            "name",
            "bundle_id",
            "target",
            "stages",
            "gates",
            "abort",
            "gate_window_s",
            "offline_timeout_s",
            "seed",
        }
        unknown = set(data) - known
        if unknown:
            raise _fail(f"unknown fields {sorted(unknown)}")
        try:
            target = data.get("target")
            if not isinstance(target, Mapping):
                raise _fail("target must be an object")
            stages_raw = data.get("stages")
            kwargs: dict[str, Any] = {
                "bundle_id": data.get("bundle_id"),
                "target": TargetSelector(
                    device_class=target.get("device_class"),  # type: ignore[arg-type]
                    labels=dict(target.get("labels") or {}),
                    device_ids=tuple(target.get("device_ids") or ()),
                ),
            }
            if stages_raw is not None:
                if not isinstance(stages_raw, list):
                    raise _fail("stages must be a list")
                kwargs["stages"] = tuple(_stage_from(s) for s in stages_raw)
            if data.get("gates") is not None:
                kwargs["gates"] = GateThresholds(**dict(data["gates"]))
            if data.get("abort") is not None:
                kwargs["abort"] = AbortRule(**dict(data["abort"]))
            for key in ("gate_window_s", "offline_timeout_s", "seed", "name"):
                if data.get(key) is not None:
                    kwargs[key] = data[key]
            return cls(**kwargs)
        except HubConfigError:
            raise
        except (TypeError, ValueError, AttributeError) as exc:
            raise _fail(str(exc)) from exc


def _stage_from(raw: Any) -> StageSpec:
    if not isinstance(raw, Mapping):
        raise _fail("each stage must be an object")
    return StageSpec(
        count=raw.get("count"),
        percent=raw.get("percent"),
        device_ids=tuple(raw.get("device_ids") or ()),
        labels=dict(raw.get("labels") or {}),
    )
