"""Which target devices an artifact was not built for: said before a rollout starts (pure).

A bundle's signed manifest names the ``targets`` its artifact was built and gated for
(``x86-avx2``, ``x86-vnni``, ``arm64-neon``, ``tensorrt``); each device reports the facts
that imply its own target in ``hello`` (``shared.device_facts``). A device whose target is
not among the bundle's will run numerics the hub never judged: its golden-batch check will
likely refuse the install, so the operator hears it before starting, not from the gates.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

__all__ = ["MAX_NAMED", "target_warnings"]

MAX_NAMED = 10  # device ids quoted per warning


def _names(ids: Sequence[str]) -> str:
    shown = ", ".join(ids[:MAX_NAMED])
    return shown + (f" and {len(ids) - MAX_NAMED} more" if len(ids) > MAX_NAMED else "")


def target_warnings(
    bundle_targets: Sequence[str], device_targets: Mapping[str, str | None]
) -> tuple[str, ...]:
    """Warnings for devices outside ``bundle_targets`` (none if the bundle names none)."""
    if not bundle_targets:
        return ()
    built = set(bundle_targets)
    by_target: dict[str, list[str]] = {}
    unknown: list[str] = []
    for device_id, target in sorted(device_targets.items()):
        if target is None:
            unknown.append(device_id)
        elif target not in built:
            by_target.setdefault(target, []).append(device_id)
    out = [
        f"{len(ids)} device(s) run {target}, which the artifact was not built for "
        f"(built for {', '.join(sorted(built))}): {_names(ids)}"
        for target, ids in sorted(by_target.items())
    ]
    if unknown:
        out.append(
            f"{len(unknown)} device(s) have not reported their CPU/GPU facts, so whether the "
            f"artifact was built for them is unknown: {_names(unknown)}"
        )
    return tuple(out)
