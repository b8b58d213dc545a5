"""The build report: where and how an artifact was evaluated (goes into ``metrics.json``).

It records the hub's CPU model, ISA flags and onnxruntime version, the int8 recipe, and per
target whether the hub ran the target's kernels -- saying explicitly when it could not (e.g.
a VNNI target evaluated on an AVX2 hub) and which numerics judged the artifact instead.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import onnxruntime as ort

from cloud_hub.compress.recipes import Int8Recipe, TargetEvaluation, plan_target_evaluation
from shared.device_facts import DeviceFacts, detect_device_facts

__all__ = ["BuildReport", "hub_device_facts", "plan_build_report"]


@functools.cache
def hub_device_facts() -> DeviceFacts:
    """This hub's CPU/GPU facts (probed once per process)."""
    return detect_device_facts()


@dataclass(frozen=True)
class BuildReport:
    hub: DeviceFacts
    onnxruntime_version: str
    recipe: Int8Recipe | None
    evaluations: tuple[TargetEvaluation, ...]
    accuracy_by_evaluation: dict[str, float]  # "hub_kernels" / "exact_qdq" -> accuracy

    @property
    def needs_exact_numerics(self) -> bool:
        """Whether some target's kernels are not the hub's (judge on exact Q/DQ numerics)."""
        return any(not e.hub_kernels for e in self.evaluations)

    @property
    def hub_runs_a_target(self) -> bool:
        return any(e.hub_kernels for e in self.evaluations)

    def with_accuracies(self, accuracies: dict[str, float]) -> BuildReport:
        return BuildReport(
            self.hub, self.onnxruntime_version, self.recipe, self.evaluations, dict(accuracies)
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "hub": {
                "cpu_model": self.hub.cpu_model,
                "arch": self.hub.arch,
                "flags": list(self.hub.isa_flags),
                "gpu_model": self.hub.gpu_model,
                "targets": list(self.hub.targets()),
            },
            "onnxruntime_version": self.onnxruntime_version,
            "recipe": None if self.recipe is None else self.recipe.to_dict(),
            "targets": [e.to_dict() for e in self.evaluations],
            "could_not_evaluate_with_target_kernels": sorted(
                e.target for e in self.evaluations if not e.hub_kernels
            ),
            "accuracy_by_evaluation": dict(self.accuracy_by_evaluation),
        }


def plan_build_report(
    targets: tuple[str, ...], recipe: Int8Recipe | None, hub: DeviceFacts | None = None
) -> BuildReport:
    hub = hub or hub_device_facts()
    return BuildReport(
        hub=hub,
        onnxruntime_version=ort.__version__,
        recipe=recipe,
        evaluations=plan_target_evaluation(targets, hub, recipe),
        accuracy_by_evaluation={},
    )
