"""Write a fleet simulation's results: ``results.json``, ``devices.csv``, ``timeline.csv`` and
``fleet.png`` (versions over time with the faults marked, drift per site, bytes per device)."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from simulations.fleet.invariants import DeviceOutcome

__all__ = ["TimelinePoint", "write_results"]

TimelinePoint = dict[str, Any]  # {"t": seconds, "v<N>": devices on N, "online": n, ...}


def _csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for row in rows:
            writer.writerow(row)


def _plot(
    path: Path,
    timeline: Sequence[TimelinePoint],
    devices: Sequence[DeviceOutcome],
    markers: Sequence[tuple[float, str]],
    title: str,
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    versions = sorted(
        {k for p in timeline for k in p if k.startswith("v")}, key=lambda k: int(k[1:])
    )
    ts = [p["t"] for p in timeline]
    for v in versions:
        ax.plot(ts, [p.get(v, 0) for p in timeline], label=f"on {v}")
    ax.plot(ts, [p.get("online", 0) for p in timeline], "k:", label="online")
    colors = {"kill": "tab:red", "sigkill": "darkred", "broker": "tab:purple"}
    seen: set[str] = set()
    for t, kind in markers:
        ax.axvline(
            t,
            color=colors.get(kind, "gray"),
            alpha=0.5,
            lw=1,
            label=kind if kind not in seen else None,
        )
        seen.add(kind)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("devices")
    ax.set_title("installed version")
    ax.legend(fontsize=7)

    ax = axes[1]
    sites = sorted({d.site for d in devices})
    rates = [
        [d.drifted_windows / d.drift_windows for d in devices if d.site == s and d.drift_windows]
        for s in sites
    ]
    ax.boxplot([r or [0.0] for r in rates], tick_labels=sites)
    ax.set_ylim(-0.05, 1.05)
    ax.set_ylabel("share of drift windows flagged")
    ax.set_title("drift reports in the registry, per site")

    ax = axes[2]
    links = sorted({d.link for d in devices if d.link != "process"})  # not measured there
    for link in links:
        ax.hist(
            [d.bytes_received / 1024 for d in devices if d.link == link],
            bins=20,
            alpha=0.6,
            label=link,
        )
    ax.set_xlabel("chunk bytes received per device (KiB)")
    ax.set_title("transfer volume per device")
    ax.legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_results(
    out: Path,
    summary: Mapping[str, Any],
    devices: Sequence[DeviceOutcome],
    timeline: Sequence[TimelinePoint],
    markers: Sequence[tuple[float, str]],
) -> dict[str, Path]:
    """Write every output file into ``out``; returns their paths by name."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {
        "results": out / "results.json",
        "devices": out / "devices.csv",
        "timeline": out / "timeline.csv",
        "plot": out / "fleet.png",
    }
    paths["results"].write_text(json.dumps(summary, indent=2, default=str) + "\n", encoding="utf-8")
    _csv(paths["devices"], [d.row() for d in devices])
    _csv(paths["timeline"], list(timeline))
    _plot(paths["plot"], timeline, devices, markers, str(summary.get("scenario", "")))
    return paths
