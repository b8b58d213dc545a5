"""The hub never reads a device's sample store: no module of ``cloud_hub`` imports the
sample-store reader (``shared.fl.sample_db``) or the agent's store. Retraining asks the
devices to train (Flower's Deployment Engine); only simulations read local sample stores."""

from __future__ import annotations

import ast
from pathlib import Path

import cloud_hub

READERS = ("shared.fl.sample_db", "edge_agent.samples")


def _imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    return names


def test_no_hub_module_imports_a_sample_store_reader() -> None:
    root = Path(cloud_hub.__file__).parent
    found = {
        str(path.relative_to(root.parent)): sorted(
            name for name in _imports(path) if name.startswith(READERS)
        )
        for path in sorted(root.rglob("*.py"))
    }
    assert {path: names for path, names in found.items() if names} == {}
