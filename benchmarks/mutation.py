"""Mutation testing of the trust core with mutmut: would the tests notice a bug here?

mutmut rewrites each function of the listed modules into many small variants (a ``<``
turned into ``<=``, a constant changed, a call dropped) and runs the tests that cover the
function against each one. A variant the tests fail on is *killed*; one they pass is a
*survivor*: a bug of that shape would ship unnoticed. Score = killed / mutants (mutants no
test reaches count as survivors, so uncovered code lowers the score).

The run happens in a temporary copy of the checkout (mutmut rewrites the files it mutates),
so the working tree is never touched.

    python benchmarks/mutation.py            # every trust-core module (``make mutation``)
    python benchmarks/mutation.py --quick    # a fixed sample, < 60 s
    python benchmarks/mutation.py --survivors   # also list each surviving mutant
    python benchmarks/mutation.py --module shared/delta.py --diffs   # ... with its diff

Some survivors are *equivalent*: no test can kill them because the program behaves the
same (a compression level, a bound that a later check makes unreachable). They are listed,
each with why, in ``benchmarks/mutation_equivalents.toml``; the score is reported raw and
excluding the listed equivalents. A listed mutant that is killed or no longer exists is
reported as stale (the source changed: mutant names are numbered per function).

The last line of output is one JSON object: ``{"mutants", "killed", "score", ...}``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.device_facts import detect_device_facts  # noqa: E402

_BUNDLE_TESTS = (
    "tests/shared_protocol/test_shared_protocol_bundle.py",
    "tests/shared_protocol/test_shared_protocol_bundle_edges.py",
)
# module -> the tests that speak for it (unit tests: pure, fast, no broker or processes)
# (shared/bundle_policy.py holds only dataclasses: nothing for mutmut to rewrite)
TRUST_CORE: Mapping[str, Sequence[str]] = {
    # unit tests only: mutmut runs every covering test per mutant, and the attack tests in
    # tests/security start brokers and processes (the full run would take hours on 2 cores)
    "shared/bundle.py": _BUNDLE_TESTS,
    "shared/bundle_manifest.py": _BUNDLE_TESTS,
    "shared/bundle_container.py": _BUNDLE_TESTS,
    "shared/rollback_order.py": _BUNDLE_TESTS,
    "shared/signing.py": (
        "tests/shared_protocol/test_shared_protocol_signed_document.py",
        "tests/shared_protocol/test_shared_protocol_signing.py",
        "tests/shared_protocol/test_shared_protocol_signing_edges.py",
        "tests/shared_protocol/test_shared_protocol_bundle.py",
        "tests/fl/test_fl_order.py",
    ),
    # the format on synthetic files: the round trips on real models train a network first
    "shared/delta.py": ("tests/delta/test_delta_ops.py",),
    "edge_agent/ota/machine.py": (
        "tests/agent_ota/test_agent_ota_machine.py",
        "tests/agent_ota/test_agent_ota_record_edges.py",
        "tests/agent_ota/test_agent_ota_updater.py",
    ),
    "cloud_hub/rollout/gates.py": ("tests/rollout/test_rollout_gates.py",),
    "cloud_hub/rollout/state.py": ("tests/rollout/test_rollout_state.py",),
    "shared/fl/secure_prg.py": (
        "tests/fl/test_fl_secure_prg.py",
        "tests/fl/test_fl_run_safety.py::test_the_generator_in_use_is_read_from_what_flower_would_call",
    ),
}

# --quick: the functions whose bugs would hurt most, in two modules, always the same ones,
# against the tests that name each refusal precisely (the property tests, which take a
# second or more per mutant, are left to the full run)
QUICK_MODULES = (
    "shared/bundle.py",
    "shared/rollback_order.py",
    "shared/signing.py",
    "edge_agent/ota/machine.py",
)
QUICK_TESTS = (
    "tests/shared_protocol/test_shared_protocol_signed_document.py",
    "tests/shared_protocol/test_shared_protocol_bundle.py",
    "tests/shared_protocol/test_shared_protocol_bundle_edges.py",
    "tests/agent_ota/test_agent_ota_machine.py",
    "tests/agent_ota/test_agent_ota_record_edges.py",
)
QUICK_DESELECT = (
    "tests/shared_protocol/test_shared_protocol_bundle.py::test_any_byte_flip_is_refused_with_a_bundle_error",
    "tests/shared_protocol/test_shared_protocol_bundle.py::test_garbage_is_refused_as_malformed",
)
# pytest plugins these tests do not use: each mutant starts a pytest session
QUICK_PLUGINS_OFF = ("schemathesis", "anyio")
# the verdicts a device acts on: offer, bundle, artifacts, rollback order, the check every
# online-signed document passes, lifecycle step (the container parser and the manifest shape
# checks are left to the full run)
QUICK_FUNCTIONS = (
    "shared.bundle.x_verify_bundle__mutmut_*",
    "shared.bundle.x_verify_offer__mutmut_*",
    "shared.bundle.x_verify_artifacts__mutmut_*",
    "shared.rollback_order.x_verify_rollback_order__mutmut_*",
    "shared.signing.xǁKeyringǁverify_document__mutmut_*",
    "edge_agent.ota.machine.x_transition__mutmut_*",
)

EQUIVALENTS_FILE = Path(__file__).with_name("mutation_equivalents.toml")

# mutmut's exit-code vocabulary (mutmut.stats.status_by_exit_code)
_KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # test failure, error, timeout, type error
_NOT_RUN = {None, 2, 34}


@dataclass(frozen=True)
class ModuleScore:
    module: str
    mutants: int
    killed: int
    survivors: tuple[str, ...]  # not killed and not listed as equivalent
    equivalents: tuple[str, ...]  # not killed, listed as equivalent
    stale: tuple[str, ...] = ()  # listed as equivalent, yet killed or gone

    @property
    def score(self) -> float:
        return self.killed / self.mutants if self.mutants else 0.0

    @property
    def score_excluding_equivalents(self) -> float:
        judged = self.mutants - len(self.equivalents)
        return self.killed / judged if judged else 0.0


def load_equivalents(path: Path = EQUIVALENTS_FILE) -> dict[str, str]:
    """Mutant name -> why it is equivalent (``[equivalent]`` table of the TOML file)."""
    if not path.exists():
        return {}
    table = tomllib.loads(path.read_text())["equivalent"]
    if not all(isinstance(why, str) and why.strip() for why in table.values()):
        raise SystemExit(f"{path}: every equivalent mutant needs a reason")
    return dict(table)


_COPIED = ("shared", "edge_agent", "cloud_hub", "tests", "pyproject.toml")


def _copy_checkout(dest: Path) -> None:
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", *_COPIED],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split("\n")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _write_config(
    dest: Path,
    modules: Sequence[str],
    tests: Sequence[str],
    deselect: Sequence[str] = (),
    plugins_off: Sequence[str] = (),
) -> None:
    sources = sorted({m.split("/")[0] for m in modules})
    pytest_args = ["-p", "no:cacheprovider", "-q", "-x"]
    for plugin in plugins_off:
        pytest_args += ["-p", f"no:{plugin}"]
    for node in deselect:
        pytest_args += ["--deselect", node]
    table = {
        "source_paths": sources,
        "only_mutate": list(modules),
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": pytest_args,
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    with (dest / "pyproject.toml").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def module_of(mutant: str) -> str:
    """``shared.bundle.x_parse__mutmut_3`` -> ``shared/bundle.py``."""
    dotted = mutant.split("__mutmut_")[0].rsplit(".", 1)[0]
    return dotted.replace(".", "/") + ".py"


def score_results(
    module: str,
    results: Mapping[str, int | None],
    equivalents: Mapping[str, str],
    selected: Sequence[str] = (),
) -> ModuleScore:
    """Score one module from mutmut's exit codes (pure)."""
    import fnmatch

    if selected:
        results = {k: v for k, v in results.items() if any(fnmatch.fnmatch(k, p) for p in selected)}
    checked = {k: v for k, v in results.items() if v not in _NOT_RUN}
    killed = sum(1 for v in checked.values() if v in _KILLED)
    not_killed = sorted(k for k, v in checked.items() if v not in _KILLED)
    listed = {k for k in equivalents if module_of(k) == module}
    if selected:
        listed = {k for k in listed if any(fnmatch.fnmatch(k, p) for p in selected)}
    return ModuleScore(
        module,
        mutants=len(checked),
        killed=killed,
        survivors=tuple(k for k in not_killed if k not in listed),
        equivalents=tuple(k for k in not_killed if k in listed),
        stale=tuple(sorted(listed - set(not_killed))),
    )


def _scores(
    dest: Path, modules: Sequence[str], selected: Sequence[str], equivalents: Mapping[str, str]
) -> list[ModuleScore]:
    out = []
    for module in modules:
        meta = json.loads((dest / "mutants" / f"{module}.meta").read_text())
        out.append(score_results(module, meta["exit_code_by_key"], equivalents, selected))
    return out


def _diffs(dest: Path, names: Sequence[str]) -> dict[str, str]:
    mutmut = Path(sys.executable).with_name("mutmut")
    out = {}
    for name in names:
        shown = subprocess.run(
            [str(mutmut), "show", name], cwd=dest, capture_output=True, text=True
        )
        out[name] = shown.stdout.strip()
    return out


@dataclass(frozen=True)
class RunResult:
    scores: list[ModuleScore]
    wall_s: float
    diffs: dict[str, str]


def run_mutmut(
    quick: bool,
    children: int,
    only: Sequence[str] = (),
    *,
    equivalents: Mapping[str, str] | None = None,
    diffs: bool = False,
) -> RunResult:
    modules = QUICK_MODULES if quick else tuple(only or TRUST_CORE)
    tests = QUICK_TESTS if quick else tuple(sorted({t for m in modules for t in TRUST_CORE[m]}))
    selected = QUICK_FUNCTIONS if quick else ()
    deselect = QUICK_DESELECT if quick else ()
    plugins_off = QUICK_PLUGINS_OFF if quick else ()
    listed = load_equivalents() if equivalents is None else equivalents
    with tempfile.TemporaryDirectory(prefix="fedfleet-mutation-") as tmp:
        dest = Path(tmp)
        _copy_checkout(dest)
        present = [t for t in tests if (dest / t).exists()]
        _write_config(dest, modules, present, deselect, plugins_off)
        mutmut = Path(sys.executable).with_name("mutmut")
        started = time.perf_counter()
        proc = subprocess.run(
            [str(mutmut), "run", "--max-children", str(children), *selected],
            cwd=dest,
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
        )
        wall = time.perf_counter() - started
        if proc.returncode != 0:
            tail = (proc.stdout + proc.stderr)[-3000:]
            raise SystemExit(f"mutmut failed (exit {proc.returncode}):\n{tail}")
        scores = _scores(dest, modules, selected, listed)
        shown = _diffs(dest, [n for s in scores for n in s.survivors]) if diffs else {}
        return RunResult(scores, wall, shown)


def _print_table(
    scores: Sequence[ModuleScore],
    equivalents: Mapping[str, str],
    *,
    survivors: bool,
    diffs: Mapping[str, str],
) -> None:
    print(f"{'module':28} {'mutants':>7} {'killed':>6} {'equiv':>5} {'score':>6} {'excl.eq':>7}")
    for s in scores:
        print(
            f"{s.module:28} {s.mutants:7d} {s.killed:6d} {len(s.equivalents):5d} "
            f"{s.score:6.3f} {s.score_excluding_equivalents:7.3f}"
        )
        for name in s.stale:
            print(f"    stale equivalent (killed or gone; update the list): {name}")
        if survivors:
            for name in s.equivalents:
                print(f"    equivalent: {name}: {equivalents[name]}")
        if survivors or diffs:
            for name in s.survivors:
                print(f"    survived: {name}")
                if name in diffs:
                    print("        " + diffs[name].replace("\n", "\n        "))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fixed sample, < 60 s")
    parser.add_argument("--survivors", action="store_true", help="list surviving mutants")
    parser.add_argument("--children", type=int, default=os.cpu_count() or 2)
    parser.add_argument(
        "--module",
        action="append",
        default=[],
        choices=sorted(TRUST_CORE),
        help="score only this module (repeatable; default: the whole trust core)",
    )
    parser.add_argument(
        "--diffs", action="store_true", help="show the diff of each unlisted survivor"
    )
    args = parser.parse_args(argv)

    equivalents = load_equivalents()
    run = run_mutmut(
        args.quick, args.children, args.module, equivalents=equivalents, diffs=args.diffs
    )
    scores = run.scores
    _print_table(scores, equivalents, survivors=args.survivors, diffs=run.diffs)
    mutants = sum(s.mutants for s in scores)
    killed = sum(s.killed for s in scores)
    equivalent = sum(len(s.equivalents) for s in scores)
    facts = detect_device_facts()
    result: dict[str, Any] = {
        "mutants": mutants,
        "killed": killed,
        "score": round(killed / mutants, 4) if mutants else 0.0,
        "equivalents": equivalent,
        "score_excluding_equivalents": (
            round(killed / (mutants - equivalent), 4) if mutants > equivalent else 0.0
        ),
        "mode": "quick" if args.quick else "full",
        "by_module": {s.module: round(s.score, 4) for s in scores},
        "by_module_excluding_equivalents": {
            s.module: round(s.score_excluding_equivalents, 4) for s in scores
        },
        "wall_s": round(run.wall_s, 1),
        "cpu": {"model": facts.cpu_model, "flags": facts.isa_flags},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
