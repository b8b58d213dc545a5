"""Benchmark of the hub: MQTT ingest under a fleet, a hub SIGKILL, and rollback time.

One run, one real ``cloud-hub serve`` process (API + ingest + rollout engine) on a PostgreSQL
registry (a fresh database; ``--sqlite`` for SQLite) and a private Mosquitto with the global
settings ``cloud-hub broker-config`` writes (queue limits included) on a plain loopback
listener instead of its mTLS listeners:

1. steady  - B simulated agents (lightweight paho clients, many per process, one select loop
             per process) each send hello + one Telemetry per second for D seconds, QoS 1.
             Measured: a probe device's telemetry lag (publish to visible in the registry),
             messages lost, the hub's CPU and peak RSS (its process and its ingest workers, see
             ``--ingest-workers``), its counters, the load average (this machine is shared:
             read the figures against it).
2. blast   - the same clients publish K telemetry messages each as fast as they can; a bare
             subscriber on the same topics measures the broker's raw delivery rate (the
             ceiling) while the registry is polled for the ingest's rate: ``ingest_vs_raw``; and
             CPU per message, the bare subscriber's over the hub's: ``ingest_cpu_vs_raw``
             (a CPU-starved machine moves it less than it moves the rates). The bare
             subscriber is the ingest's peer at its best doing the MQTT part of its work: its
             own process, the same client class as the hub's ingest
             (``cloud_hub.broker_stream.StreamClient``), MQTT 5, QoS 1, a PUBACK for every
             message (the ingest acknowledges telemetry on receipt too). It does not decode,
             validate, queue or commit: that is what the ratio charges the ingest for. The
             ingest's rate runs to the commit that made the last message visible (polled every
             50 ms), so a short blast understates it: 60,000 messages by default, 10,000 with
             ``--quick``; ``ingest_tail_s`` is that last stretch (raw's last message to the
             ingest's last commit seen).
3. fleet   - N devices (default 10,000; real MQTT 5 connections sharded over processes, see
             ``benchmarks/_hub_fleet.py``) send telemetry every 10 s and a must-keep event every
             10 s; the hub is SIGKILLed in the middle and restarted. Measured: event lag (send
             to committed) p95 outside the restart window ``ingest_lag_p95_s``, must-keep events
             acknowledged by the broker but never stored ``lost_must_keep`` (by unique id),
             messages the broker never acknowledged ``unacked``, restart and catch-up times.
4. rollback - real ``edge-agent run`` processes get v1, then v2 whose canary reports a high
             inference error rate (real Telemetry messages): time from the failed canary gate
             to every canary device confirmed back on v1 (the rollout's ``rolled_back``).

``--quick`` (< 60 s on a quiet machine): 200 blast agents (50 messages each), 300 fleet devices
sending every 2 s.
The last line is one JSON object with ``agents, ingest_vs_raw, ingest_lag_p95_s,
lost_must_keep, unacked, cpu, rollback_s``, the load average at start and end
(``loadavg_1m_start``, ``loadavg_1m_end``) and more.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import psutil  # noqa: E402
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from sqlalchemy import func  # noqa: E402
from sqlalchemy import select as sql_select  # noqa: E402

from benchmarks._hub_fleet import (  # noqa: E402
    FleetPlan,
    broker_config_text,
    drop_database,
    fresh_database,
    raise_fd_limit,
    run_fleet,
)
from cloud_hub.broker_stream import StreamClient  # noqa: E402
from cloud_hub.commands.rollout import ApiClient  # noqa: E402
from cloud_hub.keys import KeyStore  # noqa: E402
from cloud_hub.registry import admin, open_registry  # noqa: E402
from cloud_hub.registry.tables import Device, TelemetryMinute  # noqa: E402
from shared.device_facts import detect_device_facts  # noqa: E402
from shared.messages import Hello, Status, Telemetry, new_id  # noqa: E402
from shared.net import free_port  # noqa: E402
from shared.topics import TopicScheme  # noqa: E402
from simulations.harness.agents import LocalAgentFleet  # noqa: E402
from simulations.harness.mosquitto import spawn_listening, stop_process  # noqa: E402

HOST, PORT = "127.0.0.1", 1883
SIM_CLASS = "bench-sim"
REAL_CLASS = "x86-cpu"
MODEL = "bench-model"


def cpu_info() -> dict[str, Any]:
    facts = detect_device_facts()
    return {"cpu": {"model": facts.cpu_model, "flags": facts.isa_flags, "cores": os.cpu_count()}}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- simulated agents (worker processes) -----------------------------------------------------


def _client(client_id: str) -> mqtt.Client:
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
    )
    c.max_inflight_messages_set(100)
    c.max_queued_messages_set(0)
    return c


def sim_worker(
    ids: list[str], prefix: str, duration: float, blast: int, ctl: Any, out: Any
) -> None:
    """Run ``ids`` as MQTT clients in one select loop: hello/status, then steady telemetry
    (1 Hz each), then a blast of ``blast`` messages each when told. Reports how many messages
    of each phase the broker acknowledged (PUBACK): those are the ones that must be stored."""
    topics = TopicScheme(prefix)
    clients = {d: _client(d) for d in ids}
    acked = {"steady": 0, "blast": 0, "other": 0}
    phase_of: dict[tuple[int, int], str] = {}

    def on_publish(client: Any, _u: object, mid: int, _rc: object, _p: object) -> None:
        acked[phase_of.pop((id(client), mid), "other")] += 1

    for c in clients.values():
        c.on_publish = on_publish
        c.connect(HOST, PORT, keepalive=120)
    seq = dict.fromkeys(ids, 0)

    def pump(timeout: float) -> None:
        socks: dict[Any, mqtt.Client] = {
            sock: c for c in clients.values() if (sock := c.socket()) is not None
        }
        want = [s for s, c in socks.items() if c.want_write()]
        readable, writable, _ = select.select(list(socks), want, [], timeout)
        for s in readable:
            socks[s].loop_read()
        for s in writable:
            socks[s].loop_write()

    def idle_until(event: Any) -> None:
        last_misc = 0.0
        while not event.is_set():
            pump(0.05)
            if time.monotonic() - last_misc > 1.0:
                last_misc = time.monotonic()
                for c in clients.values():
                    c.loop_misc()

    def settle(phase: str, expected: int, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end and acked[phase] < expected:
            pump(0.02)

    def telemetry(d: str, metric: str) -> None:
        seq[d] += 1
        msg = Telemetry(device_id=d, seq=seq[d], metrics={metric: 1.0}, ts=time.time())
        info = clients[d].publish(topics.device(d, "telemetry"), msg.encode(), qos=1)
        phase_of[(id(clients[d]), info.mid)] = metric

    settle("other", 1, 3.0)
    for d, c in clients.items():
        hello = Hello(
            device_id=d,
            device_class=SIM_CLASS,
            agent_version="bench",
            runtimes=["onnxruntime"],
            free_disk_bytes=1 << 30,
            free_mem_bytes=1 << 30,
            labels={"bench": "1"},
        )
        c.publish(topics.device(d, "hello"), hello.encode(), qos=1)
        status = Status(device_id=d, online=True)
        c.publish(topics.device(d, "status"), status.encode(), qos=1, retain=True)
    settle("other", 2 * len(ids), 30.0)
    out.put(("ready", len(ids)))
    idle_until(ctl["steady"])
    t0 = time.monotonic()
    offsets = {d: (i / max(len(ids), 1)) for i, d in enumerate(ids)}  # spread over the second
    next_due = {d: t0 + offsets[d] for d in ids}
    published = 0
    while time.monotonic() - t0 < duration:
        now = time.monotonic()
        for d in ids:
            if next_due[d] <= now:
                telemetry(d, "steady")
                published += 1
                next_due[d] += 1.0
        for c in clients.values():
            c.loop_misc()
        pump(0.01)
    settle("steady", published, 30.0)
    out.put(("steady", acked["steady"]))
    idle_until(ctl["blast"])
    published = 0
    for _round in range(blast):
        for d in ids:
            telemetry(d, "blast")
            published += 1
        pump(0.0)
    settle("blast", published, 60.0)
    out.put(("blast", acked["blast"]))
    idle_until(ctl["stop"])
    for c in clients.values():
        c.disconnect()
    settle("other", 10**9, 1.0)


def raw_worker(prefix: str, ready: Any, stop: Any, out: Any) -> None:
    """A bare subscriber on the same telemetry stream (own process, the ingest's MQTT client,
    a PUBACK per message): the broker's delivery ceiling. Reports counts and first/last
    arrival (wall clock) per phase."""
    counts = {"steady": 0, "blast": 0}
    first: dict[str, float] = {}
    last: dict[str, float] = {}
    cpu: dict[str, float] = {}  # this process's CPU seconds at the first and last blast message

    def on_message(_c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        payload = msg.payload
        kind = "blast" if b'"blast"' in payload else "steady" if b'"steady"' in payload else ""
        if kind:
            now = time.time()
            counts[kind] += 1
            first.setdefault(kind, now)
            last[kind] = now
            if kind == "blast":
                cpu.setdefault("first", time.process_time())
                cpu["last"] = time.process_time()

    client = StreamClient(  # the ingest's client class: see the module docstring
        callback_api_version=CallbackAPIVersion.VERSION2,
        client_id=f"raw-{new_id()[:10]}",
        protocol=mqtt.MQTTv5,
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_a: ready.set()
    client.connect(HOST, PORT)
    client.subscribe(TopicScheme(prefix).all_devices("telemetry"), qos=1)
    client.loop_start()
    stop.wait()
    client.loop_stop()
    client.disconnect()
    out.put({"counts": counts, "first": first, "last": last, "cpu": cpu})


# ---- the hub process ---------------------------------------------------------------------------


class Hub:
    """``cloud-hub serve`` as its own process; ``kill`` (SIGKILL) and ``start`` again."""

    def __init__(
        self,
        root: Path,
        prefix: str,
        keys: KeyStore,
        db_url: str | None = None,
        ingest_workers: int | None = None,
    ) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        with socket_port() as port:
            self.port = port
        self.db_url = db_url or f"sqlite:///{root / 'hub.db'}"
        self.config = config = root / "hub.toml"
        config.write_text(
            f'data_dir = "{root}"\ndb_url = "{self.db_url}"\nmqtt_url = "mqtt://{HOST}:{PORT}"\n'
            f'topic_prefix = "{prefix}"\napi_port = {self.port}\nkeys_dir = "{keys.directory}"\n'
            f'instance_id = "{prefix}"\n\n[ingest]\nper_device_queue = 1024\n'
            "telemetry_burst = 200.0\n"
            + ("" if ingest_workers is None else f"workers = {ingest_workers}\n"),
            encoding="utf-8",
        )
        registry = open_registry(self.db_url)
        with registry.session() as s:
            _rec, self.token = admin.create_token(s, name="bench", role="operator", now=time.time())
        registry.close()
        self.log_file = open(root / "hub.log", "ab")  # noqa: SIM115 - lives as long as the hub
        self.start()
        self.api = ApiClient(f"http://127.0.0.1:{self.port}", self.token)
        try:
            self.registry = open_registry(self.db_url, migrate=False)
        except BaseException:
            self.kill()
            raise

    def start(self, timeout: float = 300.0) -> None:
        """Start the hub process and wait for its API (the ingest starts before it); a
        loaded machine takes long to import it."""
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cloud_hub.cli", "serve", "--config", str(self.config)],
            stdout=self.log_file,
            stderr=subprocess.STDOUT,
            cwd=ROOT,
        )
        self.ps = psutil.Process(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"hub exited with {self.proc.returncode}; see {self.root}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=2):
                    break
            except OSError:
                time.sleep(0.2)
        else:
            self.kill()
            raise SystemExit(f"hub did not start; see {self.root / 'hub.log'}")

    def _summed(self, read: Callable[[psutil.Process], float]) -> float:
        """``read`` summed over the hub process and its ingest workers (those still there)."""
        total = 0.0
        for proc in [self.ps, *self.ps.children(recursive=True)]:
            try:
                total += read(proc)
            except psutil.NoSuchProcess:
                continue
        return total

    def cpu_s(self) -> float:
        """CPU seconds of the hub process and its ingest workers (user + system)."""
        return self._summed(lambda proc: sum(proc.cpu_times()[:2]))

    def rss(self) -> int:
        """Resident memory of the hub process and its ingest workers."""
        return int(self._summed(lambda proc: proc.memory_info().rss))

    def kill(self) -> None:
        """SIGKILL: no flush, no disconnect; the broker keeps the ingest's session."""
        self.proc.kill()
        self.proc.wait()

    def metric(self, name: str) -> float | None:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith(name + " ") or line.startswith(name + "{"):
                    return float(line.rsplit(" ", 1)[1])
        return None

    def counters(self) -> dict[str, float]:
        """The ingest's own counters from ``/metrics`` (received, written, dropped, ...)."""
        out: dict[str, float] = {}
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line.startswith("fedfleet_ingest_") and not line.startswith("#"):
                    name, _, value = line.rpartition(" ")
                    out[name.removeprefix("fedfleet_ingest_")] = float(value)
        return out

    def stored(self, metric: str, device_class: str = SIM_CLASS) -> int:
        with self.registry.session() as s:
            total = s.scalar(
                sql_select(func.coalesce(func.sum(TelemetryMinute.count), 0))
                .join(Device, Device.device_id == TelemetryMinute.device_id)
                .where(TelemetryMinute.metric == metric, Device.device_class == device_class)
            )
            return int(total or 0)

    def devices(self, device_class: str) -> int:
        with self.registry.session() as s:
            n = s.scalar(
                sql_select(func.count())
                .select_from(Device)
                .where(Device.device_class == device_class)
            )
            return int(n or 0)

    def stop(self) -> None:
        self.registry.close()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log_file.close()


class socket_port:
    def __enter__(self) -> int:
        import socket

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


# ---- measurements --------------------------------------------------------------------------


def probe_lag(hub: Hub, prefix: str, stop: threading.Event, lags: list[float]) -> None:
    """Publish a probe telemetry once per second (in the same stream) and time each one until
    the registry has it; after ``stop`` keep waiting (up to 180 s) for the outstanding ones,
    so a backlog shows up as lag instead of being left out."""
    topics = TopicScheme(prefix)
    device = f"{prefix}-probe"
    c = _client(device)
    c.connect(HOST, PORT)
    c.loop_start()
    sent: dict[int, float] = {}
    k = seen = 0
    next_pub = time.monotonic()
    give_up: float | None = None
    while True:
        now = time.monotonic()
        if stop.is_set():
            give_up = give_up or now + 180.0
            if seen >= k or now > give_up:
                break
        elif now >= next_pub:
            k += 1
            msg = Telemetry(device_id=device, seq=k, metrics={"probe": float(k)}, ts=time.time())
            c.publish(topics.device(device, "telemetry"), msg.encode(), qos=1)
            sent[k] = now
            next_pub += 1.0
        with hub.registry.session() as s:
            got = s.scalar(
                sql_select(func.max(TelemetryMinute.last)).where(
                    TelemetryMinute.device_id == device, TelemetryMinute.metric == "probe"
                )
            )
        now = time.monotonic()
        for j in range(seen + 1, int(got or 0) + 1):
            lags.append(now - sent[j])
        seen = max(seen, int(got or 0))
        time.sleep(0.025)
    c.loop_stop()
    c.disconnect()


def p95(values: list[float]) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * (len(ordered) - 1) + 0.5))]


def tiny_onnx() -> bytes:
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((4, 3), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["input", "W"], ["logits"])],
        "bench",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])],
        initializer=[w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return bytes(model.SerializeToString())


def build_bundles(keys: KeyStore) -> dict[int, str]:
    from cloud_hub.bundles import BundleSpec, build_signed_bundle, default_store
    from shared.bundle import artifact_info

    out = {}
    for version in (1, 2):
        model = tiny_onnx()
        built = build_signed_bundle(
            keys,
            default_store(keys),
            BundleSpec(model_name=MODEL, device_class=REAL_CLASS, version=version),
            [(artifact_info("model.onnx", model, "model", "application/onnx"), model)],
        )
        out[version] = built.bundle_id
    return out


def wait_for(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.2)
    raise SystemExit(f"timed out waiting for {what}")


def rollback_phase(
    hub: Hub, root: Path, prefix: str, keys: KeyStore, bundles: dict[int, str], n: int
) -> dict[str, Any]:
    """Real agents: v1 everywhere, then v2 whose canary reports errors → rolled back."""
    fleet = LocalAgentFleet(
        root=root / "fleet",
        trust_root=keys.trust_root().to_dict(),
        mqtt_url=f"mqtt://{HOST}:{PORT}",
        prefix=prefix,
        n=n,
        id_prefix=f"{prefix}-real",
        tables={"timeouts": {"chunk_retry_s": 0.5}, "limits": {"fsync_chunks": False}},
    )
    fleet.start()
    try:
        wait_for(lambda: hub.devices(REAL_CLASS) >= n, 60 + 3 * n, "real agents to register")

        def rollout(version: int, stages: list[dict[str, Any]], window: float, **extra: Any) -> str:
            body = {
                "config": {
                    "bundle_id": bundles[version],
                    "target": {"device_class": REAL_CLASS},
                    "stages": stages,
                    "gate_window_s": window,
                    "offline_timeout_s": 60.0,
                },
                **extra,
            }
            rid = str(hub.api.request("POST", "/api/v1/rollouts", body)["rollout_id"])
            hub.api.request("POST", f"/api/v1/rollouts/{rid}/start")
            return rid

        def state(rid: str) -> dict[str, Any]:
            status: dict[str, Any] = hub.api.request("GET", f"/api/v1/rollouts/{rid}")
            return status

        r1 = rollout(1, [{"percent": 100}], 0.5)
        wait_for(lambda: state(r1)["state"] == "done", 90, "v1 installed")
        canary_n = max(1, n // 2)
        r2 = rollout(2, [{"count": canary_n}, {"percent": 100}], 3.0, previous_bundle_id=bundles[1])
        canary = wait_for(
            lambda: (
                [
                    t["device_id"]
                    for t in hub.api.request("GET", f"/api/v1/rollouts/{r2}/targets")
                    if t["stage_index"] == 0 and t["state"] == "succeeded"
                ]
                if len(
                    [
                        t
                        for t in hub.api.request("GET", f"/api/v1/rollouts/{r2}/targets")
                        if t["stage_index"] == 0 and t["state"] == "succeeded"
                    ]
                )
                == canary_n
                else None
            ),
            90,
            "canary installed",
        )
        topics = TopicScheme(prefix)
        c = _client(f"bad-{new_id()[:8]}")
        c.connect(HOST, PORT)
        c.loop_start()
        for i, d in enumerate(canary):
            msg = Telemetry(
                device_id=d,
                seq=10_000 + i,
                model_version=2,
                metrics={"request_count": 100.0, "error_count": 40.0},
            )
            c.publish(topics.device(d, "telemetry"), msg.encode(), qos=1).wait_for_publish(5)
        c.loop_stop()
        c.disconnect()
        final = wait_for(
            lambda: (st := state(r2))["state"] == "rolled_back" and st, 120, "rollback"
        )
        gate_ts = float(final["stages"][0]["gate"]["ts"])
        return {
            "rollback_s": round(float(final["finished_at"]) - gate_ts, 3),
            "rollback_devices": len(canary),
            "rollback_reason": final["reason"],
        }
    finally:
        fleet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--agents", type=int, default=10_000, help="devices of the fleet run")
    parser.add_argument("--fleet-duration", type=float, default=210.0, help="fleet run seconds")
    parser.add_argument(
        "--kill-at", type=float, default=60.0, help="SIGKILL the hub this far into the fleet run"
    )
    parser.add_argument("--fleet-procs", type=int, default=4, help="device shard processes")
    parser.add_argument("--blast-agents", type=int, default=1000, help="agents of steady/blast")
    parser.add_argument("--duration", type=float, default=20.0, help="steady phase seconds")
    parser.add_argument("--procs", type=int, default=4, help="simulator processes")
    parser.add_argument("--blast", type=int, default=60, help="blast messages per agent")
    parser.add_argument("--real-agents", type=int, default=4, help="agents of the rollback phase")
    parser.add_argument("--quick", action="store_true", help="a few hundred devices (< 60 s)")
    parser.add_argument(
        "--sqlite", action="store_true", help="SQLite registry (default: PostgreSQL)"
    )
    parser.add_argument(
        "--max-queued-messages",
        type=int,
        default=None,
        help="broker queue per client instead of broker-config's (1000: Mosquitto's default)",
    )
    parser.add_argument(
        "--ingest-workers",
        type=int,
        default=None,
        help="the hub's [ingest] workers (telemetry over $share subscriptions; default: auto)",
    )
    parser.add_argument(
        "--fleet-only", action="store_true", help="only the fleet run (no steady/blast/rollback)"
    )
    args = parser.parse_args()
    if args.quick:  # everything small: a few hundred devices, short phases
        args.blast_agents, args.duration, args.blast, args.procs = 200, 4.0, 50, 2
        args.agents, args.fleet_duration, args.kill_at, args.fleet_procs = 300, 12.0, 3.0, 2
        args.real_agents = 2
    root = Path(tempfile.mkdtemp(prefix="bench-hub-"))
    prefix = f"bench{new_id()[:8]}"
    keys = KeyStore.init(root / "keys")
    bundles = build_bundles(keys)
    raise_fd_limit()

    global PORT
    PORT = free_port()
    (root / "broker.conf").write_text(broker_config_text(PORT, root, args.max_queued_messages))
    broker = spawn_listening(
        ["mosquitto", "-c", str(root / "broker.conf")],
        port=PORT,
        log_path=root / "broker.log",
        name="mosquitto",
        timeout=10,
    )
    db_name = None if args.sqlite else f"bench_hub_{prefix}"
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    try:
        db_url = None if db_name is None else fresh_database(db_name)
        results = run_phases(args, root, prefix, keys, bundles, db_url)
    finally:
        stop_process(broker)
        if db_name is not None:
            drop_database(db_name)
    shutil.rmtree(root, ignore_errors=True)  # kept when the run failed: logs to read
    results["wall_s"] = round(time.monotonic() - started, 1)
    results["loadavg_1m_start"] = round(load_start, 1)
    results["loadavg_1m_end"] = round(os.getloadavg()[0], 1)
    print(json.dumps(results, sort_keys=True))


def steady_and_blast(
    hub: Hub,
    args: argparse.Namespace,
    prefix: str,
    workers: list[Any],
    channels: tuple[dict[str, Any], Any],
    raw: tuple[Any, Any, Any],
    results: dict[str, Any],
) -> None:
    """Phases 1 and 2: the probe's lag under steady telemetry, then ingest vs raw delivery."""
    ctl, out = channels
    raw_proc, raw_stop, raw_out = raw
    for _ in workers:
        out.get(timeout=120)
    wait_for(lambda: hub.devices(SIM_CLASS) >= args.blast_agents, 60, "every agent registered")
    log("all simulated agents registered; steady phase")

    lags: list[float] = []
    probe_stop = threading.Event()
    prober = threading.Thread(target=probe_lag, args=(hub, prefix, probe_stop, lags), daemon=True)
    cpu0 = hub.cpu_s()
    t0 = time.monotonic()
    rss_peak = 0
    ctl["steady"].set()
    prober.start()
    sent_steady = 0
    hub_lag: list[float] = []
    done = 0
    while done < len(workers):
        rss_peak = max(rss_peak, hub.rss())
        lag = hub.metric("fedfleet_ingest_lag_p95_seconds")
        if lag is not None:
            hub_lag.append(lag)
        try:
            _kind, n = out.get(timeout=1.0)
            sent_steady += n
            done += 1
        except Exception:  # queue.Empty: keep sampling
            continue
    steady_s = time.monotonic() - t0
    probe_stop.set()
    # the ingest may run behind: wait until it stored everything or stops making progress
    stored, last_change = hub.stored("steady"), time.monotonic()
    drain_deadline = time.monotonic() + 300
    while stored < sent_steady and time.monotonic() - last_change < 15:
        if time.monotonic() > drain_deadline:
            break
        time.sleep(0.5)
        now_stored = hub.stored("steady")
        if now_stored != stored:
            stored, last_change = now_stored, time.monotonic()
    drained_s = time.monotonic() - t0 - steady_s
    busy_s = time.monotonic() - t0
    cpu1 = hub.cpu_s()
    prober.join(timeout=200)
    results.update(
        {
            "sent": sent_steady,
            "stored": stored,
            "lost": sent_steady - stored,
            "probe_lag_p95_s": round(p95(lags), 4),
            "probe_lag_p50_s": round(statistics.median(lags), 4) if lags else None,
            "hub_lag_p95_s": round(max(hub_lag), 4) if hub_lag else None,
            "steady_msgs_s": round(stored / steady_s, 1),
            "drain_after_s": round(drained_s, 1),
            "lag_samples": len(lags),
            "hub_cpu_percent": round(100.0 * (cpu1 - cpu0) / busy_s, 1),
            "hub_cpu_us_per_msg": round(1e6 * (cpu1 - cpu0) / max(stored, 1), 1),
            "loadavg_1m": round(os.getloadavg()[0], 1),
            "ingest_counters": hub.counters(),
            "hub_rss_mb": round(rss_peak / 2**20, 1),
        }
    )
    log(f"steady: {results}")

    base = hub.stored("blast")
    hub_cpu0 = hub.cpu_s()
    t_blast = time.monotonic()
    t_blast_wall = time.time()
    ctl["blast"].set()
    sent_blast = sum(out.get(timeout=120)[1] for _ in workers)
    deadline = time.monotonic() + 60
    while hub.stored("blast") - base < sent_blast and time.monotonic() < deadline:
        rss_peak = max(rss_peak, hub.rss())
        time.sleep(0.05)
    t_ingested, t_ingested_wall = time.monotonic(), time.time()
    hub_cpu1 = hub.cpu_s()
    ingested = hub.stored("blast") - base
    raw_stop.set()
    raw_report = raw_out.get(timeout=30)
    raw_n = raw_report["counts"]["blast"]
    raw_s = raw_report["last"].get("blast", t_blast_wall) - t_blast_wall
    results["raw_steady_received"] = raw_report["counts"]["steady"]
    results.update(
        {
            "blast_sent": sent_blast,
            "raw_msgs_s": round(raw_n / raw_s, 1) if raw_s > 0 else None,
            "ingest_msgs_s": round(ingested / (t_ingested - t_blast), 1),
            "blast_lost_raw": sent_blast - raw_n,
            "blast_lost_ingest": sent_blast - ingested,
            # how long after the bare subscriber had the last message the registry had it
            "ingest_tail_s": round(t_ingested_wall - raw_report["last"].get("blast", 0.0), 3),
            "hub_rss_mb": round(rss_peak / 2**20, 1),
        }
    )
    if results["raw_msgs_s"]:
        results["ingest_vs_raw"] = round(results["ingest_msgs_s"] / results["raw_msgs_s"], 3)
    # CPU per message, side by side: read less from the machine's load than the rates are
    hub_cpu_s = hub_cpu1 - hub_cpu0
    raw_cpu = raw_report["cpu"]
    if ingested and raw_n > 1 and "last" in raw_cpu:
        hub_us = 1e6 * hub_cpu_s / ingested
        raw_us = 1e6 * (raw_cpu["last"] - raw_cpu["first"]) / (raw_n - 1)
        results["blast_hub_cpu_us_per_msg"] = round(hub_us, 1)
        results["blast_raw_cpu_us_per_msg"] = round(raw_us, 1)
        results["ingest_cpu_vs_raw"] = round(raw_us / hub_us, 3) if hub_us > 0 else None
    log(f"blast: raw {results['raw_msgs_s']} msg/s, ingest {results['ingest_msgs_s']} msg/s")
    ctl["stop"].set()
    for w in workers:
        w.join(timeout=15)
    raw_proc.join(timeout=15)


def run_phases(
    args: argparse.Namespace,
    root: Path,
    prefix: str,
    keys: KeyStore,
    bundles: dict[int, str],
    db_url: str | None,
) -> dict[str, Any]:
    """Steady, blast, fleet and rollback against one hub; its processes end with it."""
    ctx = mp.get_context("fork")
    ctl = {name: ctx.Event() for name in ("steady", "blast", "stop")}
    out: Any = ctx.Queue()
    ids = [f"{prefix}-{i:05d}" for i in range(args.blast_agents)]
    shards = [ids[i :: args.procs] for i in range(args.procs)]
    workers = [
        ctx.Process(
            target=sim_worker,
            args=(shard, prefix, args.duration, args.blast, ctl, out),
            daemon=True,
        )
        for shard in shards
        if shard
    ]
    raw_ready, raw_stop, raw_out = ctx.Event(), ctx.Event(), ctx.Queue()
    raw = ctx.Process(target=raw_worker, args=(prefix, raw_ready, raw_stop, raw_out), daemon=True)
    if args.fleet_only:
        workers = []
    results: dict[str, Any] = {
        "blast_agents": args.blast_agents,
        "duration_s": args.duration,
        "broker": "private mosquitto 2.0, `cloud-hub broker-config` settings, plain listener",
        "broker_max_queued_messages": args.max_queued_messages or "broker-config's",
        "database": "sqlite" if db_url is None else "postgresql",
        "ingest_workers": "auto" if args.ingest_workers is None else args.ingest_workers,
        **cpu_info(),
    }
    hub = Hub(root / "hub", prefix, keys, db_url, args.ingest_workers)
    log(f"hub up (pid {hub.proc.pid}); {args.blast_agents} agents in {len(workers)} processes")
    try:
        if not args.fleet_only:
            raw.start()
            raw_ready.wait(30)
            for w in workers:
                w.start()
            steady_and_blast(
                hub, args, prefix, workers, (ctl, out), (raw, raw_stop, raw_out), results
            )

        plan = FleetPlan(
            agents=args.agents,
            procs=args.fleet_procs,
            duration_s=args.fleet_duration,
            kill_at_s=args.kill_at if args.kill_at > 0 else None,
            telemetry_every_s=2.0 if args.quick else 10.0,  # quick: few devices, some load
            event_every_s=2.0 if args.quick else 10.0,
        )
        log(f"fleet run: {plan}")
        fleet = run_fleet(hub, plan, endpoint=(HOST, PORT), prefix=prefix, log=log)
        fleet["fleet_ingest_counters"] = hub.counters()
        results.update(fleet)
        log(f"fleet: {fleet}")

        if not args.fleet_only:
            results.update(rollback_phase(hub, root, prefix, keys, bundles, args.real_agents))
            log(f"rollback: {results['rollback_s']} s for {results['rollback_devices']} device(s)")
    finally:
        ctl["stop"].set()
        for w in workers:
            if w.is_alive():
                w.terminate()
        raw_stop.set()
        if raw.pid is not None and raw.is_alive():
            raw.terminate()
        hub.stop()
    return results


def _exit_on_sigterm(_sig: int, _frame: object) -> None:
    raise SystemExit(143)  # run the cleanup: shards, hub, broker, database


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    main()
