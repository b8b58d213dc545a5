"""``cloud-hub demo`` and ``cloud-hub fleet-sim`` work from the built distribution: the harness
package, its scenarios and the entry points that give the hub's CLI its two harness commands
are in the wheel, and nothing reaches back into the checkout through ``sys.path``."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.slow, pytest.mark.integration]  # builds a wheel: ~15 s


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The wheel, built from this checkout and unpacked into a folder of its own."""
    out = tmp_path_factory.mktemp("wheel")
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
    subprocess.run([*pip_wheel, "-w", str(out), str(ROOT)], check=True, timeout=300)
    (wheel,) = out.glob("fedfleet-*.whl")
    target = out / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    return target


def _cloud_hub(installed: Path, cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys, simulations, cloud_hub; "
        f"assert simulations.__file__.startswith({str(installed)!r}), simulations.__file__; "
        "from cloud_hub.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    env = {**os.environ, "PYTHONPATH": str(installed)}
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_wheel_carries_the_harness_and_its_entry_points(installed: Path) -> None:
    assert (installed / "simulations" / "fleet" / "scenarios" / "rollout_faults.toml").is_file()
    (entry_points,) = installed.glob("fedfleet-*.dist-info/entry_points.txt")
    text = entry_points.read_text()
    assert "[cloud_hub.commands]" in text
    assert "simulations.commands.fleet_sim" in text and "simulations.commands.demo" in text


def test_fleet_sim_and_demo_run_from_the_wheel_outside_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    listed = _cloud_hub(installed, tmp_path, "--help")
    assert listed.returncode == 0, listed.stderr
    assert "fleet-sim" in listed.stdout and "demo" in listed.stdout
    # a named scenario resolves inside the installed package; an unknown one is refused
    unknown = _cloud_hub(installed, tmp_path, "fleet-sim", "no-such-scenario")
    assert unknown.returncode == 2
    assert "no scenario 'no-such-scenario'" in unknown.stderr
    demo = _cloud_hub(installed, tmp_path, "demo", "--help")
    assert demo.returncode == 0 and "--training-engine" in demo.stdout
