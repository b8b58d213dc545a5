"""Results of a simulation on disk: per-round JSON, a PNG plot, a summary table."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cloud_hub.fl.recorder import RoundMetrics

__all__ = ["format_progress", "format_summary_table", "write_results"]


def format_progress(metrics: RoundMetrics, total_rounds: int, width: int = 24) -> str:
    """One progress-bar line for a finished round."""
    done = int(width * metrics.round / max(total_rounds, 1))
    bar = "#" * done + "." * (width - done)
    flag = "" if metrics.status == "ok" else f"  FAILED: {metrics.detail}"
    return (
        f"[{bar}] round {metrics.round:>3}/{total_rounds}  acc={metrics.accuracy:.4f}  "
        f"loss={metrics.loss:.4f}  clients={metrics.clients}  fit={metrics.fit_time_s:.2f}s  "
        f"t={metrics.elapsed_s:.1f}s{flag}"
    )


def format_summary_table(rows: list[tuple[str, str]]) -> str:
    width = max(len(k) for k, _ in rows)
    line = "+" + "-" * (width + 2) + "+" + "-" * (max(len(v) for _, v in rows) + 2) + "+"
    body = [f"| {k.ljust(width)} | {v.ljust(len(line) - width - 7)} |" for k, v in rows]
    return "\n".join([line, *body, line])


def write_results(
    out_dir: Path, name: str, summary: dict[str, Any], rounds: list[RoundMetrics]
) -> dict[str, Path]:
    """Write ``rounds.json`` (one object per round), ``summary.json`` and ``metrics.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {
        "rounds": out_dir / "rounds.json",
        "summary": out_dir / "summary.json",
        "plot": out_dir / "metrics.png",
    }
    paths["rounds"].write_text(json.dumps([r.to_dict() for r in rounds], indent=2))
    paths["summary"].write_text(json.dumps(summary, indent=2, default=str))
    _plot(paths["plot"], name, rounds)
    return paths


def _plot(path: Path, name: str, rounds: list[RoundMetrics]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [r.round for r in rounds]
    fig, (ax_acc, ax_loss) = plt.subplots(1, 2, figsize=(10, 4))
    ax_acc.plot(xs, [r.accuracy for r in rounds], marker="o")
    ax_acc.set(title="validation accuracy", xlabel="round", ylim=(0, 1))
    ax_loss.plot(xs, [r.loss for r in rounds], marker="o", color="tab:red")
    ax_loss.set(title="validation loss", xlabel="round")
    for ax in (ax_acc, ax_loss):
        ax.grid(alpha=0.3)
    fig.suptitle(name)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
