"""The lab leaves nothing behind: not after Ctrl-C, not after a failed start; and it refuses
to start over a crashed lab's leftovers until ``python -m simulations.lab clean``.

Real namespaces, real Mosquitto / ``cloud-hub serve --tls`` / ``edge-agent`` processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from simulations.lab import FleetLab, LabConfig, LabError, LabLeftoversError, netns

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("namespaces")]

PREFIX = "flt"  # not the default: a lab someone runs by hand is never touched
SUBNET = "10.213.8.0/24"


def _lab_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "simulations.lab", "--prefix", PREFIX, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    assert not netns.find_leftovers(PREFIX), "a previous test left a lab behind"
    yield
    left = netns.find_leftovers(PREFIX)
    netns.clean(PREFIX)
    assert not left, left.describe()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is gone for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def test_leftovers_are_refused_until_clean(tmp_path: Path) -> None:
    subprocess.run(["ip", "netns", "add", f"{PREFIX}-d001"], check=True)
    subprocess.run(["ip", "link", "add", f"{PREFIX}-br", "type", "bridge"], check=True)
    lab = FleetLab(LabConfig(root=tmp_path / "lab", devices=1, prefix=PREFIX, subnet=SUBNET))
    with pytest.raises(LabLeftoversError, match=r"simulations\.lab clean"):
        lab.__enter__()
    assert not (tmp_path / "lab").exists()  # refused before anything was made
    up = _lab_cli("up", "--devices", "1", "--root", str(tmp_path / "cli"), "--subnet", SUBNET)
    assert up.returncode == 2 and "clean" in up.stderr, up.stderr
    cleaned = _lab_cli("clean")
    assert cleaned.returncode == 0 and f"{PREFIX}-d001" in cleaned.stdout
    assert not netns.find_leftovers(PREFIX)
    assert _lab_cli("status").stdout.strip() == "no lab"


def test_a_failed_start_removes_every_namespace_link_and_process(tmp_path: Path) -> None:
    # agents that exit at once (a bad flag): the lab notices and tears itself down
    config = LabConfig(
        root=tmp_path / "lab",
        devices=2,
        prefix=PREFIX,
        subnet=SUBNET,
        agent_args=("--drift-window", "not-a-number"),
    )
    lab = FleetLab(config)
    with pytest.raises(LabError, match="exited"):
        lab.__enter__()
    assert lab.processes, "the lab never got as far as starting programs"
    assert all(not p.alive() for p in lab.processes)
    assert not netns.find_leftovers(PREFIX)
    assert not (netns.ETC_NETNS / f"{PREFIX}-hub").exists()


@pytest.mark.timeout(300)
def test_down_or_ctrl_c_stops_every_program_and_removes_the_lab(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "simulations.lab",
            "--prefix",
            PREFIX,
            "up",
            "--devices",
            "2",
            "--root",
            str(tmp_path / "lab"),
            "--subnet",
            SUBNET,
            "--cap",
            "dev-002=256",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("Ctrl-C"):
                break
        assert any(ln.startswith("lab up: 2 devices") for ln in lines), "".join(lines)
        found = netns.find_leftovers(PREFIX)
        assert len(found.namespaces) == 4 and f"{PREFIX}-br" in found.links
        pids = [pid for ns in found.namespaces for pid in netns.netns_pids(ns)]
        assert len(pids) >= 4  # broker, hub, two agents
        token = tmp_path / "lab" / "operator.token"
        assert token.stat().st_mode & 0o077 == 0
        # `down` from another shell: a signal to the pid `up` recorded, the Ctrl-C path
        down = _lab_cli("down", timeout=120)
        assert down.returncode == 0, down.stderr
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(lines) + out
    assert "lab stopped and removed" in out
    assert not netns.find_leftovers(PREFIX)
    deadline = time.monotonic() + 10
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [p for p in pids if _alive(p)]


@pytest.mark.timeout(300)
def test_ctrl_c_in_the_middle_of_the_start_removes_everything(tmp_path: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "simulations.lab", "--prefix", PREFIX, "up", "--devices", "2",
         "--root", str(tmp_path / "lab"), "--subnet", SUBNET],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        # as a shell starts a background job: SIGINT ignored (the lab must undo that)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        # as soon as the hub runs (namespaces made, programs starting), press Ctrl-C
        deadline = time.monotonic() + 180
        while not (tmp_path / "lab" / "logs" / "hub.log").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "the lab never started"
            time.sleep(0.2)
        assert netns.find_leftovers(PREFIX).namespaces
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0 and "lab stopped and removed" in out, out
    assert not netns.find_leftovers(PREFIX)
