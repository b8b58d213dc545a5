"""The mutation benchmark's scoring (pure) and its list of equivalent mutants."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("mutation_tool", ROOT / "benchmarks/mutation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["mutation_tool"] = module
    spec.loader.exec_module(module)
    return module


TOOL = _tool()
M = "shared.bundle.x_parse_bundle__mutmut_"


def test_survivors_listed_as_equivalent_are_reported_apart() -> None:
    results = {f"{M}1": 1, f"{M}2": 0, f"{M}3": 0, f"{M}4": 33, f"{M}5": None, f"{M}6": 36}
    listed = {f"{M}3": "why", f"{M}6": "listed, yet killed", "shared.delta.x_f__mutmut_1": "x"}
    score = TOOL.score_results("shared/bundle.py", results, listed)
    assert (score.mutants, score.killed) == (5, 2)  # not run (None) is not counted
    assert score.survivors == (f"{M}2", f"{M}4")  # "no tests" is a survivor
    assert score.equivalents == (f"{M}3",)
    assert score.stale == (f"{M}6",)
    assert score.score == pytest.approx(2 / 5)
    assert score.score_excluding_equivalents == pytest.approx(2 / 4)


def test_a_selection_scores_only_the_selected_functions() -> None:
    results = {f"{M}1": 1, f"{M}2": 0, "shared.bundle.x_other__mutmut_1": 0}
    listed = {"shared.bundle.x_other__mutmut_1": "outside the selection"}
    score = TOOL.score_results("shared/bundle.py", results, listed, [f"{M}*"])
    assert (score.mutants, score.killed, score.survivors) == (2, 1, (f"{M}2",))
    assert score.equivalents == () and score.stale == ()


def test_mutant_names_map_to_their_module() -> None:
    assert TOOL.module_of(f"{M}12") == "shared/bundle.py"
    assert TOOL.module_of("edge_agent.ota.machine.xǁDeploymentǁto_dict__mutmut_3") == (
        "edge_agent/ota/machine.py"
    )


def test_every_listed_equivalent_names_a_trust_core_module_and_why() -> None:
    listed = TOOL.load_equivalents()
    assert listed
    for name, why in listed.items():
        assert TOOL.module_of(name) in TOOL.TRUST_CORE, name
        assert len(why.strip()) >= 10, name


def test_a_listed_equivalent_without_a_reason_is_refused(tmp_path: Path) -> None:
    bad = tmp_path / "equivalents.toml"
    bad.write_text('[equivalent]\n"shared.bundle.x_f__mutmut_1" = " "\n')
    with pytest.raises(SystemExit, match="needs a reason"):
        TOOL.load_equivalents(bad)
