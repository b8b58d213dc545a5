"""README's "Deploying a TLS fleet" block, run exactly as written (#15).

The fenced block after ``<!-- walkthrough:tls-fleet -->`` is extracted from README.md and run
by bash (``set -e``) in an empty folder, with free loopback ports in ``HUB_PORT``,
``DEVICE_PORT`` and ``HUB_MQTT_PORT`` and this checkout's ``cloud-hub``/``edge-agent`` first
on PATH: a private Mosquitto with the config ``broker-config`` wrote, ``cloud-hub serve
--tls``, a real ``edge-agent`` enrolled over HTTPS, a bundle built into the hub's store after
the hub started and a rollout created from the ``.ffb`` file. Then, from outside, the test
checks what the operator would see: the rollout done over HTTPS verified by the hub CA, the
device on v1 over mutual TLS, the dashboard served.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.net import free_port
from tests.onnx_models import tiny_onnx_model

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
MARKER = "<!-- walkthrough:tls-fleet -->"
# The path the issue asks for, in this order; a step removed from the README fails here.
STEPS = (
    "cloud-hub enroll-init",
    "cloud-hub keys init",
    "cloud-hub broker-config",
    "mosquitto -c broker/mosquitto.conf &",
    "cloud-hub serve --tls",
    "cloud-hub enroll-token",
    "edge-agent install",
    "edge-agent run",
    "cloud-hub bundle build",
    "cloud-hub rollout create",
    "cloud-hub rollout status first-rollout --watch",
)


def walkthrough_block(readme: str) -> str:
    """The first ```bash fenced block after the marker."""
    _head, sep, tail = readme.partition(MARKER)
    if not sep:
        raise AssertionError(f"README.md has no {MARKER}")
    match = re.match(r"\s*```bash\n(.*?)\n```", tail, re.DOTALL)
    if match is None:
        raise AssertionError("no ```bash block right after the walkthrough marker")
    return match.group(1)


def _free_ports(n: int) -> list[int]:
    return [free_port() for _ in range(n)]


def test_the_block_walks_the_whole_path_in_order() -> None:
    block = walkthrough_block(README.read_text("utf-8"))
    positions = [block.find(step) for step in STEPS]
    assert all(p >= 0 for p in positions), dict(zip(STEPS, positions, strict=True))
    assert positions == sorted(positions), "the README's steps are out of order"


@pytest.fixture
def walked(tmp_path: Path) -> Iterator[tuple[subprocess.CompletedProcess[str], dict[str, str]]]:
    block = walkthrough_block(README.read_text("utf-8"))
    (tmp_path / "model.onnx").write_bytes(tiny_onnx_model())
    hub_port, device_port, hub_mqtt_port = _free_ports(3)
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        "HUB_PORT": str(hub_port),
        "DEVICE_PORT": str(device_port),
        "HUB_MQTT_PORT": str(hub_mqtt_port),
    }
    for name in ("FEDFLEET_API", "FEDFLEET_TOKEN", "FEDFLEET_CA_FILE", "FEDFLEET_DATA_DIR"):
        env.pop(name, None)
    # The script's own environment at the end, to reach the hub as the operator would.
    script = f"set -e\n{block}\nenv > walkthrough.env\n"
    log = tmp_path / "walkthrough.log"  # a file: the background processes keep a pipe open
    with log.open("wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", script],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the background broker, hub and agent share its group
        )
    try:
        with contextlib.suppress(subprocess.TimeoutExpired):  # reported below with the log
            proc.wait(timeout=240)
        text = log.read_text("utf-8", errors="replace")
        result = subprocess.CompletedProcess(proc.args, proc.returncode, text, "")
        final_env = {}
        env_file = tmp_path / "walkthrough.env"
        if env_file.exists():
            for line in env_file.read_text().splitlines():
                key, _, value = line.partition("=")
                final_env[key] = value
        yield result, {**final_env, "_cwd": str(tmp_path)}
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)


def _get(env: dict[str, str], path: str) -> object:
    ctx = ssl.create_default_context(cafile=str(Path(env["_cwd"]) / env["FEDFLEET_CA_FILE"]))
    req = urllib.request.Request(
        f"{env['FEDFLEET_API']}{path}", headers={"Authorization": f"Bearer {env['FEDFLEET_TOKEN']}"}
    )
    with urllib.request.urlopen(req, timeout=30, context=ctx) as resp:
        body = resp.read()
        return json.loads(body) if resp.headers.get_content_type() == "application/json" else body


@pytest.mark.timeout(300)
def test_the_readme_walkthrough_runs_as_written(
    walked: tuple[subprocess.CompletedProcess[str], dict[str, str]],
) -> None:
    result, env = walked
    check_walkthrough_outcome(result, env, broker_host="localhost")
    # what the dashboard shows comes from the same HTTPS API, verified by the hub CA
    status = _get(env, "/api/v1/rollouts/first-rollout")
    assert isinstance(status, dict) and status["state"] == "done", status
    devices = _get(env, "/api/v1/devices")
    assert isinstance(devices, dict) and devices["total"] == 1, devices
    ui = _get(env, "/ui/")
    assert isinstance(ui, bytes) and b"<html" in ui.lower()


def check_walkthrough_outcome(
    result: subprocess.CompletedProcess[str], env: dict[str, str], *, broker_host: str
) -> None:
    """What the operator sees in the walkthrough's own output when it worked."""
    tail = result.stdout[-6000:]
    assert result.returncode == 0, tail  # None: still running after the deadline
    # the rollout reached done, watched by `rollout status --watch` over HTTPS (hub CA)
    assert re.search(r"^first-rollout\s+done\b", result.stdout, re.MULTILINE), tail
    # `edge-agent status`: the device runs v1, reached its broker over mutual TLS
    assert re.search(r"^\s+version\s+1$", result.stdout, re.MULTILINE), tail
    assert f"mqtts://{broker_host}:{env['DEVICE_PORT']}" in result.stdout, tail
    assert "TLS handshake with the client certificate accepted" in result.stdout, tail
    assert re.search(r"^\s+deployment_in_progress\s+False$", result.stdout, re.MULTILINE), tail
    assert re.search(r"^\s+last_deployment\s+first-rollout\S* committed$", result.stdout, re.M)
