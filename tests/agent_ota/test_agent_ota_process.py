"""The agent as a real process (``python -m edge_agent.cli run``) against real Mosquitto."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

from edge_agent.ota.slots import SlotStore
from shared.messages import EventKind, Hello, Status
from tests.agent_ota.agent_ota_helpers import (
    agent_bench,
    broker_available,
    make_bundle,
    make_offer,
    onnx_model_bytes,
    start_agent,
    wait_for,
    write_agent_config,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not broker_available(), reason="needs Mosquitto on 127.0.0.1:1883"),
]

STEPS = [
    EventKind.DOWNLOAD_STARTED,
    EventKind.DOWNLOAD_COMPLETE,
    EventKind.VERIFIED,
    EventKind.INSTALLED,
    EventKind.HEALTH_OK,
    EventKind.COMMITTED,
]


@pytest.fixture
def env(tmp_path: Path):  # type: ignore[no-untyped-def]
    with agent_bench(tmp_path) as b:
        yield tmp_path, b.prefix, b.topics, b.auth, b.trust, b.hub, b.procs


def _log(tmp: Path, name: str) -> str:
    path = tmp / f"{name}.log"
    return path.read_text(errors="replace")[-4000:] if path.exists() else ""


def test_agent_process_receives_verifies_installs_commits(env) -> None:  # type: ignore[no-untyped-def]
    tmp, prefix, topics, auth, trust, hub, procs = env
    dev = f"dev-{prefix}"
    cfg = write_agent_config(tmp, device_id=dev, prefix=prefix, trust_path=trust)
    procs.append(start_agent(cfg, tmp / "agent.log"))
    assert wait_for(lambda: hub.of(dev, Hello), 20), _log(tmp, "agent")
    hello = hub.of(dev, Hello)[0]
    assert hello.device_class == "x86-cpu" and hello.installed is None
    assert "onnxruntime:CPUExecutionProvider" in hello.runtimes
    assert hello.free_disk_bytes > 0 and hello.free_mem_bytes > 0

    offer = make_offer(
        make_bundle(auth, version=1, model=onnx_model_bytes(in_dim=128, out_dim=64)),
        topics,
        chunk_size=8192,
    )
    hub.deploy(offer, [dev])
    dep = offer.command.deployment_id
    assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 30), _log(tmp, "agent")
    assert hub.kinds(dev, dep) == STEPS
    assert wait_for(lambda: hub.of(dev, Status)[-1].ota_state == "committed", 5)
    last = hub.of(dev, Status)[-1]
    assert last.online and last.installed is not None and last.installed.version == 1
    assert last.deployment_id == dep
    slots = SlotStore(tmp / dev)
    assert slots.active_name() == "a" and slots.check("a")

    procs[0].send_signal(signal.SIGTERM)
    assert procs[0].wait(15) == 0
    assert wait_for(lambda: not hub.of(dev, Status)[-1].online, 5)


def test_last_will_reports_offline_on_sigkill(env) -> None:  # type: ignore[no-untyped-def]
    tmp, prefix, _topics, _auth, trust, hub, procs = env
    dev = f"dev-{prefix}"
    cfg = write_agent_config(tmp, device_id=dev, prefix=prefix, trust_path=trust)
    procs.append(start_agent(cfg, tmp / "agent.log"))
    assert wait_for(lambda: any(s.online for s in hub.of(dev, Status)), 20)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(10)
    assert wait_for(lambda: not hub.of(dev, Status)[-1].online, 10)


def test_missing_chunks_requested_over_broker_and_restart_resumes(env) -> None:  # type: ignore[no-untyped-def]
    """Half the fan-out is lost; the agent is killed; after restart it asks only for the
    chunks it does not have on disk and commits."""
    tmp, prefix, topics, auth, trust, hub, procs = env
    dev = f"dev-{prefix}"
    cfg = write_agent_config(tmp, device_id=dev, prefix=prefix, trust_path=trust, chunk_retry_s=0.5)
    procs.append(start_agent(cfg, tmp / "agent.log"))
    assert wait_for(lambda: hub.of(dev, Hello), 20)
    offer = make_offer(
        make_bundle(auth, version=1, model=onnx_model_bytes(64, 32)), topics, chunk_size=1024
    )
    n = len(offer.frames)
    sent = list(range(0, n, 2))
    hub.answer_requests = False
    hub.deploy(offer, [dev], chunks=sent)
    dep = offer.command.deployment_id
    assert wait_for(lambda: hub.requests, 10), _log(tmp, "agent")
    assert hub.requests[0].indices == [i for i in range(n) if i not in sent]
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait(10)
    received = (tmp / dev / "downloads" / offer.bundle_id / "received.map").read_bytes()
    assert sorted(i for i, b in enumerate(received) if b) == sent

    hub.requests.clear()
    hub.answer_requests = True
    procs.append(start_agent(cfg, tmp / "agent2.log"))
    assert hub.wait_kind(dev, dep, EventKind.COMMITTED, 30), _log(tmp, "agent2")
    assert hub.requests[0].indices == [i for i in range(n) if i not in sent]
    state = json.loads((tmp / dev / "ota_state.json").read_text())
    assert state["deployment"]["phase"] == "committed" and state["deployment"]["resumes"] == 1


def test_agents_share_one_fanout_without_repairs(env) -> None:  # type: ignore[no-untyped-def]
    """Every chunk is published once; agents subscribed before reporting download_started,
    so none misses a chunk (the 5-agent end-to-end run is the hub's test)."""
    tmp, prefix, topics, auth, trust, hub, procs = env
    devs = [f"dev{i}-{prefix}" for i in range(3)]
    for d in devs:
        cfg = write_agent_config(tmp, device_id=d, prefix=prefix, trust_path=trust)
        procs.append(start_agent(cfg, tmp / f"{d}.log"))
    assert wait_for(lambda: all(hub.of(d, Hello) for d in devs), 30)
    offer = make_offer(
        make_bundle(auth, version=3, model=onnx_model_bytes(256, 64)), topics, chunk_size=16384
    )
    hub.deploy(offer, devs)
    dep = offer.command.deployment_id
    assert wait_for(lambda: all(EventKind.COMMITTED in hub.kinds(d, dep) for d in devs), 40), [
        hub.kinds(d, dep) for d in devs
    ]
    assert not hub.requests  # every chunk arrived once through the fan-out


def test_cli_refuses_a_bad_config_with_one_clear_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    from tests.agent_ota.agent_ota_helpers import REPO

    bad = tmp_path / "bad.toml"
    bad.write_text('device_id = "x/y"\ndevice_class = "c"\nstate_dir = "s"\ntrust_root = "t"\n')
    for config in (bad, tmp_path / "missing.toml"):
        out = subprocess.run(
            [sys.executable, "-m", "edge_agent.cli", "run", "--config", str(config)],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 2, out
        assert out.stderr.startswith("error: ") and "Traceback" not in out.stderr
