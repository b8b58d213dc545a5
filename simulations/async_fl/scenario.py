"""An availability scenario file: ``[trace]``, ``[clock]`` and ``[target]`` tables (TOML).

Unknown tables or keys are refused with their name, so a typo never silently runs the
default. Command-line overrides are applied with :meth:`AvailabilityScenario.with_changes`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import tomllib

from cloud_hub.errors import HubConfigError
from simulations.async_fl.clock import ClockConfig
from simulations.async_fl.trace import TraceSpec

__all__ = ["AvailabilityScenario", "load_availability_scenario"]

_MAX_BYTES = 64 * 1024


@dataclass(frozen=True)
class AvailabilityScenario:
    trace: TraceSpec
    clock: ClockConfig
    target_accuracy: float = 0.95

    def with_changes(self, trace: dict[str, Any], clock: dict[str, Any]) -> AvailabilityScenario:
        try:
            return dataclasses.replace(
                self,
                trace=dataclasses.replace(self.trace, **trace),
                clock=dataclasses.replace(self.clock, **clock),
            )
        except ValueError as exc:
            raise HubConfigError(str(exc)) from exc


def _table(raw: dict[str, Any], name: str, cls: type) -> dict[str, Any]:
    table = raw.get(name, {})
    if not isinstance(table, dict):
        raise HubConfigError(f"[{name}] must be a table")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(table) - known)
    if unknown:
        raise HubConfigError(f"[{name}] has unknown keys {unknown}; known: {sorted(known)}")
    return table


def load_availability_scenario(path: Path) -> AvailabilityScenario:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise HubConfigError(f"cannot read scenario {path}: {exc}") from exc
    if len(data) > _MAX_BYTES:
        raise HubConfigError(f"scenario {path} is over {_MAX_BYTES} bytes")
    try:
        raw = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise HubConfigError(f"scenario {path} is not valid TOML: {exc}") from exc
    unknown = sorted(set(raw) - {"trace", "clock", "target"})
    if unknown:
        raise HubConfigError(f"scenario {path} has unknown tables {unknown}")
    target = raw.get("target", {})
    if not isinstance(target, dict) or set(target) - {"accuracy"}:
        raise HubConfigError("[target] takes only 'accuracy'")
    accuracy = target.get("accuracy", 0.95)
    if not isinstance(accuracy, int | float) or not 0 < accuracy <= 1:
        raise HubConfigError(f"[target] accuracy must be in (0, 1], got {accuracy!r}")
    try:
        return AvailabilityScenario(
            trace=TraceSpec(**_table(raw, "trace", TraceSpec)),
            clock=ClockConfig(**_table(raw, "clock", ClockConfig)),
            target_accuracy=float(accuracy),
        )
    except (TypeError, ValueError) as exc:
        raise HubConfigError(f"scenario {path}: {exc}") from exc
