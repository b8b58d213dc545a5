"""The accuracy/size/latency gate: a pure check of metrics against a profile's budgets.

Three accuracy rules: the drop against the artifact's own fp32 model, an absolute floor
(``min_accuracy_pct``: the fp16 artifact of a chance-level model must not pass because it
loses nothing against its fp32 model), and -- when the caller knows the champion's accuracy
on the same evaluation set -- the champion comparison the retraining pipeline applies to fp32
(the artifact must not be worse than the champion by more than ``champion_margin_pts``).
"""

from __future__ import annotations

from cloud_hub.compress.evaluate import ArtifactMetrics
from cloud_hub.compress.profile import Budgets
from cloud_hub.errors import GateRefusedError

__all__ = ["budget_violations", "enforce_budgets"]

_MB = 1024 * 1024
_EPS = 1e-9  # accuracies are count/n fractions: a drop exactly at the budget must pass


def budget_violations(
    metrics: ArtifactMetrics,
    budgets: Budgets,
    *,
    champion_accuracy: float | None = None,
    champion_margin_pts: float = 0.0,
) -> tuple[str, ...]:
    """Every budget the metrics exceed, each as a sentence with both numbers."""
    found: list[str] = []
    accuracy_pct = metrics.accuracy * 100.0
    if accuracy_pct + _EPS < budgets.min_accuracy_pct:
        found.append(f"accuracy {accuracy_pct:.2f}% < floor {budgets.min_accuracy_pct:.2f}%")
    if champion_accuracy is not None:
        needed = champion_accuracy * 100.0 - champion_margin_pts
        if accuracy_pct + _EPS < needed:
            found.append(
                f"accuracy {accuracy_pct:.2f}% < champion {champion_accuracy * 100:.2f}% "
                f"- {champion_margin_pts:.2f} pts"
            )
    size_mb = metrics.size_bytes / _MB
    if size_mb > budgets.max_size_mb:
        found.append(f"size {size_mb:.3f} MB > max {budgets.max_size_mb:.3f} MB")
    drop = metrics.accuracy_drop_pts
    if drop > budgets.max_accuracy_drop_pts + _EPS:
        found.append(
            f"accuracy drop {drop:.2f} pts (fp32 {metrics.accuracy_fp32 * 100:.2f}% -> "
            f"{metrics.accuracy * 100:.2f}%) > max {budgets.max_accuracy_drop_pts:.2f} pts"
        )
    latency = metrics.latency_ms.get("b1")
    if latency is not None and latency > budgets.max_latency_ms:
        found.append(f"batch-1 latency {latency:.3f} ms > max {budgets.max_latency_ms:.3f} ms")
    return tuple(found)


def enforce_budgets(
    profile_name: str,
    metrics: ArtifactMetrics,
    budgets: Budgets,
    *,
    champion_accuracy: float | None = None,
    champion_margin_pts: float = 0.0,
) -> None:
    """Raise ``GateRefusedError`` naming every exceeded budget; return if all are met."""
    violations = budget_violations(
        metrics,
        budgets,
        champion_accuracy=champion_accuracy,
        champion_margin_pts=champion_margin_pts,
    )
    if violations:
        raise GateRefusedError(
            f"artifact for profile {profile_name!r} refused: " + "; ".join(violations)
        )
