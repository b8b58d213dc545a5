"""The demo's and benchmark's outputs: bytes shipped (from the registry), the summary table,
and plots (matplotlib, Agg backend)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cloud_hub.registry import catalog, reports, rollouts

__all__ = ["bytes_shipped", "summary_table", "write_plots"]


def bytes_shipped(
    registry: Any, rollout_ids: Sequence[str], delivered: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Per rollout: the bundle's size, how often it was published (each deployment publishes
    every chunk once on the bundle's fan-out topic), how many devices downloaded it, and the
    smallest delta bundle registered for it. ``delivered`` (the rollout delivery's totals:
    ``bytes_shipped``/``bytes_full`` per rollout) gives what devices really downloaded —
    deltas where a device ran their base — against what full bundles would have cost."""
    per: dict[str, Any] = {}
    full_hub = full_dev = delta_dev = actual_dev = 0
    with registry.session() as s:
        for rid in rollout_ids:
            record = rollouts.get_rollout(s, rid)
            bundle = catalog.get_bundle(s, record.bundle_id)
            targets = rollouts.list_targets(s, rid)
            deployments = {t.deployment_id for t in targets if t.deployment_id}
            devices = sum(1 for t in targets if t.state == "succeeded")
            deltas = [
                b.size
                for b in catalog.list_bundles(
                    s, model_name=bundle.model_name, device_class=bundle.device_class, limit=1000
                ).items
                if b.kind == "delta" and b.version == bundle.version
            ]
            delta = min(deltas) if deltas else None
            per[rid] = {
                "version": bundle.version,
                "bundle_bytes": bundle.size,
                "delta_bundle_bytes": delta,
                "publications": len(deployments),
                "devices": devices,
            }
            per[rid]["device_bytes_received"] = _received_by_devices(s, rid)
            totals = (delivered or {}).get(rid)
            if totals is not None:
                per[rid]["device_bytes_shipped"] = totals.bytes_shipped
                per[rid]["device_bytes_if_full"] = totals.bytes_full
                actual_dev += totals.bytes_shipped
            full_hub += bundle.size * len(deployments)
            full_dev += bundle.size * devices
            delta_dev += (delta if delta is not None else bundle.size) * devices
    return {
        "rollouts": per,
        "full_bytes_shipped": full_hub,
        "full_bytes_received_by_devices": full_dev,
        "delta_bytes_if_devices_took_deltas": delta_dev,
        "device_bytes_shipped": actual_dev if delivered is not None else None,
    }


def _received_by_devices(session: Any, rollout_id: str) -> dict[str, int]:
    """Per device: the bundle bytes it says it received for the rollout's deployments (its
    ``download_complete`` events), measured on the device, not planned by the hub."""
    from shared.messages import EventKind

    received: dict[str, dict[str, int]] = {}
    page = reports.list_events(session, kinds=[EventKind.DOWNLOAD_COMPLETE], limit=10_000)
    for event in page.items:
        deployment = event.deployment_id or ""
        if deployment.startswith(f"{rollout_id}.") and "bytes_received" in event.data:
            # a repeated event for the same deployment counts once
            received.setdefault(event.device_id, {})[deployment] = int(event.data["bytes_received"])
    return {device: sum(per.values()) for device, per in sorted(received.items())}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.3f}"
    return str(value)


def summary_table(summary: dict[str, Any]) -> str:
    rows = [
        ("accuracy before drift (plant-3)", summary["accuracy_before_drift"]),
        ("accuracy after drift (plant-3)", summary["accuracy_after_drift"]),
        ("accuracy after retraining (plant-3)", summary["accuracy_after_retrain"]),
        ("recovered (points)", f"{summary['accuracy_recovered_pts']:+.1f}"),
        (
            "accuracy other sites before / after",
            "{} / {}".format(
                _fmt(summary["healthy_accuracy_before_drift"]),
                _fmt(summary["healthy_accuracy_after_retrain"]),
            ),
        ),
    ]
    for rid, info in summary["bytes"]["rollouts"].items():
        rows.append(
            (
                f"v{info['version']} bundle (rollout {rid})",
                f"{info['bundle_bytes']} B full, "
                f"{info['delta_bundle_bytes'] or '-'} B delta; "
                f"published {info['publications']}x, {info['devices']} devices",
            )
        )
    rows.append(("bytes shipped (hub, full bundles)", summary["bytes"]["full_bytes_shipped"]))
    actual = summary["bytes"].get("device_bytes_shipped")
    rows.append(
        (
            "bytes received by devices: full-bundle cost / shipped (deltas)",
            f"{summary['bytes']['full_bytes_received_by_devices']} / "
            f"{actual if actual is not None else summary['bytes']['delta_bytes_if_devices_took_deltas']}",
        )
    )
    for name, info in summary["rollouts"].items():
        rows.append((f"rollout time ({name})", f"{info['duration_s']:.1f} s ({info['state']})"))
    rows.append(
        ("drift onset -> recovered model served", f"{summary['drift_to_recovered_s']:.1f} s")
    )
    for name, seconds in summary.get("phases_s", {}).items():
        rows.append((f"  phase: {name.replace('_', ' ')}", f"{seconds:.1f} s"))
    rows.append(("wall time", f"{summary['wall_s']:.1f} s"))
    width = max(len(r[0]) for r in rows)
    line = "-" * (width + 40)
    body = "\n".join(f"{name.ljust(width)}  {_fmt(value)}" for name, value in rows)
    return f"{line}\n{body}\n{line}"


def write_plots(out: Path, summary: dict[str, Any], timeline: list[dict[str, Any]]) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written: list[Path] = []
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for drifted, colour, label in (
        (True, "tab:red", "plant-3 (drifted)"),
        (False, "tab:blue", "other sites"),
    ):
        pts = [(r["t"], r["accuracy"]) for r in timeline if r["drifted"] == drifted]
        if pts:
            ts, accs = zip(*pts, strict=True)
            ax.scatter(ts, accs, s=10, alpha=0.5, color=colour, label=label)
    for phase, style in (("after_drift", "--"), ("after_retrain", ":")):
        starts = [r["t"] for r in timeline if r["phase"] == phase]
        if starts:
            ax.axvline(min(starts), color="grey", linestyle=style, label=f"{phase} starts")
    ax.set_xlabel("seconds since the first model was served")
    ax.set_ylabel("accuracy per request (50 inputs)")
    ax.set_ylim(0, 1.05)
    ax.set_title("Closed loop: drift at plant-3, federated retraining, staged rollout")
    ax.legend(loc="lower left")
    fig.tight_layout()
    path = out / "accuracy.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)

    fig, ax = plt.subplots(figsize=(6, 4))
    b = summary["bytes"]
    names = ["full bundles\nto devices", "with deltas\nto devices"]
    values = [b["full_bytes_received_by_devices"], b["delta_bytes_if_devices_took_deltas"]]
    ax.bar(names, values, color=["tab:gray", "tab:green"])
    ax.set_ylabel("bytes")
    ax.set_title("Bytes shipped")
    fig.tight_layout()
    path = out / "bytes.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    written.append(path)
    return written
