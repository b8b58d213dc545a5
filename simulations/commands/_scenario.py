"""Scenario files named on the command line: a TOML path, or a name shipped in a folder."""

from __future__ import annotations

from pathlib import Path

from cloud_hub.errors import HubConfigError

__all__ = ["SIMULATIONS_ROOT", "resolve_scenario"]

SIMULATIONS_ROOT = Path(__file__).resolve().parents[1]


def resolve_scenario(scenario: str, shipped: Path) -> Path:
    """``scenario`` as a file path, else ``shipped/NAME.toml``; :class:`HubConfigError`
    when neither exists."""
    path = Path(scenario)
    if path.is_file():
        return path
    named = shipped / f"{scenario.removesuffix('.toml')}.toml"
    if named.is_file():
        return named
    where = shipped.relative_to(SIMULATIONS_ROOT.parent)
    raise HubConfigError(f"no scenario {scenario!r} (a TOML path or a name in {where})")
