"""Deployment Engine benchmark: one SecAgg+ run over real SuperNodes against the in-process grid.

    .venv/bin/python benchmarks/deploy.py            # the pair (6 SuperNodes, 3 rounds) + the lab
    .venv/bin/python benchmarks/deploy.py --quick    # 3 SuperNodes, 1 round, 1 pair (< 60 s), no lab
    .venv/bin/python benchmarks/deploy.py --no-lab   # the pair only

Both contenders run the same training config (SecAgg+ on, the same per-device data, the
same hub ServerApp). The in-process run is ``run_federated`` with ``engine="inprocess"``; the
deployment run is a real ``flower-superlink`` over TLS and one pinned SuperNode process per
device (:mod:`edge_agent.fl.pinned_supernode`), submitted through the SuperLink's Control API
(:meth:`cloud_hub.fl.superlink.SuperLinkProcess.submit_run`). A round's time is what the
hub's fit workflow measured for it (``fit_time_s``, the same code on both sides). The two
alternate ``--pairs`` times (3; ``--quick`` 1) on one running federation: an in-process run
in a fresh process (its first run, as the target was set), then a deployment run; the
figures are the medians, ``pair_ratios`` each pair's ratio. A warm in-process run (imports
and torch's first-use set-up already paid) is reported too (``inprocess_warm_round_s``).

Whole-run figures (extra keys): ``inprocess_run_s`` (``run_federated``, call to result) and
``deployment_run_s`` (submission to ``summary.json``: submission, ServerApp pick-up, every
round, the summary), and ``deployment_vs_inprocess_run``. CPU seconds per run
(``inprocess_cpu_s``: this process; ``deployment_cpu_s``: the SuperLink, the SuperNodes and
every process they started, forked tasks included) show the cost without the machine's load.

Where the SuperLink runs the ServerApp (``--serverapp``): ``both`` (the default; ``--quick``
measures the default mode only unless told) starts one federation per mode and alternates
the modes within each pair, so both see the same machine load — ``inprocess`` (a thread of
the SuperLink process on its LinkState, :mod:`cloud_hub.fl.inprocess_serverapp`; the
product's default) and ``forked`` (a process forked from the warm SuperExec, over the
runtime API). Each mode's figures are under ``by_serverapp`` (round, ratio to the in-process
runs of the same pairs, CPU seconds per run by process role, counted for the processes of
that mode's federation only); the headline figures are the default mode's.

The full run then plays the lab scenario (:mod:`simulations.lab.retrain_scenario`: six
devices on their own network namespaces enroll, train the first model over the Deployment
Engine, roll it out, one site drifts, the fleet retrains and rolls out deltas through a cut
and a capped link) for the ``lab_*`` figures: ``lab_devices``,
``lab_enroll_to_first_model_s`` (enrollment start to every device serving the first
federated model), ``lab_drift_to_recovered_s`` (drift to every device serving the retrained
one), ``lab_reports_lost`` and ``lab_rounds_without_secagg`` (targets 0). It needs root and
network namespaces; where they are missing the figures stay null with the reason in
``lab_note``.

The last line printed is one JSON object with ``inprocess_round_s``, ``deployment_round_s``,
``deployment_vs_inprocess`` (target <= 2.0), the whole-run and CPU figures above, the
``lab_*`` figures and ``cpu``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from cloud_hub.config import SERVERAPP_MODES
from cloud_hub.fl.superlink import DEFAULT_SERVERAPP
from shared.device_facts import detect_device_facts

LAB_KEYS = (
    "lab_devices",
    "lab_enroll_to_first_model_s",
    "lab_drift_to_recovered_s",
    "lab_reports_lost",
    "lab_rounds_without_secagg",
)


def _write_inputs(root: Path, devices: int, rounds: int) -> None:
    from shared.data import generate_sensor_data

    for i in range(devices):
        x, y = generate_sensor_data(200, seed=3, sample_seed=10 + i)
        np.savez(root / f"device-{i}.npz", x=x, y=y)
    x, y = generate_sensor_data(300, seed=3, sample_seed=99)
    np.savez(root / "validation.npz", x=x, y=y)
    (root / "train.toml").write_text(
        '[training]\nmodel_name = "sensor-mlp"\nengine = "inprocess"\n'
        f"num_clients = {devices}\nmin_fit_clients = {devices}\nnum_rounds = {rounds}\n"
        "local_epochs = 1\n[training.secagg]\nenabled = true\n"
    )


def _mean_fit_s(rounds: list[dict[str, Any]]) -> float:
    trained = [r for r in rounds if r["round"] > 0]  # round 0 evaluates the initial model
    return round(sum(float(r["fit_time_s"]) for r in trained) / len(trained), 3)


def run_inprocess(root: Path) -> dict[str, Any]:
    import tomllib

    from cloud_hub.fl.config import FederatedRunConfig
    from cloud_hub.fl.run import run_federated
    from shared.fl.data_source import ArrayDataSource

    config = FederatedRunConfig.from_mapping(
        tomllib.loads((root / "train.toml").read_text())["training"]
    )
    sources = []
    for i in range(config.num_clients):
        with np.load(root / f"device-{i}.npz") as d:
            sources.append(ArrayDataSource(d["x"], d["y"]))
    with np.load(root / "validation.npz") as d:
        validation = (d["x"], d["y"])
    started, cpu_started = time.perf_counter(), time.process_time()
    result = run_federated(config, sources, validation)
    wall, cpu = time.perf_counter() - started, time.process_time() - cpu_started
    rounds = [r.to_dict() for r in result.rounds]
    if any(r["status"] != "ok" for r in rounds):
        raise SystemExit(f"in-process run had a failed round: {rounds}")
    return {
        "round_s": _mean_fit_s(rounds),
        "run_s": round(wall, 2),
        "cpu_s": round(cpu, 2),
        "rounds": len(rounds) - 1,
    }


def run_inprocess_fresh(root: Path) -> dict[str, Any]:
    """:func:`run_inprocess` in a new Python process (a first run there: imports and torch's
    first-use set-up included, as the target was set)."""
    import subprocess

    done = subprocess.run(
        [sys.executable, __file__, "--inprocess-only", str(root)],
        check=True,
        capture_output=True,
        text=True,
    )
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


#: Which part of the Deployment Engine a process is, by a word of its command line.
_ROLES = (
    ("warm_superexec superlink", "superlink"),
    ("inprocess_serverapp", "superlink"),  # the SuperLink with the ServerApp in a thread
    ("warm_serverapp", "serverapp"),  # the SuperLink's SuperExec and the ServerApps it forked
    ("warm_clientapp", "clientapp"),  # a SuperNode's SuperExec and the ClientApps it forked
    ("pinned_supernode", "supernode"),
)


def _cpu_seconds_by_role(root: Path) -> dict[str, float]:
    """CPU seconds used so far by every process below this one (and the tasks they reaped)
    that belongs to the federation in ``root`` (its command line names a file there), by
    role (:data:`_ROLES`)."""
    import psutil

    totals: dict[str, float] = {}
    for process in psutil.Process().children(recursive=True):
        try:
            t = process.cpu_times()
            command = " ".join(process.cmdline())
        except psutil.Error:  # gone meanwhile
            continue
        if f"{root}/" not in command:
            continue  # another federation's, or this benchmark's own in-process run
        role = next((name for word, name in _ROLES if word in command), "other")
        totals[role] = totals.get(role, 0.0) + t.user + t.system
        totals[role] += t.children_user + t.children_system
    return totals


def _cpu_since(root: Path, before: dict[str, float]) -> dict[str, float]:
    now = _cpu_seconds_by_role(root)
    return {role: round(now[role] - before.get(role, 0.0), 2) for role in sorted(now)}


#: A SuperNode's ClientApp is warm: in its own process, or its forked tasks' SuperExec is up.
_READY_LINES = ("ClientApp ready in the SuperNode's process", "Starting Flower SuperExec")
_IDLE_S = 3.0  # seconds of idle federation measured before the run


def _wait_until_warm(logs: list[Path], timeout_s: float = 600.0) -> None:
    """Wait until every SuperNode registered and its warm ClientApp executor is up (a
    device's SuperNode runs long before a training order; start-up is not a round's cost)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        texts = [p.read_text(errors="replace") if p.exists() else "" for p in logs]
        if all("SuperNode ID" in t and any(w in t for w in _READY_LINES) for t in texts):
            return
        time.sleep(0.5)
    raise SystemExit(f"SuperNodes not ready after {timeout_s:.0f} s")


def _one_deployment_run(root: Path, link: Any, fab_sha256: str, index: int) -> dict[str, Any]:
    """One SecAgg+ run submitted to the running federation: its figures."""
    from cloud_hub.fl.superlink import wait_for_summary

    results = root / f"results-{index}"
    cpu_started = _cpu_seconds_by_role(root)
    started = time.perf_counter()
    link.submit_run(
        {
            "config-path": str(root / "train.toml"),
            "validation-path": str(root / "validation.npz"),
            "results-dir": str(results),
            "run-name": "bench",
            "model-name": "sensor-mlp",
        },
        expected_fab_sha256=fab_sha256,
    )
    submitted = time.perf_counter()
    summary = wait_for_summary(results, timeout_s=900, link=link, poll_s=0.05)
    done = time.perf_counter()
    cpu = _cpu_since(root, cpu_started)
    rounds = summary["rounds"]
    if any(r["status"] != "ok" for r in rounds):
        raise SystemExit(f"deployment run had a failed round: {rounds}")
    return {
        "round_s": _mean_fit_s(rounds),
        "run_s": round(done - started, 2),
        "submit_s": round(submitted - started, 2),
        "cpu_s": round(sum(cpu.values()), 2),
        "cpu_s_by_role": cpu,
        "rounds": len(rounds) - 1,
        "round_fit_s": [round(r["fit_time_s"], 2) for r in rounds if r["round"] > 0],
    }


def run_pairs(roots: dict[str, Path], devices: int, pairs: int) -> dict[str, list[dict[str, Any]]]:
    """One running federation per ServerApp mode (``roots``: mode -> its folder; the
    SuperLink runs the ServerApp as ``SuperLinkProcess(serverapp=mode)`` says), all started
    once (a device's SuperNode runs long before a training order); then ``pairs`` times, for
    each mode in turn: an in-process run in a fresh process, then the same run over that
    mode's federation (the modes alternate, so both see the same machine load)."""
    import contextlib
    import dataclasses

    from cloud_hub.fl.superlink import SuperLinkProcess
    from simulations.harness.federation import local_federation

    measured: dict[str, list[dict[str, Any]]] = {mode: [] for mode in roots}
    with contextlib.ExitStack() as running:
        links, fabs = {}, {}
        for mode, root in roots.items():
            federation = local_federation(root, devices=devices, run_id="bench")
            link = SuperLinkProcess(
                federation.link.config, workdir=federation.link.workdir, serverapp=mode
            )
            federation = dataclasses.replace(federation, link=link)
            links[mode] = running.enter_context(federation.running())
            fabs[mode] = federation.fab_sha256
        _wait_until_warm([r / f"node-{i}.log" for r in roots.values() for i in range(devices)])
        idle_from = {mode: _cpu_seconds_by_role(root) for mode, root in roots.items()}
        time.sleep(_IDLE_S)  # what the waiting processes cost while nothing runs
        idle = {mode: _cpu_since(root, idle_from[mode]) for mode, root in roots.items()}
        for index in range(pairs):
            for mode, root in roots.items():
                inprocess = run_inprocess_fresh(root)
                print(f"pair {index}: in-process {inprocess}", flush=True)
                deployment = _one_deployment_run(root, links[mode], fabs[mode], index)
                deployment["idle_cpu_s_per_s_by_role"] = {
                    role: round(v / _IDLE_S, 3) for role, v in idle[mode].items()
                }
                deployment["serverapp"] = mode
                print(f"pair {index}: deployment ({mode}) {deployment}", flush=True)
                measured[mode].append({"inprocess": inprocess, "deployment": deployment})
    return measured


def _median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each number over ``runs`` (one run's figures)."""
    import statistics

    return {
        key: round(statistics.median(float(run[key]) for run in runs), 3)
        for key in ("round_s", "run_s", "cpu_s")
    }


def _mode_figures(measured: list[dict[str, Any]]) -> dict[str, Any]:
    """One ServerApp mode's pairs: the deployment medians, the ratio to the in-process runs
    of the same pairs, and CPU seconds per run by process role (median)."""
    import statistics

    inprocess = _median_of([m["inprocess"] for m in measured])
    deployment = _median_of([m["deployment"] for m in measured])
    roles = sorted({r for m in measured for r in m["deployment"]["cpu_s_by_role"]})
    return {
        "deployment_round_s": deployment["round_s"],
        "deployment_vs_inprocess": round(deployment["round_s"] / inprocess["round_s"], 3),
        "pair_ratios": [
            round(m["deployment"]["round_s"] / m["inprocess"]["round_s"], 3) for m in measured
        ],
        "deployment_run_s": deployment["run_s"],
        "deployment_cpu_s": deployment["cpu_s"],
        "cpu_s_by_role": {
            role: round(
                statistics.median(
                    m["deployment"]["cpu_s_by_role"].get(role, 0.0) for m in measured
                ),
                2,
            )
            for role in roles
        },
    }


def run_lab(root: Path) -> dict[str, Any]:
    """The lab scenario's figures, or nulls and the reason it could not run."""
    from simulations.lab import netns
    from simulations.lab.retrain_scenario import RetrainScenarioConfig, run_retrain_scenario

    reason = netns.namespaces_unavailable()
    if reason is not None:
        return {**dict.fromkeys(LAB_KEYS), "lab_note": f"not measured: {reason}"}
    result = run_retrain_scenario(RetrainScenarioConfig(root=root, prefix="flb"))
    violations = result.violations(last_version=2)
    return {
        **result.figures(),
        "lab_note": "; ".join(violations) if violations else "every invariant held",
        "lab_accuracy": {k: round(v, 3) for k, v in result.accuracy.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 SuperNodes, 1 round (< 60 s)")
    parser.add_argument("--keep", type=Path, help="work here and keep the logs (empty folder)")
    parser.add_argument("--no-lab", action="store_true", help="skip the lab scenario")
    parser.add_argument("--pairs", type=int, help="alternated pairs (default 3; --quick 1)")
    parser.add_argument(
        "--serverapp",
        choices=(*SERVERAPP_MODES, "both"),
        help="where the SuperLink runs the ServerApp (SuperLinkProcess's serverapp); both "
        "(the default; --quick: the default mode only): the modes alternate in each pair, "
        "the headline figures are the default mode's",
    )
    parser.add_argument("--inprocess-only", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inprocess_only is not None:  # one fresh-process in-process run for run_pairs
        print(json.dumps(run_inprocess(args.inprocess_only)))
        return
    devices, rounds = (3, 1) if args.quick else (6, 3)
    pairs = args.pairs or (1 if args.quick else 3)
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fedfleet-bench-deploy-") as tmp:
        root = Path(tmp) if args.keep is None else args.keep
        root.mkdir(parents=True, exist_ok=True)
        _write_inputs(root, devices, rounds)
        wanted = args.serverapp or (DEFAULT_SERVERAPP if args.quick else "both")
        modes = SERVERAPP_MODES if wanted == "both" else (wanted,)
        roots = {mode: root / f"serverapp-{mode}" for mode in modes}
        for mode_root in roots.values():  # each mode its own federation, logs and results
            mode_root.mkdir(exist_ok=True)
            _write_inputs(mode_root, devices, rounds)  # the same inputs
        by_mode = run_pairs(roots, devices, pairs)
        run_inprocess(root)  # this process's first run pays the imports and torch's set-up
        warm = run_inprocess(root)
        print(f"in-process (warm): {warm}", flush=True)
        lab: dict[str, Any] = {**dict.fromkeys(LAB_KEYS), "lab_note": "not run (--quick/--no-lab)"}
        if not (args.quick or args.no_lab):
            lab = run_lab(root / "lab-scenario")
    facts = detect_device_facts()
    headline = DEFAULT_SERVERAPP if DEFAULT_SERVERAPP in by_mode else modes[0]
    by_serverapp = {mode: _mode_figures(runs) for mode, runs in by_mode.items()}
    figures = by_serverapp[headline]
    inprocess = _median_of([m["inprocess"] for m in by_mode[headline]])
    result: dict[str, Any] = {
        "inprocess_round_s": inprocess["round_s"],
        "deployment_round_s": figures["deployment_round_s"],
        "deployment_vs_inprocess": figures["deployment_vs_inprocess"],
        "pair_ratios": figures["pair_ratios"],
        "inprocess_warm_round_s": warm["round_s"],
        "inprocess_run_s": inprocess["run_s"],
        "deployment_run_s": figures["deployment_run_s"],
        "deployment_vs_inprocess_run": round(figures["deployment_run_s"] / inprocess["run_s"], 3),
        "inprocess_cpu_s": inprocess["cpu_s"],
        "deployment_cpu_s": figures["deployment_cpu_s"],
        "serverapp": headline,
        "by_serverapp": by_serverapp,
        **lab,
        "devices": devices,
        "rounds": rounds,
        "pairs": pairs,
        "secagg": True,
        "measured": by_mode,
        "cpu": {"model": facts.cpu_model, "flags": facts.isa_flags, "cores": os.cpu_count()},
        "load_avg": [round(v, 2) for v in os.getloadavg()],
        "benchmark_wall_s": round(time.perf_counter() - started, 1),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
