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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.device_facts import detect_device_facts  # noqa: E402

# module -> the tests that speak for it (unit tests: pure, fast, no broker or processes)
TRUST_CORE: Mapping[str, Sequence[str]] = {
    # unit tests only: mutmut runs every covering test per mutant, and the attack tests in
    # tests/security start brokers and processes (the full run would take hours on 2 cores)
    "shared/bundle.py": ("tests/shared_protocol/test_shared_protocol_bundle.py",),
    "shared/signing.py": (
        "tests/shared_protocol/test_shared_protocol_signing.py",
        "tests/shared_protocol/test_shared_protocol_bundle.py",
        "tests/fl/test_fl_order.py",
    ),
    "shared/delta.py": ("tests/delta/test_delta_format.py",),
    "edge_agent/ota/machine.py": (
        "tests/agent_ota/test_agent_ota_machine.py",
        "tests/agent_ota/test_agent_ota_updater.py",
    ),
    "cloud_hub/rollout/gates.py": ("tests/rollout/test_rollout_gates.py",),
    "cloud_hub/rollout/state.py": ("tests/rollout/test_rollout_state.py",),
    "shared/fl/secure_prg.py": ("tests/fl/test_fl_secure_prg.py",),
}

# --quick: the functions whose bugs would hurt most, in two modules, always the same ones.
QUICK_MODULES = ("shared/bundle.py", "edge_agent/ota/machine.py")
QUICK_TESTS = (
    "tests/shared_protocol/test_shared_protocol_bundle.py",
    "tests/agent_ota/test_agent_ota_machine.py",
)
QUICK_FUNCTIONS = (
    "shared.bundle.x_verify_bundle__mutmut_*",
    "shared.bundle.x_verify_offer__mutmut_*",
    "shared.bundle.x_verify_artifacts__mutmut_*",
    "shared.bundle.x_check_version__mutmut_*",
    "shared.bundle.x_verify_rollback_order__mutmut_*",
    "edge_agent.ota.machine.x_transition__mutmut_*",
)

# mutmut's exit-code vocabulary (mutmut.stats.status_by_exit_code)
_KILLED = {1, 3, 36, 37, -24, 24, 152, 255}  # test failure, error, timeout, type error
_NOT_RUN = {None, 2, 34}


@dataclass(frozen=True)
class ModuleScore:
    module: str
    mutants: int
    killed: int
    survivors: tuple[str, ...]

    @property
    def score(self) -> float:
        return self.killed / self.mutants if self.mutants else 0.0


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


def _write_config(dest: Path, modules: Sequence[str], tests: Sequence[str]) -> None:
    sources = sorted({m.split("/")[0] for m in modules})
    table = {
        "source_paths": sources,
        "only_mutate": list(modules),
        "pytest_add_cli_args_test_selection": list(tests),
        "pytest_add_cli_args": ["-p", "no:cacheprovider", "-q", "-x"],
    }
    lines = ["", "[tool.mutmut]"] + [f"{k} = {json.dumps(v)}" for k, v in table.items()]
    with (dest / "pyproject.toml").open("a") as fh:
        fh.write("\n".join(lines) + "\n")


def _scores(dest: Path, modules: Sequence[str], selected: Sequence[str]) -> list[ModuleScore]:
    import fnmatch

    out = []
    for module in modules:
        meta = json.loads((dest / "mutants" / f"{module}.meta").read_text())
        results: dict[str, int | None] = meta["exit_code_by_key"]
        if selected:
            results = {
                k: v for k, v in results.items() if any(fnmatch.fnmatch(k, p) for p in selected)
            }
        checked = {k: v for k, v in results.items() if v not in _NOT_RUN}
        killed = sum(1 for v in checked.values() if v in _KILLED)
        survivors = tuple(sorted(k for k, v in checked.items() if v not in _KILLED))
        out.append(ModuleScore(module, len(checked), killed, survivors))
    return out


def run_mutmut(
    quick: bool, children: int, only: Sequence[str] = ()
) -> tuple[list[ModuleScore], float]:
    modules = QUICK_MODULES if quick else tuple(only or TRUST_CORE)
    tests = QUICK_TESTS if quick else tuple(sorted({t for m in modules for t in TRUST_CORE[m]}))
    selected = QUICK_FUNCTIONS if quick else ()
    with tempfile.TemporaryDirectory(prefix="fedfleet-mutation-") as tmp:
        dest = Path(tmp)
        _copy_checkout(dest)
        _write_config(dest, modules, [t for t in tests if (dest / t).exists()])
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
        return _scores(dest, modules, selected), wall


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
    args = parser.parse_args(argv)

    scores, wall = run_mutmut(args.quick, args.children, args.module)
    print(f"{'module':32} {'mutants':>8} {'killed':>7} {'score':>6}")
    for s in scores:
        print(f"{s.module:32} {s.mutants:8d} {s.killed:7d} {s.score:6.3f}")
        if args.survivors:
            for name in s.survivors:
                print(f"    survived: {name}")
    mutants = sum(s.mutants for s in scores)
    killed = sum(s.killed for s in scores)
    facts = detect_device_facts()
    result: dict[str, Any] = {
        "mutants": mutants,
        "killed": killed,
        "score": round(killed / mutants, 4) if mutants else 0.0,
        "mode": "quick" if args.quick else "full",
        "by_module": {s.module: round(s.score, 4) for s in scores},
        "wall_s": round(wall, 1),
        "cpu": {"model": facts.cpu_model, "flags": facts.isa_flags},
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
