"""Deployment Engine speed and fail-fast (#17): short pull loops on both sides (ServerApp,
SuperNode, Flower's object pulls), warm forked ClientApp and ServerApp processes, valid JSON
results, bad runs refused or reported at once.
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


class _HeldRepliesGrid(_SlowRepliesGrid):
    """A SuperLink that holds pulls (shared.flower_long_poll): each pull takes ``held_s`` and
    brings one more reply."""

    def __init__(self, ids: list[str], clock: _Clock, held_s: float) -> None:
        super().__init__(ids, ready_after=1)
        self.clock, self.held_s, self.given = clock, held_s, 0

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Any]:
        self.pulls += 1
        self.clock.now += self.held_s
        wanted = sorted(message_ids)[: 1 if self.held_s < 0.5 else 0]
        return [_Reply(i) for i in wanted]


def test_after_a_reply_or_a_held_pull_the_next_pull_goes_at_once() -> None:
    clock = _Clock()
    replies = list(
        _grid(_HeldRepliesGrid(["a", "b", "c"], clock, 0.02), clock).send_and_receive([])
    )
    assert len(replies) == 3 and clock.sleeps == []  # each pull brought one: no pause
    clock = _Clock()
    held = _HeldRepliesGrid(["a"], clock, 1.0)  # held 1 s, nothing came
    assert list(_grid(held, clock).send_and_receive([], timeout=3.5)) == []
    assert clock.sleeps == [] and held.pulls == 4


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


def test_the_pinned_supernode_pulls_soon_after_a_message_and_less_often_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.supernode import start_client_internal as supernode

    from edge_agent.fl.pinned_supernode import pin_fab
    from shared.poll_backoff import PollBackoff

    answers = [None, None, None, 42, None, 43]
    seen: list[dict[str, Any]] = []

    def flower_pull(**kwargs: Any) -> int | None:
        seen.append(kwargs)
        return answers.pop(0)

    monkeypatch.setattr(supernode, "_pull_and_store_message", flower_pull)
    monkeypatch.setattr(supernode, "_verify_fab", supernode._verify_fab)
    sleeps: list[float] = []
    monkeypatch.setattr("edge_agent.fl.pinned_supernode.time.sleep", sleeps.append)
    pin_fab("ab" * 32, PollBackoff(fast_s=0.05, slow_s=0.1, growth=2))
    pinned_pull: Any = supernode._pull_and_store_message  # the wrapper takes keywords only
    assert pinned_pull(get_fab=lambda h, r: None) == 42
    assert sleeps == [0.05, 0.1, 0.1] and len(seen) == 4  # Flower sleeps 3 s each time
    assert pinned_pull(get_fab=lambda h, r: None) == 43
    assert sleeps[3:] == [0.05]  # a message arrived: soon again
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


def test_the_supernode_sends_a_reply_within_50_ms_not_0_5_s(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Flower's SuperNode looks for a ClientApp's reply every 0.5 s: one wait per SecAgg+
    stage and node. The pinned SuperNode caps its module's sleeps."""
    import time as time_module

    from flwr.supernode import start_client_internal as supernode

    from edge_agent.fl.pinned_supernode import REPLY_POLL_INTERVAL_S, reply_without_delay

    monkeypatch.setattr(supernode, "time", supernode.time)
    sleeps: list[float] = []
    monkeypatch.setattr(time_module, "sleep", sleeps.append)
    reply_without_delay()
    supernode.time.sleep(0.5)  # _push_messages' wait for the reply
    supernode.time.sleep(0.01)
    assert sleeps == [REPLY_POLL_INTERVAL_S, 0.01] and REPLY_POLL_INTERVAL_S <= 0.05
    assert supernode.time.monotonic is time_module.monotonic  # the rest is time's


def test_flower_object_pulls_retry_after_50_ms_not_1_s(monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader that sees a message before its objects (the usual case on the Deployment
    Engine) retried after Flower's 1 s; measured 1.2 s of a 1.7 s SecAgg+ setup task."""
    from flwr.supercore.inflatable import inflatable_utils
    from flwr.supercore.inflatable.inflatable_utils import ObjectUnavailableError

    from shared.flower_pulls import retry_object_pulls_sooner

    for function in (
        inflatable_utils.pull_objects,
        inflatable_utils.pull_and_inflate_object_from_tree,
    ):
        monkeypatch.setattr(function, "__kwdefaults__", dict(function.__kwdefaults__ or {}))
    retry_object_pulls_sooner()
    tries: list[float] = []

    def pull(object_id: str) -> bytes:
        tries.append(time.monotonic())
        if len(tries) < 3:  # not there yet: the writer is still pushing it
            raise ObjectUnavailableError(object_id)
        return b"content"

    assert inflatable_utils.pull_objects(["obj"], pull) == {"obj": b"content"}
    assert tries[-1] - tries[0] < 0.5  # Flower's own backoff: >= 0.8 s + 1.6 s
    defaults = inflatable_utils.pull_and_inflate_object_from_tree.__kwdefaults__ or {}
    assert defaults["initial_backoff"] == 0.05 and defaults["backoff_cap"] == 2.0


def test_the_superlink_starts_the_warm_serverapp_superexec(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib
    import subprocess
    import sys

    from shared.warm_superexec import use_warm_superexec

    superlink_module = importlib.import_module("flwr.superlink.cli.flower_superlink")
    started: list[list[str]] = []
    monkeypatch.setattr(superlink_module, "subprocess", superlink_module.subprocess)
    monkeypatch.setattr(subprocess, "Popen", lambda argv, *a, **k: started.append(argv))
    use_warm_superexec("flwr.superlink.cli.flower_superlink", "cloud_hub.fl.warm_serverapp")
    superlink_module.subprocess.Popen(["flower-superexec", "--runtime-api-address", "x:1"])
    superlink_module.subprocess.Popen(["other", "--flag"])
    warm = [sys.executable, "-m", "cloud_hub.fl.warm_serverapp"]
    assert started == [[*warm, "--runtime-api-address", "x:1"], ["other", "--flag"]]


def test_a_forked_task_gets_the_arguments_flowers_subprocess_executor_passes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    from shared.warm_superexec import _task_argv

    launched: list[list[str]] = []
    monkeypatch.setattr(
        subprocess_executor.subprocess, "Popen", lambda argv, *a, **k: launched.append(argv)
    )
    for task_type, insecure in ((TaskType.SERVER_APP, False), (TaskType.CLIENT_APP, True)):
        spec = ExecutionSpec(
            task_type=task_type,
            runtime_api_address="127.0.0.1:9",
            token="t0k",
            insecure=insecure,
            root_certificates_path=None if insecure else "/ca.pem",
            runtime_dependency_install=False,
            parent_pid=7,
            suppress_output=False,
            task_id=3,
        )
        subprocess_executor.SubprocessExecutor().launch(spec)
        assert _task_argv(spec) == launched[-1]
    assert launched[0][0] == "flwr-serverapp" and "--root-certificates" in launched[0]


def test_a_fab_the_orders_do_not_name_is_refused_before_the_superlink_is_asked(
    tmp_path: Path,
) -> None:
    link = _idle_link(tmp_path)  # nothing listens: asking the SuperLink would fail otherwise
    with pytest.raises(TrainingError, match="the orders name"):
        link.submit_run({"run-name": "x"}, expected_fab_sha256="ab" * 32)


def test_the_warm_superexec_asks_soon_after_a_launch_and_less_often_while_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor import subprocess_executor
    from flwr.supercore.superexec.executor.types import ExecutionSpec

    from shared.poll_backoff import PollBackoff
    from shared.warm_superexec import _BackoffSleepTime, make_forking_executor_class

    backoff = PollBackoff(fast_s=0.05, slow_s=0.2, growth=2)
    sleeps: list[float] = []
    monkeypatch.setattr(time, "sleep", sleeps.append)
    flower_time = _BackoffSleepTime(backoff)
    for _ in range(4):
        flower_time.sleep(1.0)  # Flower's fixed interval between task requests
    executor = make_forking_executor_class(TaskType.SERVER_APP, lambda: None, backoff=backoff)()
    monkeypatch.setattr(subprocess_executor.subprocess, "Popen", lambda *a, **k: None)
    spec = ExecutionSpec(
        task_type=TaskType.CLIENT_APP,  # not the forked type: Flower's subprocess path
        runtime_api_address="127.0.0.1:9",
        token="t0k",
        insecure=True,
        root_certificates_path=None,
        runtime_dependency_install=False,
        parent_pid=None,
        suppress_output=True,
        task_id=1,
    )
    executor.launch(spec)
    flower_time.sleep(1.0)
    assert sleeps == [0.05, 0.1, 0.2, 0.2, 0.05]
