"""Deployment Engine speed and fail-fast (#17): short pull loops on both sides, a warm
ClientApp process on each SuperNode, valid JSON results, bad runs refused or reported at once.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Context, RecordDict

from cloud_hub.errors import HubConfigError, TrainingError
from cloud_hub.fl import superlink_app
from cloud_hub.fl.fast_grid import FastPullGrid
from cloud_hub.fl.superlink import SuperLinkConfig, SuperLinkProcess, wait_for_summary
from shared.data import generate_sensor_data


class _Reply:
    def __init__(self, reply_to: str) -> None:
        self.metadata = type("Meta", (), {"reply_to_message_id": reply_to})()


class _SlowRepliesGrid:
    """A Grid whose nodes answer after ``ready_after`` pulls (the reply pull protocol only)."""

    def __init__(self, ids: list[str], ready_after: int) -> None:
        self.ids = ids
        self.ready_after = ready_after
        self.pulls = 0

    def push_messages(self, messages: Iterable[Any]) -> Iterable[str]:
        list(messages)
        return list(self.ids)

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        self.pulls += 1
        wanted = list(message_ids)
        return [_Reply(i) for i in wanted] if self.pulls >= self.ready_after else []


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def _grid(inner: _SlowRepliesGrid, clock: _Clock) -> FastPullGrid:
    return FastPullGrid(inner, poll_s=0.1, clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]


def test_replies_are_pulled_every_poll_interval_not_every_3_s() -> None:
    clock = _Clock()
    inner = _SlowRepliesGrid(["a", "b"], ready_after=4)
    replies = list(_grid(inner, clock).send_and_receive([], timeout=60))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["a", "b"]
    assert clock.sleeps == [0.1, 0.1, 0.1]  # Flower's HttpGrid sleeps 3 s here


def test_the_pull_loop_stops_at_its_timeout_with_what_arrived() -> None:
    clock = _Clock()
    inner = _SlowRepliesGrid(["a"], ready_after=10_000)
    assert list(_grid(inner, clock).send_and_receive([], timeout=1.0)) == []
    assert 1.0 <= clock.now <= 1.1 + 1e-9 and inner.pulls == len(clock.sleeps) + 1


def test_a_non_positive_pull_interval_is_refused() -> None:
    with pytest.raises(ValueError, match="poll_s"):
        FastPullGrid(_SlowRepliesGrid([], 1), poll_s=0)  # type: ignore[arg-type]


def test_results_are_valid_json_without_nan(tmp_path: Path) -> None:
    superlink_app._write(
        tmp_path / "rounds.json", [{"train_loss": math.nan, "loss": math.inf, "accuracy": 0.5}]
    )
    text = (tmp_path / "rounds.json").read_text()

    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")

    assert json.loads(text, parse_constant=refuse) == [
        {"train_loss": None, "loss": None, "accuracy": 0.5}
    ]


def _inputs(root: Path, *, clients: int, secagg: bool) -> dict[str, Any]:
    x, y = generate_sensor_data(50, seed=3, sample_seed=99)
    np.savez(root / "validation.npz", x=x, y=y)
    (root / "train.toml").write_text(
        f'[training]\nmodel_name = "sensor-mlp"\nnum_clients = {clients}\n'
        f"min_fit_clients = {clients}\nnum_rounds = 1\n"
        f"[training.secagg]\nenabled = {'true' if secagg else 'false'}\n"
    )
    return {
        "config-path": str(root / "train.toml"),
        "validation-path": str(root / "validation.npz"),
        "results-dir": str(root / "results"),
        "run-name": "speed",
    }


def _idle_link(root: Path) -> SuperLinkProcess:
    config = SuperLinkConfig(database=root / "state.db", port=1, insecure=True)
    return SuperLinkProcess(config, workdir=root / "link")


def test_a_secagg_run_with_2_clients_is_refused_before_flwr_run(tmp_path: Path) -> None:
    run_config = _inputs(tmp_path, clients=2, secagg=True)
    link = _idle_link(tmp_path)
    with pytest.raises(HubConfigError, match="SecAgg\\+ needs >= 3 clients"):
        link.submit_run(run_config)
    assert not (tmp_path / "link" / "flwr-home").exists()  # flwr run was never reached


def test_a_failing_server_app_writes_a_failed_summary_the_waiter_reads_at_once(
    tmp_path: Path,
) -> None:
    run_config = _inputs(tmp_path, clients=3, secagg=True)
    (tmp_path / "validation.npz").unlink()  # fails inside the ServerApp, before any round
    context = Context(
        run_id=7, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    with pytest.raises(FileNotFoundError):
        superlink_app.main(None, context)  # type: ignore[arg-type]
    started = time.monotonic()
    with pytest.raises(TrainingError, match="FileNotFoundError"):
        wait_for_summary(tmp_path / "results", timeout_s=30)
    assert time.monotonic() - started < 5


def test_the_waiter_stops_when_the_superlink_is_gone(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(TrainingError, match="SuperLink exited"):
        wait_for_summary(tmp_path / "results", timeout_s=30, link=_idle_link(tmp_path))
    assert time.monotonic() - started < 5


def test_the_pinned_supernode_polls_at_its_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supernode import start_client_internal as supernode

    from edge_agent.fl.pinned_supernode import pin_fab

    answers = [None, None, None, 42]
    seen: list[dict[str, Any]] = []

    def flower_pull(**kwargs: Any) -> int | None:
        seen.append(kwargs)
        return answers.pop(0)

    monkeypatch.setattr(supernode, "_pull_and_store_message", flower_pull)
    monkeypatch.setattr(supernode, "_verify_fab", supernode._verify_fab)
    sleeps: list[float] = []
    monkeypatch.setattr("edge_agent.fl.pinned_supernode.time.sleep", sleeps.append)
    pin_fab("ab" * 32, poll_interval_s=0.05)
    assert supernode._pull_and_store_message(get_fab=lambda h, r: None) == 42
    assert sleeps == [0.05, 0.05, 0.05] and len(seen) == 4
    assert seen[0]["trusted_entities"] == {"fedfleet-training-order": "ab" * 32}


def test_the_supernode_starts_the_warm_superexec(monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    from flwr.supernode import start_client_internal as supernode

    from edge_agent.fl.pinned_supernode import use_warm_clientapps

    started: list[list[str]] = []
    monkeypatch.setattr(supernode, "subprocess", supernode.subprocess)
    monkeypatch.setattr(subprocess, "Popen", lambda argv, *a, **k: started.append(argv))
    use_warm_clientapps()
    supernode.subprocess.Popen(["flower-superexec", "--runtime-api-address", "x:1"])
    assert started == [
        [sys.executable, "-m", "edge_agent.fl.warm_clientapp", "--runtime-api-address", "x:1"]
    ]


_FORK_AFTER_WARM = """
import os, sys
from edge_agent.fl import warm_clientapp
calls = []
real = warm_clientapp.warm_torch
warm_clientapp.warm_torch = lambda: (calls.append(1), real())
warm_clientapp.warm_imports()
assert calls == [1], "warm_imports did not run torch's first training step"
pid = os.fork()
if pid == 0:  # a task: one real training step in the forked child
    from shared.data.sensors import generate_sensor_data
    from shared.fl.training import LocalTrainingLimits, train_model
    from shared.models import build_model
    x, y = generate_sensor_data(8, seed=1, sample_seed=1)
    report = train_model(build_model("sensor-mlp"), x, y, LocalTrainingLimits(batch_size=4))
    os._exit(0 if report.steps == 2 else 3)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def test_the_warm_process_runs_torch_once_and_its_forked_tasks_still_train() -> None:
    """torch's lazy first-use set-up happens in the warm process (not again in every forked
    task), and a task forked after it trains: no lock or thread pool left broken by the fork."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", _FORK_AFTER_WARM], capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr[-2000:]
